"""Skip optimizer steps whose loss or gradients are not finite; stop when it keeps happening.

One NaN batch at 512-GPU scale should cost one step, not the run; a run that only produces NaN
should stop with a message instead of burning the allocation. The decision is global (all
ranks skip together) because it is taken on all-reduced values.

How a step is skipped, per strategy:
  * DDP / FSDP2 / one device: the gradients are dropped (`grad = None`) before the optimizer
    step, so torch optimizers leave those parameters and their state (moments, step count,
    weight decay) untouched. Only the LR schedule and the step counter advance.
  * DeepSpeed: its ZeRO optimizers already refuse a step whose gradient norm is not finite
    (in fp32 and in bf16 with the default `check_grad_overflow`); the guard reads
    `engine.skipped_steps` to count it. A non-finite loss gives non-finite gradients.
  * fp16 with a GradScaler: the scaler skips such steps itself; the guard only counts.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy


class NonFiniteError(RuntimeError):
    """Raised after too many non-finite steps in a row."""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 gradients are DTensors


class NonFiniteGuard(L.Callback):
    """Skip (and count) optimizer steps with a non-finite loss or gradient.

    Args:
        max_consecutive_nonfinite: stop the run after this many skipped steps in a row.
    Logs `train/skipped_steps` (total so far); the count is saved in checkpoints.
    """

    def __init__(self, max_consecutive_nonfinite: int = 10) -> None:
        if max_consecutive_nonfinite < 1:
            raise ValueError("max_consecutive_nonfinite must be >= 1")
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.skipped = 0
        self.consecutive = 0
        self._loss_ok: torch.Tensor | None = None  # AND over the micro-batches of this step
        self._stepped = False  # an optimizer step happened in this batch
        self._skip_now = False
        self._ds_before: tuple[int, int] | None = None

    # -- detection ---------------------------------------------------------------------------
    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        ok = torch.isfinite(loss.detach()).all()  # stays on device: no sync per micro-batch
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            return  # gradients live in DeepSpeed's partitions; it checks them itself
        grads = [_local(p.grad) for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        ok = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else torch.tensor(True)
        if self._loss_ok is not None:
            ok = ok & self._loss_ok.to(ok.device)
        self._loss_ok = None
        # Gradients may differ per rank (FSDP2 shards, a NaN before the all-reduce): decide together.
        bad = trainer.strategy.reduce_boolean_decision(not bool(ok), all=False)
        self._stepped, self._skip_now = True, bad
        if bad and getattr(trainer.precision_plugin, "scaler", None) is None:
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            engine = trainer.strategy.deepspeed_engine
            self._ds_before = (engine.global_steps, engine.skipped_steps)

    # -- accounting --------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            engine = trainer.strategy.deepspeed_engine
            steps, skipped = self._ds_before or (engine.global_steps, engine.skipped_steps)
            self._loss_ok = None
            if engine.global_steps == steps:
                return  # inside a gradient-accumulation window: no optimizer step yet
            self._skip_now = engine.skipped_steps > skipped
        elif not self._stepped:
            return  # inside a gradient-accumulation window
        if self._skip_now:
            self.skipped += 1
            self.consecutive += 1
        else:
            self.consecutive = 0
        self._stepped = self._skip_now = False
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, batch_size=1)
        if self.consecutive >= self.max_consecutive_nonfinite:
            raise NonFiniteError(
                f"stopping at step {trainer.global_step}: the loss or the gradients were NaN/inf in "
                f"{self.consecutive} optimizer steps in a row ({self.skipped} skipped in total; "
                f"max_consecutive_nonfinite={self.max_consecutive_nonfinite}). Check the learning rate "
                "(too high? warm-up?), the data of these steps (empty or corrupt samples, all labels "
                "masked), and the precision (fp16 overflows: prefer bf16-mixed); resume from the last "
                "checkpoint once fixed."
            )

    # -- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
