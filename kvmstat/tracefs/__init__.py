"""The tracefs event catalog: kvm events, their format files and the reason
tables parsed from their print formats."""
