"""Skipped samples and shards: reason codes, when to log a repeat, and the no-batch error.

Every skip is counted (by reason, in the worker's data state); the log gets the first
:data:`LOG_FIRST` of each reason one by one and later ones at powers of two, so a bad dataset
gives a few dozen lines, not one per sample per epoch.
"""

from __future__ import annotations

from .schema import MediaError, SampleError, SampleTooLong

LOG_FIRST = 3
MAX_SKIPS_WITHOUT_BATCH = 10_000  # skipped samples in a row that stop a stream (see NoBatches)


class NoBatches(RuntimeError):
    """The stream cannot produce a batch (every shard or every sample failing): stops the run."""


def skip_reason(e: Exception | str) -> str:
    """The counter a skipped sample goes to: the error's ``reason_code``, else by its kind."""
    code = getattr(e, "reason_code", None)
    if code:
        return code
    if isinstance(e, SampleTooLong):
        return "too_long"
    if isinstance(e, MediaError):
        return "bad_media"
    if isinstance(e, SampleError):
        return "invalid_sample"
    return "encode_error"


def refetch_reason(e: Exception) -> str:
    """The counter of a sample that cannot be read back on resume: the check that failed (``checksum``,
    ``shard_changed``), else ``unreadable`` (the shard is gone or no longer a tar)."""
    return getattr(e, "reason_code", None) or "unreadable"


def packer_reason(message: str) -> str:
    """The counter of a sample the packer refused (its ``stats["rejected"]`` reason text)."""
    if message.startswith("num_tokens"):
        return "over_token_budget"
    if message.startswith("num_tiles"):
        return "over_tile_budget"
    return "empty"


def worth_logging(n: int) -> bool:
    """Log the ``n``-th skip of a reason: the first few, then at powers of two."""
    return n <= LOG_FIRST or n & (n - 1) == 0
