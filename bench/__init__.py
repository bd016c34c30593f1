"""Benchmarks: speed, memory and quality tables (never run as tests)."""
