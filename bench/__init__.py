"""Benchmarks: each measures a recstack path next to the bare limit it stands on (`make bench`)."""
