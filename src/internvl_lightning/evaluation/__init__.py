"""Benchmark evaluation: MMBench, MMMU, MathVista and generic VQA files, scored against published baselines.

``evaluate(checkpoint_or_model, benchmark, data, ...) -> EvalResult`` from Python;
``python -m internvl_lightning evaluate ...`` from the shell (``add_evaluate_args`` / ``run_evaluate``).
"""

from .generate import EvalSettings, Request, generate_batch, read_settings
from .result import EvalResult
from .runner import BENCHMARKS, add_evaluate_args, evaluate, get_benchmark, load_samples, run_evaluate

__all__ = [
    "BENCHMARKS",
    "EvalResult",
    "EvalSettings",
    "Request",
    "add_evaluate_args",
    "evaluate",
    "generate_batch",
    "get_benchmark",
    "load_samples",
    "read_settings",
    "run_evaluate",
]
