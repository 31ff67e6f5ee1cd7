"""What users run: the command line, the live display, log mode, the Prometheus
exporter, the host check, and the output formats."""
