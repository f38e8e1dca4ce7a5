"""Benchmarks: each prints its figures (and the peer's, measured in the same run)."""
