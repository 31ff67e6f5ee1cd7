"""Samples over providers: field naming and -f, opening providers, choosing the
tracepoint engine, the Sampler and its Sample, detached teardown."""
