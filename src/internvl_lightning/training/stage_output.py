"""End a stage with a consolidated HF-native directory that the next stage starts from (`init_from`)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from .strategy import consolidated
from .wiring import tokenizer_dir


class StageOutput(L.Callback):
    """At the end of `fit`, export the trained model to `dirpath` (HF-native, see `export.export_hf`).

    The directory also records `stage_complete.json`, which the pipeline uses to skip a finished
    stage on re-runs. Data settings (template, normalisation, tiling) come from the DataModule.

    Args:
        dirpath: output directory (default: `hf/` under the trainer's `default_root_dir`, so the
            output follows the run).
        dtype: convert the weights (e.g. "bfloat16"); default: as trained.
    """

    def __init__(self, dirpath: str | None = None, dtype: str | None = None) -> None:
        self.dirpath = dirpath
        self.dtype = dtype

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        from ..export.hf import export_hf

        dm = trainer.datamodule
        settings = dm.training_record() if hasattr(dm, "training_record") else {}
        h = pl_module.hparams
        tokenizer = (
            dm.tokenizer_object
            if hasattr(dm, "tokenizer_object")
            else tokenizer_dir(h.get("llm"), h.get("init_from"))
        )
        dirpath = self.dirpath or str(Path(trainer.default_root_dir) / "hf")
        with consolidated(trainer, pl_module.model) as model:  # whole on rank 0 under ZeRO-3 / FSDP2 too
            if trainer.is_global_zero:
                dtype = getattr(torch, self.dtype) if self.dtype else None
                out = export_hf(model, dirpath, tokenizer, dtype=dtype, **settings)
                done = {"global_step": trainer.global_step, "stage_complete": True}
                (Path(out) / "stage_complete.json").write_text(json.dumps(done, indent=2) + "\n")
                rank_zero_info(f"stage output written to {out}")
        trainer.strategy.barrier("stage_output")
