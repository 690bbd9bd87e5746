"""Skip optimizer steps whose loss, gradients or batch are not finite; stop when it keeps happening.

One NaN batch at 512-GPU scale should cost one step, not the run; a run that only produces NaN
should stop with a message instead of burning the allocation. The decision is global (all
ranks skip together) because it is taken on all-reduced values.

`InternVLChat` always carries a `NonFiniteMonitor` (so a plain `Trainer.fit` cannot poison its
weights); the `NonFiniteGuard` callback of the recipes only configures it. What counts as a
non-finite step: a NaN/inf loss or gradient, and a batch whose loss weights are not finite or
whose labels are not valid token ids (the module poisons that step's loss, see `module.py`).

How a step is skipped, per strategy:
  * DDP / FSDP2 / one device: the gradients are dropped (`grad = None`) before the optimizer
    step, so torch optimizers leave those parameters and their state (moments, step count,
    weight decay) untouched. Only the LR schedule and the step counter advance.
  * DeepSpeed: its ZeRO optimizers already refuse a step whose gradient norm is not finite
    (in fp32 and in bf16 with the default `check_grad_overflow`); the monitor reads
    `engine.skipped_steps` to count it. A non-finite loss gives non-finite gradients.
  * fp16 with a GradScaler: the scaler skips such steps itself; the monitor only counts.
Each skipped step prints one line; the end of fit prints how many were skipped.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DeepSpeedStrategy

from .. import logs as console

# What can be non-finite in a step, in the order of the flags the monitor keeps.
CAUSES = ("loss", "gradients", "loss_weight", "labels")
_LISTED = 20  # skipped steps named in the end-of-fit summary


class NonFiniteError(RuntimeError):
    """Raised after too many non-finite steps in a row."""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # FSDP2 gradients are DTensors


def _all_ranks_max(flags: torch.Tensor, trainer: L.Trainer) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flags = flags.to(trainer.strategy.root_device, torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags


class NonFiniteMonitor:
    """Detects, skips and counts non-finite optimizer steps of one LightningModule.

    Args:
        max_consecutive_nonfinite: stop the run after this many skipped steps in a row.
    """

    def __init__(self, max_consecutive_nonfinite: int = 10) -> None:
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.skipped = 0
        self.consecutive = 0
        self.skipped_steps: list[tuple[int, str]] = []  # (step, causes), the first _LISTED
        self._flags: torch.Tensor | None = None  # OR over the micro-batches of this step (CAUSES)
        self._stepped = False  # an optimizer step happened in this batch
        self._skip_now = False
        self._causes = torch.zeros(len(CAUSES), dtype=torch.int32)  # of the step being decided
        self._ds_before: tuple[int, int] | None = None

    @property
    def max_consecutive_nonfinite(self) -> int:
        return self._max

    @max_consecutive_nonfinite.setter
    def max_consecutive_nonfinite(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_consecutive_nonfinite must be >= 1")
        self._max = int(value)

    # -- detection (no host sync per micro-batch: flags stay on the device) ---------------------
    def note(self, cause: str, bad: torch.Tensor) -> None:
        """Record that `cause` (one of CAUSES) was non-finite in this micro-batch if `bad` is true."""
        flags = torch.zeros(len(CAUSES), dtype=torch.bool, device=bad.device)
        flags[CAUSES.index(cause)] = bad
        self._flags = flags if self._flags is None else self._flags | flags.to(self._flags.device)

    def before_backward(self, loss: torch.Tensor) -> None:
        self.note("loss", ~torch.isfinite(loss.detach()).all())

    def before_optimizer_step(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            return  # gradients live in DeepSpeed's partitions; it checks them itself
        grads = [_local(p.grad) for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            self.note("gradients", ~torch.stack([torch.isfinite(g).all() for g in grads]).all())
        # Gradients may differ per rank (FSDP2 shards, a NaN before the all-reduce): decide together.
        flags = self._take_flags(trainer)
        self._stepped, self._skip_now = True, bool(flags.any())
        if self._skip_now and getattr(trainer.precision_plugin, "scaler", None) is None:
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None
        self._causes = flags

    def _take_flags(self, trainer: L.Trainer) -> torch.Tensor:
        flags = self._flags if self._flags is not None else torch.zeros(len(CAUSES), dtype=torch.bool)
        self._flags = None
        return _all_ranks_max(flags.to(torch.int32), trainer).cpu()

    def batch_start(self, trainer: L.Trainer) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            engine = trainer.strategy.deepspeed_engine
            self._ds_before = (engine.global_steps, engine.skipped_steps)

    # -- accounting --------------------------------------------------------------------------
    def batch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            engine = trainer.strategy.deepspeed_engine
            steps, skipped = self._ds_before or (engine.global_steps, engine.skipped_steps)
            if engine.global_steps == steps:
                return  # inside a gradient-accumulation window: no optimizer step yet
            self._skip_now = engine.skipped_steps > skipped
            flags = self._take_flags(trainer)  # every rank takes part: the engine's skip is global
            self._causes = flags if flags.any() else torch.tensor([0, 1, 0, 0])
        elif not self._stepped:
            return  # inside a gradient-accumulation window
        if self._skip_now:
            self._count(trainer.global_step)
        else:
            self.consecutive = 0
        self._stepped = self._skip_now = False
        module.log("train/skipped_steps", float(self.skipped), on_step=True, batch_size=1)
        if self.consecutive >= self.max_consecutive_nonfinite:
            raise NonFiniteError(
                f"stopping at step {trainer.global_step}: the loss or the gradients were NaN/inf in "
                f"{self.consecutive} optimizer steps in a row ({self.skipped} skipped in total; "
                f"max_consecutive_nonfinite={self.max_consecutive_nonfinite}). Check the learning rate "
                "(too high? warm-up?), the data of these steps (empty or corrupt samples, all labels "
                "masked), and the precision (fp16 overflows: prefer bf16-mixed); resume from the last "
                "checkpoint once fixed."
            )

    def _count(self, step: int) -> None:
        causes = ", ".join(c for c, bad in zip(CAUSES, self._causes.tolist()) if bad)
        self.skipped += 1
        self.consecutive += 1
        if len(self.skipped_steps) < _LISTED:
            self.skipped_steps.append((step, causes))
        console.warning(
            f"step {step}: optimizer step skipped, non-finite {causes} ({self.skipped} skipped so far)"
        )

    def summary(self, total_steps: int) -> str | None:
        """One line for the end of fit, or None when no step was skipped."""
        if not self.skipped:
            return None
        listed = ", ".join(f"{s} ({c})" for s, c in self.skipped_steps)
        more = (
            f" and {self.skipped - len(self.skipped_steps)} more"
            if self.skipped > len(self.skipped_steps)
            else ""
        )
        return (
            f"non-finite steps: {self.skipped} of {total_steps} optimizer steps skipped: steps {listed}{more}"
        )

    # -- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "consecutive": self.consecutive,
            "skipped_steps": [list(s) for s in self.skipped_steps],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
        self.skipped_steps = [(int(s), str(c)) for s, c in state_dict.get("skipped_steps", [])]


class NonFiniteGuard(L.Callback):
    """Configure the non-finite guard that `InternVLChat` always runs (recipes set it here).

    Args:
        max_consecutive_nonfinite: stop the run after this many skipped steps in a row (replaces
            the module's own ``max_consecutive_nonfinite`` for this fit).
    `skipped` / `consecutive` read the module's counts; `train/skipped_steps` is logged by the module.
    """

    def __init__(self, max_consecutive_nonfinite: int = 10) -> None:
        if max_consecutive_nonfinite < 1:
            raise ValueError("max_consecutive_nonfinite must be >= 1")
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self._monitor: NonFiniteMonitor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        monitor = getattr(pl_module, "nonfinite", None)
        if not isinstance(monitor, NonFiniteMonitor):
            raise TypeError(
                f"NonFiniteGuard configures the non-finite guard of InternVLChat; {type(pl_module).__name__} has none"
            )
        monitor.max_consecutive_nonfinite = self.max_consecutive_nonfinite
        self._monitor = monitor

    @property
    def skipped(self) -> int:
        return self._monitor.skipped if self._monitor else 0

    @property
    def consecutive(self) -> int:
        return self._monitor.consecutive if self._monitor else 0
