"""One-line console messages of a run, printed once (global rank 0), with a level prefix."""

from __future__ import annotations

import sys

from lightning.pytorch.utilities import rank_zero_only


@rank_zero_only
def warning(message: str) -> None:
    """A line that needs the user's attention: `WARNING: <message>` on stderr."""
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


@rank_zero_only
def info(message: str) -> None:
    """A line worth reading at the end of a run or on a notable event (stderr, with the logs)."""
    print(message, file=sys.stderr, flush=True)
