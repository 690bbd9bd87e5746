"""The training progress bar counts optimizer steps of the whole run, not batches of an epoch.

Lightning's bar counts micro-batches per epoch (``8/4`` under accumulation 2, ``Epoch 0/-2`` for a
stream without length) and shows the logger's ``v_num``. This one shows ``step n / total`` with the
run's length from :mod:`.run_length`; where the data decides the length (``data.epochs``), the total
is an estimate ("~") that each batch's token and tile counts correct, so the ETA converges on the
real one. Resumed runs start the bar at the resumed step.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from .run_length import RunLength, run_length

MIN_SHARE = 0.02  # share of an epoch seen before the measured rate replaces the index estimate


class StepProgressBar(TQDMProgressBar):
    """``train ~42%|████      | 420/1000 [01:10<01:37, loss=1.2]``: optimizer steps of the run."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = True) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self.length = RunLength(None)
        self._start_step = 0
        self._tokens = self._tiles = 0.0  # this rank's, since the bar started

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if any(trainer.num_sanity_val_batches):  # no bar for a check that has no batch to run
            super().on_sanity_check_start(trainer, pl_module)

    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_progress_bar is not None:
            super().on_sanity_check_end(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.length = run_length(trainer)
        self._start_step = trainer.global_step
        self._tokens = self._tiles = 0.0
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=self.length.steps)
        self.train_progress_bar.initial = 0
        self.train_progress_bar.n = trainer.global_step
        self.train_progress_bar.unit = "step"
        self._describe(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        self._describe(trainer)  # one bar for the run: no reset per epoch

    def _describe(self, trainer: L.Trainer) -> None:
        label = "train ~" if self.length.from_data else "train"
        epochs = self.length.epochs or (
            trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 1 else 0
        )
        if epochs and epochs > 1:
            label = f"epoch {trainer.current_epoch + 1}/{epochs} " + label
        self.train_progress_bar.set_description(label)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stats = batch.get("stats", {}) if isinstance(batch, dict) else {}
        self._tokens += float(stats.get("real_tokens", 0))
        self._tiles += float(stats.get("tiles", 0))
        bar = self.train_progress_bar
        if bar is None or bar.disable or trainer.global_step == bar.n:
            return  # a micro-batch inside an accumulated step
        self._correct_total(trainer)
        if self._should_update(trainer.global_step, bar.total or 0):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def _correct_total(self, trainer: L.Trainer) -> None:
        """Replace the index estimate by the rate measured so far (steps per share of an epoch)."""
        length = self.length
        if not length.from_data or length.epoch is None:
            return
        share = length.epoch.share(self._tokens * trainer.world_size, self._tiles * trainer.world_size)
        if share < MIN_SHARE:
            return
        per_epoch = (trainer.global_step - self._start_step) / share
        total = round(per_epoch * length.epochs)
        if trainer.max_steps and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        self.train_progress_bar.total = max(total, trainer.global_step)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.n = trainer.global_step
            bar.total = trainer.global_step  # the real length, now known
            bar.refresh()
        bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version says nothing about progress
        return metrics
