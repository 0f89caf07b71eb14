"""Benchmarks: `python -m bench.throughput --help`. Not part of the installed package."""
