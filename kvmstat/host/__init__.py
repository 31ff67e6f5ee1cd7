"""Facts about the host: mounts and paths, /proc, VM processes and their names,
privileges, resource limits, pidfds.  The lowest layer: imports only kvmstat.errors."""
