"""Data sources: tracepoints, debugfs, binary stats."""
