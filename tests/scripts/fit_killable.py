"""A one-process CPU fit of tiny InternVL components that a test kills with SIGKILL and resumes.

Checkpoints every step (atomic, `last.ckpt` a link), RNG states included; drop path is on so the
RNG matters, and image samples get random JPEG re-encoding so the data RNG matters too. Each
step's loss is appended to OUT/losses.jsonl (flushed and fsynced) as {"step", "loss", "pid"}.

usage: fit_killable.py VISION LLM SHARDS OUT STEPS [CKPT_PATH]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers.cpu_fit import LossFile, cpu_trainer, seeded_cpu_run
from tiny_data import tiny_datamodule

from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState
from internvl_lightning.training.module import InternVLChat

__all__ = ["LossFile"]  # fit_stalling.py and fit_stuck_rank.py take it from here


def main() -> None:
    vision, llm, shards, out, steps = sys.argv[1:6]
    ckpt_path = sys.argv[6] if len(sys.argv) > 6 else None
    out = Path(out)
    seeded_cpu_run()
    dm = tiny_datamodule(shards, llm)
    module = InternVLChat(vision=vision, llm=llm, lr=1e-3, warmup=2, drop_path_rate=0.1)
    ckpt = AtomicModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=1, save_top_k=-1, save_last="link")
    callbacks = [LossFile(out / "losses.jsonl"), RngState(), ckpt]
    trainer = cpu_trainer(out, int(steps), callbacks, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)


if __name__ == "__main__":
    main()
