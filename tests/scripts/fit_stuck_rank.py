"""One rank of a 2-process CPU DDP fit (gloo) whose rank 1 loader blocks for good: a test sends SIGTERM.

Like fit_stalling.py (tiny components, per-step losses in OUT/losses-rank<r>.jsonl), with a
checkpoint every 2 steps. With STALL_AT >= 0, rank 1's stream sleeps for an hour before yielding
its pack number STALL_AT (0-based), after writing OUT/stalled; rank 0 then waits for it in the
step's gradient all-reduce. The SIGTERM grace comes from the environment
(INTERNVL_SIGTERM_GRACE).

usage: fit_stuck_rank.py VISION LLM SHARDS OUT STEPS STALL_AT [CKPT_PATH]   (2 ranks, env vars)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
from fit_killable import LossFile
from fit_stalling import stall_stream_at
from lightning.pytorch.strategies import DDPStrategy
from tiny_data import tiny_datamodule

from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState
from internvl_lightning.training.module import InternVLChat


def main() -> None:
    vision, llm, shards, out, steps, stall_at = sys.argv[1:7]
    ckpt_path = sys.argv[7] if len(sys.argv) > 7 else None
    torch.set_num_threads(1)
    out = Path(out)
    rank = int(os.environ["RANK"])
    if int(stall_at) >= 0 and rank == 1:
        stall_stream_at(int(stall_at), out / "stalled")
    L.seed_everything(0, workers=True)
    module = InternVLChat(vision=vision, llm=llm, lr=1e-3, warmup=2)
    ckpt = AtomicModelCheckpoint(every_n_train_steps=2, save_top_k=-1, save_last="link")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(process_group_backend="gloo"),
        precision="32-true",
        max_steps=int(steps),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out),
        callbacks=[LossFile(out / f"losses-rank{rank}.jsonl"), RngState(), ckpt],
    )
    trainer.fit(module, datamodule=tiny_datamodule(shards, llm), ckpt_path=ckpt_path)


if __name__ == "__main__":
    main()
