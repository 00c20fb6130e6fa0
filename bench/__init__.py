"""Benchmarks: each script prints a table and appends one dated row to bench/RESULTS.md."""
