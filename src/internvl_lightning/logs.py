"""What a run prints: the library's own log lines, a run's events, and third-party messages dropped.

The command line (`cli.main`) calls :func:`setup_logging`. The library logs under the
``internvl_lightning`` logger: INFO lines plain (global rank 0 only), WARNING and above as
``WARNING: ...`` (every rank, tagged ``[rank N]`` in multi-process runs), each identical message
once per process, so a line that names its step is shown for every step. Notebook users get the
same with ``setup_logging()``.

A training run's events (schedule, data report, resume, stop) go through :func:`info` and
:func:`warning`: printed by Lightning's global rank 0 only, every time (each is its own event),
whether or not :func:`setup_logging` ran.

Dropped third-party messages, each harmless on the runs it appears in:
- DeepSpeed's "Setting accelerator to CPU" (printed on import, also by commands that never train:
  transformers imports DeepSpeed when it is installed);
- Lightning's "Tip" lines advertising litlogger / litmodels;
- Lightning's model-summary notes on ``bf16-mixed`` precision (only its size estimate is affected);
- Lightning's own use of the deprecated ``LeafSpec`` (an internal call of Lightning, not ours);
- "Total length of `list` across ranks is zero": the DataModule returns an empty validation list
  on purpose when no ``val_shards`` are given;
- transformers' "Loading weights" / "Writing model shards" bars, which would break our own progress.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LIBRARY = "internvl_lightning"
DROPPED_WARNINGS = (
    r"Precision .* is not supported by the model summary",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Total length of `list` across ranks is zero",
)


def _rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _world() -> int:
    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


class _Once(logging.Filter):
    """Each identical message once; INFO and below only on global rank 0."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING and _rank() != 0:
            return False
        key = (record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno < logging.WARNING:
            return text
        prefix = f"{record.levelname}: " if not text.startswith(record.levelname) else ""
        rank = f"[rank {_rank()}] " if _world() > 1 else ""
        return rank + prefix + text


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is emitted (redirections, captures)."""

    _internvl = True

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _DropMessages(logging.Filter):
    def __init__(self, *starts: str) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_third_party() -> None:
    """Drop the third-party messages listed in this module's docstring."""
    logging.getLogger("DeepSpeed").addFilter(_DropMessages("Setting accelerator to CPU"))
    tips = _DropMessages("💡 Tip")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(tips)
    for pattern in DROPPED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def setup_logging(level: int = logging.INFO) -> None:
    """Show the library's log lines on stderr (once per process) and drop the third-party noise."""
    logger = logging.getLogger(LIBRARY)
    if not any(getattr(h, "_internvl", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(_Format())
        handler.addFilter(_Once())
        logger.addHandler(handler)  # records still propagate: pytest's caplog, a user's own handlers
    logger.setLevel(level)
    quiet_third_party()


def _on_rank_zero() -> bool:
    """Lightning's global rank is 0 (its launcher's rank before a strategy sets it)."""
    from lightning.pytorch.utilities import rank_zero_only  # imported by training code already

    return rank_zero_only.rank == 0


def warning(message: str) -> None:
    """A run event that needs the user's attention: `WARNING: <message>` on stderr (rank 0)."""
    if _on_rank_zero():
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    """A run event worth reading at its end or when it happens, on stderr with the logs (rank 0)."""
    if _on_rank_zero():
        print(message, file=sys.stderr, flush=True)
