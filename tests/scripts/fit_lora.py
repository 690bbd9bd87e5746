"""One rank of a 2-process LoRA fit: adapters train and stay equal across ranks, base weights
stay put, and the stage output holds the merged weights.

usage: fit_lora.py STRATEGY VISION LLM SHARDS OUT   (launched by tests/launch.py)
"""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from fit_strategy import make_strategy  # noqa: E402
from tiny_data import tiny_datamodule  # noqa: E402

from internvl_lightning.model.load import load_pretrained_vlm  # noqa: E402
from internvl_lightning.model.lora import adapter_scalings, fold_adapters  # noqa: E402
from internvl_lightning.training.freeze import FreezeSchedule  # noqa: E402
from internvl_lightning.training.module import InternVLChat  # noqa: E402
from internvl_lightning.training.stage_output import StageOutput  # noqa: E402


def main() -> None:
    strategy, vision, llm, shards, out = sys.argv[1:6]
    torch.set_num_threads(1)
    out = Path(out)
    L.seed_everything(0, workers=True)
    module = InternVLChat(
        vision=vision, llm=llm, lr=1e-2, llm_lora_rank=4, vit_lora_rank=2, drop_path_rate=0.0
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=make_strategy(strategy), precision="32-true", max_steps=3,
        gradient_clip_val=1.0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(out),
        callbacks=[FreezeSchedule(freeze_backbone=True), StageOutput(str(out / "hf"))],
    )  # fmt: skip
    base = InternVLChat(vision=vision, llm=llm, drop_path_rate=0.0)
    base.configure_model()  # the same component weights, never trained
    trainer.fit(module, datamodule=tiny_datamodule(shards, llm, batch_size=1))
    # Whole parameters on every rank: plain copies under ZeRO-1/2, gathered DTensors under FSDP2.
    full = lambda p: p.full_tensor() if hasattr(p, "full_tensor") else p  # noqa: E731  (a collective)
    live = {n: full(p).detach().clone() for n, p in module.model.named_parameters()}
    adapters = {n: v for n, v in live.items() if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")}
    before = base.model.state_dict()
    checksum = torch.stack([v.double().sum() for v in adapters.values()]).sum()
    sums = [torch.zeros((), dtype=torch.float64) for _ in range(2)]
    dist.all_gather(sums, checksum)
    result = {
        "adapters_moved": any(n.endswith("lora_B") and v.abs().max() > 0 for n, v in adapters.items()),
        "base_unchanged": all(
            torch.equal(v, before[n.replace(".base.", ".")]) for n, v in live.items() if ".base." in n
        ),
        "ranks_equal": bool(torch.equal(sums[0], sums[1])),
    }
    if trainer.is_global_zero:  # the stage output holds W + (alpha / r) B A under the plain names
        merged = fold_adapters(live, adapter_scalings(module.model))
        exported = load_pretrained_vlm(out / "hf").state_dict()
        result["export_is_merged"] = all(torch.allclose(exported[k], v, atol=1e-6) for k, v in merged.items())
    (out / f"lora-rank{os.environ['RANK']}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    from internvl_lightning.training.fit import release_process_group

    try:
        main()
    finally:
        release_process_group()  # an exit with the group up can abort (status -6)
