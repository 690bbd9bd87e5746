"""Benchmark figures of internvl-lightning (README.md); run all with ``python -m benchmarks.run_all``."""
