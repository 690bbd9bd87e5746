"""GPU check of the training path: `InternVLChat` under Lightning's Trainer on one GPU, bf16-mixed.

Not a speed figure (that is gpu.py): this runs the library as users do (the LightningModule, its
loss, logging and MFU, the Trainer's precision plugin and gradient clipping) on the tiny preset
with the attention and module options a GPU user picks, and records whether each trains with finite
losses. Run from the repository root (no install, no network):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train_check.py     # writes $OUT/gpu_train_check.json

On a machine without a GPU it runs the same variants on the CPU in fp32 (flex attention has no
CPU backward, so those variants are reported as failing there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT / "src"), str(ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import machine_info  # noqa: E402
from benchmarks.gpu import make_packs, pack_budget  # noqa: E402
from internvl_lightning.model.presets import VLM_PRESETS  # noqa: E402
from internvl_lightning.training.module import InternVLChat  # noqa: E402

VARIANTS = {  # name -> InternVLChat options
    "sdpa": dict(attn_implementation="sdpa"),
    "flex": dict(attn_implementation="flex_attention"),
    "flex + lora": dict(attn_implementation="flex_attention", llm_lora_rank=8, vit_lora_rank=4),
    "flex + compile_blocks + ckpt": dict(
        attn_implementation="flex_attention", compile_blocks=True, gradient_checkpointing_vit=True
    ),
}


class Losses(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics["train/loss"]))


def run_variant(name: str, options: dict, packs: list[dict], steps: int) -> dict:
    cuda = torch.cuda.is_available()
    module = InternVLChat(preset="tiny", lr=1e-3, warmup=2, drop_path_rate=0.1, **options)
    losses = Losses()
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
        max_steps=steps, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[losses],
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(packs, batch_size=None))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    finite = bool(losses.values) and all(math.isfinite(v) for v in losses.values)
    return {
        "variant": name,
        "options": options,
        "ok": finite and len(losses.values) == steps,
        "steps": len(losses.values),
        "losses": losses.values,
        "seconds": time.perf_counter() - t0,
        "last_metrics": metrics,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}")
    parser.add_argument("--deadline", type=float, default=100.0, help="seconds; later variants are skipped")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    tiny = VLM_PRESETS["tiny"]
    packs = make_packs(tiny, args.steps, pack_budget(tiny))  # 1,024 tokens / 48 tiles of 64 px
    results = []
    out = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results") / "gpu_train_check.json"
    for name in args.variants:
        if time.perf_counter() - t_start > args.deadline:
            results.append({"variant": name, "ok": False, "error": "skipped: deadline reached"})
            continue
        print(f"{name} ...", flush=True)
        try:
            r = run_variant(name, VARIANTS[name], packs, args.steps)
        except Exception as e:  # one failing variant must not lose the others
            r = {"variant": name, "options": VARIANTS[name], "ok": False, "error": f"{type(e).__name__}: {e}"}
        results.append(r)
        shown = (
            r.get("error") or f"losses {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} in {r['seconds']:.1f} s"
        )
        print(f"  {'ok' if r['ok'] else 'FAILED'}: {shown[:300]}", flush=True)
        payload = {"figure": "gpu_train_check", "machine": machine_info(), "results": results}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"{sum(r['ok'] for r in results)}/{len(results)} variants trained; wrote {out}")
    return payload


if __name__ == "__main__":
    main()
