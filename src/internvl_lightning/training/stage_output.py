"""End a stage with a consolidated HF-native directory that the next stage starts from (`init_from`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


@contextlib.contextmanager
def gathered_parameters(trainer: L.Trainer, module):
    """Make every parameter whole on every rank for the duration (ZeRO-3 partitions them)."""
    strategy = trainer.strategy
    zero3 = getattr(strategy, "zero_stage_3", False)
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        yield


class StageOutput(L.Callback):
    """At the end of `fit`, export the trained model to `dirpath` (HF-native, see `export.export_hf`).

    The directory also records `stage_complete.json`, which the pipeline uses to skip a finished
    stage on re-runs. Data settings (template, normalisation, tiling) come from the DataModule.
    """

    def __init__(self, dirpath: str, dtype: str | None = None) -> None:
        self.dirpath = dirpath
        self.dtype = dtype

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        from ..export.hf import export_hf

        dm = trainer.datamodule
        enc = getattr(dm, "encode_config", None)
        settings = {}
        if enc is not None:
            settings = dict(
                template=enc.template,
                normalization=enc.normalization,
                max_dynamic_patch=enc.max_dynamic_patch,
                min_dynamic_patch=enc.min_dynamic_patch,
            )
        h = pl_module.hparams
        tokenizer = (
            dm.tokenizer_object if hasattr(dm, "tokenizer_object") else (h.get("init_from") or h.get("llm"))
        )
        with gathered_parameters(trainer, pl_module.model):
            if trainer.is_global_zero:
                dtype = getattr(torch, self.dtype) if self.dtype else None
                out = export_hf(pl_module.model, self.dirpath, tokenizer, dtype=dtype, **settings)
                done = {"global_step": trainer.global_step, "stage_complete": True}
                (Path(out) / "stage_complete.json").write_text(json.dumps(done, indent=2) + "\n")
                rank_zero_info(f"stage output written to {out}")
        trainer.strategy.barrier("stage_output")
