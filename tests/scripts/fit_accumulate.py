"""One rank of a 2-process check: accumulating micro-batches under a strategy is exact.

Two one-step fits from the same weights on the same packs: (X) 2 micro-batches of one pack,
accumulated; (Y) one batch of both packs. Their gradients must agree, so the global gradient norm
each logs (before clipping) is compared. Under DeepSpeed this catches a loss divided by the
accumulation steps twice (once by Lightning, once by the engine's backward).

With KERNEL (the module's loss_kernel, default chunked) other than chunked, (Z) the combined batch
with the chunked kernel is run too, so the two kernels can be compared under the strategy.

usage: fit_accumulate.py STRATEGY VISION LLM SHARDS OUT [KERNEL]   (launched by tests/launch.py)
"""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
from fit_strategy import make_strategy  # noqa: E402
from tiny_data import tiny_datamodule  # noqa: E402

from internvl_lightning.training.module import InternVLChat  # noqa: E402


def grad_norm(
    strategy: str, vision: str, llm: str, shards: str, root: Path, accumulate: int, kernel: str
) -> float:
    L.seed_everything(0, workers=True)
    dm = tiny_datamodule(shards, llm, batch_size=2 // accumulate)
    module = InternVLChat(vision=vision, llm=llm, lr=1e-3, drop_path_rate=0.0, loss_kernel=kernel)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=make_strategy(strategy),
        precision="32-true",
        max_steps=1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
    )
    trainer.fit(module, datamodule=dm)
    return float(trainer.callback_metrics["train/grad_norm"])


def main() -> None:
    strategy, vision, llm, shards, out = sys.argv[1:6]
    kernel = sys.argv[6] if len(sys.argv) > 6 else "chunked"
    torch.set_num_threads(1)
    out = Path(out)
    result = {
        "accumulated": grad_norm(strategy, vision, llm, shards, out / "X", 2, kernel),
        "combined": grad_norm(strategy, vision, llm, shards, out / "Y", 1, kernel),
    }
    if kernel != "chunked":
        result["combined_chunked"] = grad_norm(strategy, vision, llm, shards, out / "Z", 1, "chunked")
    (out / f"accumulate-rank{os.environ['RANK']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    from internvl_lightning.training.fit import release_process_group

    try:
        main()
    finally:
        release_process_group()  # an exit with the group up can abort (status -6)
