"""Benchmark tasks: each a function ``run(ctx) -> TaskResult`` (see :mod:`benchmarks.tasks.base`)."""
