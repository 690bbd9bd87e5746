"""The one-process CPU Trainer the fit scripts of tests/scripts/ share (fp32, no logger or bars)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch


class LossFile(L.Callback):
    """Appends each step's loss to `path` as {"step", "loss", "pid"}, flushed and fsynced (a kill
    right after a step still finds its line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = {"step": trainer.global_step, "loss": float(outputs["loss"]), "pid": os.getpid()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())


def seeded_cpu_run() -> None:
    """One thread and seed 0 (workers too): what every script sets before building its module."""
    torch.set_num_threads(1)
    L.seed_everything(0, workers=True)


def cpu_trainer(out: Path, steps: int, callbacks: list[L.Callback], **overrides: Any) -> L.Trainer:
    """A CPU Trainer on one device, fp32, `steps` optimizer steps, writing under `out`."""
    settings: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=callbacks,
    )
    return L.Trainer(**(settings | overrides))
