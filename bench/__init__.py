"""Benchmarks whose output goes into BENCHMARKS.md."""
