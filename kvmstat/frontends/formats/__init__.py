"""Output formats: pure functions from samples to text (no I/O)."""
