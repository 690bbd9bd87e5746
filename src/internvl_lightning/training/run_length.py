"""How many optimizer steps a run takes: ``max_steps``, or, for a run that passes over its data
(``--data.epochs=N``), the steps the data gives (estimated from the shard index), whichever ends
first. The learning-rate schedule and the progress bar both read it from here.

The reference's stage 1 / 1.5 ``max_steps 100000`` is a cap, not the length: the recipes set
``data.epochs: 1`` so a stage ends after one pass over its mixture, and the schedule spans that pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L

from ..data.epoch_size import EpochSize, epoch_size


@dataclass(frozen=True)
class RunLength:
    """Optimizer steps of the run (None: unknown), and whether the data (an estimate) or
    ``max_steps`` (exact) decides it."""

    steps: int | None
    from_data: bool = False
    epochs: int | None = None
    epoch: EpochSize | None = None
    steps_per_epoch: int | None = None

    def describe(self) -> str:
        if self.steps is None:
            return "unknown length (an endless stream and no max_steps)"
        if not self.from_data:
            return f"{self.steps:,} steps (max_steps)"
        e = self.epoch
        return (
            f"~{self.steps:,} steps: {self.epochs} pass(es) over {e.samples:,.0f} samples, "
            f"{e.tokens:,.0f} tokens, {e.tiles:,.0f} tiles (estimated from the shard index)"
        )


def _data_epoch(datamodule) -> tuple[int | None, EpochSize | None]:
    epochs, shards = getattr(datamodule, "epochs", None), getattr(datamodule, "shards", None)
    if epochs is None or shards is None:
        return None, None
    return epochs, epoch_size(shards)


def run_length(trainer: L.Trainer) -> RunLength:
    """The run's optimizer steps as far as they can be known before it starts."""
    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    datamodule = getattr(trainer, "datamodule", None)
    epochs, size = _data_epoch(datamodule)
    if epochs is None or size is None:
        return RunLength(max_steps)
    packing = datamodule.packing
    packs = size.packs(packing.max_packed_tokens, packing.num_images_expected)
    batches = math.ceil(packs / (trainer.world_size * max(1, datamodule.batch_size)))  # per rank
    per_epoch = math.ceil(batches / max(1, int(trainer.accumulate_grad_batches or 1)))
    steps = per_epoch * epochs
    if max_steps is not None and max_steps <= steps:
        return RunLength(max_steps, epochs=epochs, epoch=size, steps_per_epoch=per_epoch)
    return RunLength(steps, from_data=True, epochs=epochs, epoch=size, steps_per_epoch=per_epoch)
