"""Helpers for running reference servers in tests, benchmarks and chaos campaigns."""
