"""A one-process CPU fit of tiny InternVL components under ZeRO (fake GPU), checkpointing every step.

Writes OUT/result.json: {"start_step", "losses": {step: loss}}. A failure exits non-zero with its
traceback in the log.

usage: fit_zero.py STAGE VISION LLM SHARDS OUT STEPS [CKPT_PATH]
"""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from fit_strategy import Record  # noqa: E402
from tests.helpers.cpu_fit import cpu_trainer, seeded_cpu_run  # noqa: E402
from tests.helpers.fake_gpu import CpuZeroStrategy  # noqa: E402
from tiny_data import tiny_datamodule  # noqa: E402

from internvl_lightning.training.checkpoint import AtomicModelCheckpoint, RngState  # noqa: E402
from internvl_lightning.training.module import InternVLChat  # noqa: E402


def main() -> None:
    stage, vision, llm, shards, out, steps = sys.argv[1:7]
    ckpt_path = sys.argv[7] if len(sys.argv) > 7 else None
    out = Path(out)
    seeded_cpu_run()
    record = Record()
    ckpt = AtomicModelCheckpoint(every_n_train_steps=1, save_top_k=-1, save_last="link")
    strategy = CpuZeroStrategy(stage=int(stage), size="100b")
    trainer = cpu_trainer(out, int(steps), [record, RngState(), ckpt], strategy=strategy)
    module = InternVLChat(vision=vision, llm=llm, lr=1e-3)
    trainer.fit(module, datamodule=tiny_datamodule(shards, llm), ckpt_path=ckpt_path)
    result = {"start_step": record.start_step, "losses": record.losses}
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    from internvl_lightning.training.fit import release_process_group

    try:
        main()
    finally:
        release_process_group()  # an exit with the group up can abort (status -6)
