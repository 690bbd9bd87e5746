"""Benchmark evaluation: MMBench, MMMU, MathVista and generic VQA files, scored against published baselines.

``evaluate(model_or_dir, benchmark, data, ...) -> EvalResult`` from Python; the ``evaluate`` command
(``training/commands.py``) also takes a Lightning ``.ckpt`` and places the model on a device.
"""

from .generate import EvalSettings, Request, generate_batch, read_settings
from .result import EvalResult
from .runner import BENCHMARKS, evaluate, get_benchmark, load_samples

__all__ = [
    "BENCHMARKS",
    "EvalResult",
    "EvalSettings",
    "Request",
    "evaluate",
    "generate_batch",
    "get_benchmark",
    "load_samples",
    "read_settings",
]
