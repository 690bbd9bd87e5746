"""``DataReport``: what the data stream skipped, as metrics and as one line per epoch and per fit.

The data side counts every skip (``InternVLDataModule.data_stats()``: per DataLoader worker,
samples read, samples skipped by reason, shards skipped while streaming; ``skipped_shards()``:
shards left out at start-up). This callback logs them as ``data/skipped_samples``,
``data/skipped/<reason>`` and ``data/skipped_shards`` (this rank's workers, every
``log_every_n_steps``) and, at the end of every training epoch and of fit, prints one summary
line over all ranks, and one line of samples read per dataset against each dataset's target share
of the mixture. The counters live in the data state, so after a resume they cover the whole
run, not only this process.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning.pytorch as pl
import torch.distributed as dist

from .. import logs as console


def _rank_totals(datamodule: Any) -> dict[str, Any] | None:
    """This rank's counters, summed over its workers (None: the DataModule exposes none)."""
    stats = getattr(datamodule, "data_stats", None)
    if stats is None:
        return None
    skipped: Counter = Counter()
    per_dataset: Counter = Counter()
    shards = 0
    for st in stats().values():
        skipped.update(st.get("skipped", {}))
        shards += int(st.get("shard_errors", 0))
        per_dataset.update(st.get("read", {}))
    at_start = getattr(datamodule, "skipped_shards", dict)()
    return {
        "read": sum(per_dataset.values()),
        "per_dataset": dict(per_dataset),
        "skipped": dict(skipped),
        "shards": shards,
        "startup": sum(map(len, at_start.values())),
    }


def _all_ranks(local: dict[str, Any]) -> dict[str, Any]:
    """Sum of every rank's counters (a collective call under torch.distributed; start-up skips are
    the same on every rank, so they are taken once)."""
    ranks = [local]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, local)
    skipped: Counter = Counter()
    per_dataset: Counter = Counter()
    for r in ranks:
        skipped.update(r["skipped"])
        per_dataset.update(r["per_dataset"])
    return {
        "read": sum(r["read"] for r in ranks),
        "per_dataset": dict(per_dataset),
        "skipped": dict(skipped),
        "shards": sum(r["shards"] for r in ranks),
        "startup": local["startup"],
    }


def summary_line(what: str, totals: dict[str, Any], before: dict[str, Any] | None = None) -> tuple[str, bool]:
    """``<what>: N samples read, K skipped (reason n, ...), S shards skipped while streaming (T left
    out at start-up)`` (with ``before``: the counts since then) and whether nothing was skipped."""
    before = before or {"read": 0, "skipped": {}, "shards": 0}
    skipped = Counter(totals["skipped"])
    skipped.subtract(before["skipped"])
    reasons = {k: n for k, n in sorted(skipped.items()) if n}
    shards = totals["shards"] - before["shards"]
    detail = f" ({', '.join(f'{k} {n}' for k, n in reasons.items())})" if reasons else ""
    line = (
        f"{what}: {totals['read'] - before['read']} samples read, {sum(reasons.values())} skipped{detail}, "
        f"{shards} shards skipped while streaming"
    )
    line += f" ({totals['startup']} left out at start-up)" if totals["startup"] else ""
    return line, not reasons and not shards and not totals["startup"]


def mixture_line(what: str, per_dataset: dict[str, int], shares: dict[str, float]) -> str:
    """``<what>: samples read per dataset (share, target share): a 120 (60.0%, 58.8%), ...``."""
    total = sum(per_dataset.values()) or 1
    names = list(shares) + [n for n in per_dataset if n not in shares]
    parts = [
        f"{n} {per_dataset.get(n, 0)} ({100 * per_dataset.get(n, 0) / total:.1f}%"
        + (f", target {100 * shares[n]:.1f}%)" if n in shares else ")")
        for n in names
    ]
    return f"{what}: samples read per dataset (share, target): " + ", ".join(parts)


class DataReport(pl.Callback):
    """Skip counters of the data stream as metrics, and a one-line summary per epoch and per fit."""

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        self.log_every_n_steps = log_every_n_steps
        self._epoch_start: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        if trainer.global_step % every:
            return
        totals = _rank_totals(trainer.datamodule)
        if totals is None:
            return
        pl_module.log(
            "data/skipped_samples", float(sum(totals["skipped"].values())), on_step=True, batch_size=1
        )
        pl_module.log(
            "data/skipped_shards", float(totals["shards"] + totals["startup"]), on_step=True, batch_size=1
        )
        for reason, n in totals["skipped"].items():
            pl_module.log(f"data/skipped/{reason}", float(n), on_step=True, batch_size=1)

    def _report(self, trainer: pl.Trainer, what: str, since_epoch: bool) -> None:
        local = _rank_totals(trainer.datamodule)
        if local is None:
            return
        totals = _all_ranks(local)
        before = self._epoch_start if since_epoch else None
        line, clean = summary_line(what, totals, before)
        (console.info if clean else console.warning)(line)
        seen = Counter(totals["per_dataset"])
        seen.subtract((before or {}).get("per_dataset", {}))
        shares = getattr(trainer.datamodule, "target_shares", dict)()
        if len(shares) > 1 or len(seen) > 1:
            console.info(mixture_line(what, {k: n for k, n in seen.items() if n}, shares))
        if since_epoch:
            self._epoch_start = totals

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, f"data, epoch {trainer.current_epoch}", since_epoch=True)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, "data, whole run", since_epoch=False)
