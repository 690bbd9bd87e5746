"""Keep a recipe's global batch (packs per optimizer step) on any number of GPUs.

The reference recipes train on 512 GPUs with one pack each (1024 in stage 1.5: accumulation 2).
With ``model.packs_per_step: 512`` in a recipe, the same YAML runs on 8 GPUs (accumulation
64), one GPU (512) or a CPU, with the learning rate and schedule still meaning what they meant:
the accumulation is derived from the world size when the run starts (before the strategy reads it).
A world size that does not divide the global batch gets the nearest accumulation, and the log says
how far the run's batch is from the recipe's.
"""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


def accumulation(packs_per_step: int, world_size: int, batch_size: int = 1) -> int:
    """Micro-batches per optimizer step that come closest to ``packs_per_step``."""
    return max(1, round(packs_per_step / (world_size * batch_size)))


def apply_global_batch(trainer: L.Trainer, packs_per_step: int | None) -> None:
    """Set the trainer's ``accumulate_grad_batches`` so that processes x packs per batch x
    accumulation comes closest to ``packs_per_step`` (None: leave the trainer's own). Called from
    ``InternVLChat.setup``, before the strategy reads the accumulation. Refused together with an
    explicit ``accumulate_grad_batches``: one of the two would be ignored."""
    if packs_per_step is None:
        return
    if packs_per_step < 1:
        raise ValueError(f"packs_per_step must be at least 1 (or null), got {packs_per_step}")
    if trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"--trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} and "
            f"--model.packs_per_step={packs_per_step} both set the accumulation: pass one of them "
            "(--model.packs_per_step=null to use accumulate_grad_batches)"
        )
    batch_size = int(getattr(trainer.datamodule, "batch_size", 1) or 1)
    acc = accumulation(packs_per_step, trainer.world_size, batch_size)
    trainer.accumulate_grad_batches = acc
    got = trainer.world_size * batch_size * acc
    if got == packs_per_step:
        log.info(
            "global batch %d packs: %d process(es) x %d pack(s) x accumulate %d",
            got, trainer.world_size, batch_size, acc,
        )  # fmt: skip
    else:
        log.warning(
            "WARNING: global batch %d packs (%d process(es) x %d x accumulate %d), the recipe's is %d "
            "(%.3gx): its learning rate was tuned for %d",
            got, trainer.world_size, batch_size, acc, packs_per_step, got / packs_per_step, packs_per_step,
        )  # fmt: skip
