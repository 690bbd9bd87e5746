"""Stop promptly on SIGTERM (`timeout`, `scancel`, SLURM preemption), also while waiting for data.

Lightning's own SIGTERM handler only sets a flag that its loops read at the end of a batch: a
loader that blocks (a stalled file system, a stream that never yields) keeps the run alive until
the scheduler's SIGKILL, with no checkpoint. `SigtermStop` chains a handler to Lightning's: when the
signal lands while the (single) process waits inside a DataLoader, it raises `Preempted` right
there. Waiting for data is a safe place to stop: the last optimizer step is complete and the data
position recorded is that of the last batch used, so a checkpoint taken then resumes exactly.
Anywhere else the current step finishes first.

Under several ranks the fetch is not interrupted (one rank leaving a collective alone would hang
the others): each rank stops at the batch end, where the ranks agree to stop and save together.
Lightning's handler is not chained there: it runs a collective inside the signal handler, which
meets whatever collective the other ranks are in at that moment (a "collective mismatch" crash
when one rank waits for data and another in the gradient all-reduce); the signal is still
forwarded to processes Lightning launched itself (`forward`).
If one rank never gets there (its loader blocked for good, the others waiting for it in a
collective), a `Watchdog` ends each rank once the grace (`sigterm_grace`, else the environment
variable `INTERNVL_SIGTERM_GRACE`, else 60 s) has passed since the signal: one ERROR line naming the
rank, where it was waiting and the checkpoint a rerun resumes from, then exit status 143. It
wakes on the signal itself (`signal.set_wakeup_fd`), so a main thread stuck inside a collective,
where no Python signal handler runs, still ends.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
GRACE_ENV = "INTERNVL_SIGTERM_GRACE"
DEFAULT_GRACE_S = 60.0

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


def sigterm_grace(value: float | None = None) -> float:
    """Seconds a rank may take to stop after SIGTERM: `value`, else `$INTERNVL_SIGTERM_GRACE`, else 60."""
    if value is None:
        text = os.environ.get(GRACE_ENV, "").strip()
        try:
            value = float(text) if text else DEFAULT_GRACE_S
        except ValueError:
            raise ValueError(f"{GRACE_ENV}={text!r}: expected a number of seconds") from None
    if not value > 0:
        raise ValueError(f"the SIGTERM grace must be a positive number of seconds, got {value!r}")
    return float(value)


def where_waiting(frame: FrameType | None) -> str:
    """Where a thread stands, for a message: the data loader, else its innermost call."""
    if frame is None:
        return "at an unknown place"
    if waiting_for_data(frame):
        return "waiting for the data loader"
    code = frame.f_code
    short = "/".join(code.co_filename.replace("\\", "/").split("/")[-2:])
    return f"waiting in {code.co_name} ({short}:{frame.f_lineno})"


class Watchdog:
    """Ends the process with status 143 when the stop after a SIGTERM takes longer than `grace` s.

    `rank`: the global rank, for the message; `resume_hint()`: the checkpoint a rerun resumes from
    (None: there is none yet). The stop reports its progress with `saving` and `saved`.
    """

    def __init__(self, grace: float, rank: int, resume_hint: Callable[[], str | None]) -> None:
        self.grace, self.rank, self.resume_hint = grace, rank, resume_hint
        self._armed = threading.Event()
        self._closed = threading.Event()
        self._finished = threading.Event()
        self._phase = "stopping"
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._previous_fd = -1

    def start(self) -> None:
        """Listen for SIGTERM from a thread (call from the main thread, once the handler is set)."""
        read, write = socket.socketpair()
        write.setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            read.close(), write.close()
            return
        if self._previous_fd != -1:  # someone else listens (an event loop): leave theirs in place
            signal.set_wakeup_fd(self._previous_fd)
            read.close(), write.close()
            return
        self._sockets = (read, write)
        threading.Thread(target=self._listen, name="sigterm-watchdog", daemon=True).start()

    def close(self) -> None:
        """The run is over without a SIGTERM (or the handler is being removed): stop listening."""
        if self._sockets is None:
            return
        read, write = self._sockets
        self._sockets = None
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._previous_fd)
        self._closed.set()
        try:
            write.send(b"\0")  # not a signal number: wakes the listener to end
        except OSError:
            pass
        write.close()

    def arm(self) -> None:
        """SIGTERM seen: the countdown starts (once)."""
        if not self._armed.is_set():
            self._armed.set()
            threading.Thread(target=self._countdown, name="sigterm-grace", daemon=True).start()

    def finish(self) -> None:
        """The run ended by itself (training done): no countdown is needed any more."""
        self._finished.set()
        self.close()

    def saving(self) -> None:
        self._phase = "saving"

    def saved(self, path: str | None) -> None:
        self._phase = f"saved {path}" if path else "saved"

    def _listen(self) -> None:
        read = self._sockets[0] if self._sockets else None
        if read is None:
            return
        try:
            while not self._closed.is_set():
                data = read.recv(64)
                if not data or 0 in data:
                    return
                if signal.SIGTERM in data:
                    self.arm()
        finally:
            read.close()

    def _countdown(self) -> None:
        if not self._finished.wait(self.grace):
            self._expire()

    def _expire(self) -> None:
        main = sys._current_frames().get(threading.main_thread().ident or -1)
        where = where_waiting(main)
        hint = self.resume_hint()
        resume = (
            f"a rerun with --ckpt_path=last resumes from {hint}" if hint else "a rerun starts from step 0"
        )
        if self._phase == "stopping":
            what = "no checkpoint was written this time"
        elif self._phase == "saving":
            what = "the checkpoint being saved is incomplete and will not be used"
        else:
            what = f"the stop completed ({self._phase}) but the process did not exit"
        message = (
            f"ERROR: [rank {self.rank}] SIGTERM: the ranks did not stop together within {self.grace:g} s "
            f"(this rank is {where}); exiting with status {EXIT_CODE}: {what}; {resume}\n"
        )
        _flush_logs()
        os.write(2, message.encode())
        os._exit(EXIT_CODE)


def _flush_logs() -> None:
    """Flush what the process has buffered for its logs (best effort: the exit follows)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not stop the exit
            pass
    for handler in logging.getLogger().handlers + logging.getLogger("internvl_lightning").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass


