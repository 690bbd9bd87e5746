"""A one-process CPU fit of tiny InternVL components that a test kills with SIGKILL and resumes.

Checkpoints every step (atomic, `last.ckpt` a link), RNG states included; drop path is on so the
RNG matters, and image samples get random JPEG re-encoding so the data RNG matters too. Each
step's loss is appended to OUT/losses.jsonl (flushed and fsynced) as {"step", "loss", "pid"}.

usage: fit_killable.py VISION LLM SHARDS OUT STEPS [CKPT_PATH]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import torch
from tiny_data import tiny_datamodule

from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState
from internvl_lightning.training.module import InternVLChat


class LossFile(L.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        line = {"step": trainer.global_step, "loss": float(outputs["loss"]), "pid": os.getpid()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())


def main() -> None:
    vision, llm, shards, out, steps = sys.argv[1:6]
    ckpt_path = sys.argv[6] if len(sys.argv) > 6 else None
    torch.set_num_threads(1)
    out = Path(out)
    L.seed_everything(0, workers=True)
    dm = tiny_datamodule(shards, llm)
    module = InternVLChat(vision=vision, llm=llm, lr=1e-3, warmup=2, drop_path_rate=0.1)
    ckpt = AtomicModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last="link")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=int(steps),
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=[LossFile(out / "losses.jsonl"), RngState(), ckpt],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)


if __name__ == "__main__":
    main()
