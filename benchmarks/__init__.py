"""Benchmarks: measured answers to design questions (run as `python -m benchmarks.<name>`)."""