class SigtermStop:
    """Installs the chained SIGTERM handler for the duration of training (`install` / `restore`)."""

    def __init__(self) -> None:
        self._previous: Any = None
        self.interrupt_fetch = True
        self.requested = False  # SIGTERM seen (also when no Lightning handler was there to note it)
        self.watchdog: Watchdog | None = None
        self._forward: Callable[[int], None] | None = None

    def install(
        self,
        world_size: int,
        rank: int = 0,
        grace: float | None = None,
        resume_hint: Callable[[], str | None] = lambda: None,
        forward: Callable[[int], None] | None = None,
    ) -> None:
        """Chain the handler (one process), or under several ranks note the signal, `forward` it and
        start the `Watchdog` (`grace`: see `sigterm_grace`)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self.interrupt_fetch = world_size == 1
        self._forward = forward
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)
        if world_size > 1:
            self.watchdog = Watchdog(sigterm_grace(grace), rank, resume_hint)
            self.watchdog.start()

    def restore(self) -> None:
        """Put the previous handler back; a watchdog stops listening, but one counting down goes on
        (the stop is under way: it ends the process if the stop does not)."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
        if self.watchdog is not None:
            self.watchdog.close()

    def finish(self) -> None:
        """Training ended by itself: restore the handler and call off any countdown."""
        self.restore()
        if self.watchdog is not None:
            self.watchdog.finish()
            self.watchdog = None

    def saving(self) -> None:
        if self.watchdog is not None:
            self.watchdog.saving()

    def saved(self, path: str | None) -> None:
        if self.watchdog is not None:
            self.watchdog.saved(path)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if self.watchdog is not None:
            self.watchdog.arm()
        if not self.interrupt_fetch:  # several ranks: the batch end decides (see the module notes)
            if self._forward is not None:
                self._forward(signum)
            return
        if callable(self._previous):
            self._previous(signum, frame)  # Lightning's: sets trainer.received_sigterm
        if self.interrupt_fetch and waiting_for_data(frame):
            raise Preempted("while waiting for the data loader")
