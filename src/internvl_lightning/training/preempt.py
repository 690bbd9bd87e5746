"""Stop promptly on SIGTERM (`timeout`, `scancel`, SLURM preemption), also while waiting for data.

Lightning's own SIGTERM handler only sets a flag that its loops read at the end of a batch: a
loader that blocks (a stalled file system, a stream that never yields) keeps the run alive until
the scheduler's SIGKILL, with no checkpoint. `SigtermStop` chains a handler to Lightning's: when the
signal lands while the (single) process waits inside a DataLoader, it raises `Preempted` right
there. Waiting for data is a safe place to stop: the last optimizer step is complete and the data
position recorded is that of the last batch used, so a checkpoint taken then resumes exactly.
Anywhere else the current step finishes first. Under several ranks the fetch is not interrupted
(one rank leaving a collective alone would hang the others): each rank stops at the batch end.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM

# (file name ending, function) of the frames that mean "this process is waiting for a batch".
_FETCH_FRAMES = (
    ("torch/utils/data/dataloader.py", "__next__"),
    ("lightning/pytorch/loops/fetchers.py", "__next__"),
)


class Preempted(SystemExit):
    """The run was asked to stop (SIGTERM); the process exits with status 143."""

    def __init__(self, where: str) -> None:
        super().__init__(EXIT_CODE)
        self.where = where

    def __str__(self) -> str:
        return f"stopped by SIGTERM {self.where}"


def waiting_for_data(frame: FrameType | None) -> bool:
    """Whether `frame` or one of its callers is a DataLoader / Lightning fetcher producing a batch."""
    while frame is not None:
        code = frame.f_code
        name = code.co_filename.replace("\\", "/")
        if any(name.endswith(f) and code.co_name == fn for f, fn in _FETCH_FRAMES):
            return True
        frame = frame.f_back
    return False


class SigtermStop:
    """Installs the chained SIGTERM handler for the duration of training (`install` / `restore`)."""

    def __init__(self) -> None:
        self._previous: Any = None
        self.interrupt_fetch = True
        self.requested = False  # SIGTERM seen (also when no Lightning handler was there to note it)

    def install(self, world_size: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.interrupt_fetch = world_size == 1
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)

    def restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if callable(self._previous):
            self._previous(signum, frame)  # Lightning's: sets trainer.received_sigterm
        if self.interrupt_fetch and waiting_for_data(frame):
            raise Preempted("while waiting for the data loader")
