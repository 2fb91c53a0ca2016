"""Benchmarks of scConcerto against its peers (``python -m benchmarks.run``)."""
