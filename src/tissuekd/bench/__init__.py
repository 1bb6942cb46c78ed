"""Benchmarks that print ratios in one run (never timed tests)."""
