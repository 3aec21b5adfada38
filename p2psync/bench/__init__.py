"""Benchmarks and the narrated demo, written against the public API."""
