"""Counting engines: perf counter groups (the C core and its pure-Python twin)
and the BPF engine.  The only importer of the compiled module is counting.native."""
