"""A one-process CPU fit whose data stream stalls (a hung file system): a test sends SIGTERM.

Like fit_killable.py (tiny components, drop path, per-step losses in OUT/losses.jsonl), but the
only periodic checkpoint is far away (every 100 steps), so a checkpoint after a SIGTERM can only
come from the SIGTERM itself. With STALL_AT >= 0, the stream sleeps for an hour before yielding
its pack number STALL_AT (0-based), after writing OUT/stalled.

usage: fit_stalling.py VISION LLM SHARDS OUT STEPS STALL_AT [CKPT_PATH]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.helpers.cpu_fit import LossFile, cpu_trainer, seeded_cpu_run
from tiny_data import tiny_datamodule

from internvl_lightning.data.stream import PackedStream
from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState
from internvl_lightning.training.module import InternVLChat


def stall_stream_at(index: int, marker: Path) -> None:
    """Make every PackedStream sleep before its pack `index`, as a read from a hung mount would."""
    packs = PackedStream.__iter__

    def stalling(self):
        for i, pack in enumerate(packs(self)):
            if i == index:
                marker.write_text("stalled\n")
                time.sleep(3600)
            yield pack

    PackedStream.__iter__ = stalling


def main() -> None:
    vision, llm, shards, out, steps, stall_at = sys.argv[1:7]
    ckpt_path = sys.argv[7] if len(sys.argv) > 7 else None
    out = Path(out)
    if int(stall_at) >= 0:
        stall_stream_at(int(stall_at), out / "stalled")
    seeded_cpu_run()
    module = InternVLChat(vision=vision, llm=llm, lr=1e-3, warmup=2, drop_path_rate=0.1)
    ckpt = AtomicModelCheckpoint(every_n_train_steps=100, save_top_k=-1, save_last="link")
    callbacks = [LossFile(out / "losses.jsonl"), RngState(), ckpt]
    trainer = cpu_trainer(out, int(steps), callbacks, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=tiny_datamodule(shards, llm), ckpt_path=ckpt_path)


if __name__ == "__main__":
    main()
