"""The Lightning path against the harness on the same packs: ``InternVLChat`` under a real
``lightning.Trainer`` with ``InternVLDataModule`` streaming real-JPEG shards, vs ``gpu.py``'s loop.

Data: the test photos (``tests/assets/images``) at 1024x768 (12 tiles + thumbnail), 1-2 turn
conversations, written to shards by the project's shard tool (``data/shard.py::shard_dataset``)
with a locally trained byte-level BPE tokenizer (``model/components.py::build_tokenizer``). The
model: the preset's shapes with random weights; its ``image_token_id`` is set to the tokenizer's
``<IMG_CONTEXT>`` (the small tokenizer's ids all lie inside the preset's vocabulary). Lightning
runs with the data module's own loader (2 worker processes), the module's optimizer, logging and
MFU; the harness then trains a model built by ``gpu.py::build`` on the very packs the data
module delivered, already on the GPU. Ratio = Lightning tokens/s / harness tokens/s, both over
the same measured packs (target >= 0.95).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from benchmarks.data_pipeline import _WORDS, photo_jpegs, write_kind
from benchmarks.gpu import build, set_stage, sync, to_device, train_steps
from internvl_lightning.constants import IMG_CONTEXT_TOKEN
from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.model.components import build_tokenizer
from internvl_lightning.model.config import tokens_per_tile
from internvl_lightning.model.presets import VLMPreset
from internvl_lightning.tokenizer import add_vlm_tokens
from internvl_lightning.training.module import InternVLChat

TARGET_RATIO = 0.95


class PresetChat(InternVLChat):
    """``InternVLChat`` on a preset whose ``<IMG_CONTEXT>`` id is the data's tokenizer's."""

    def __init__(self, image_token_id: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_token_id = image_token_id

    def build_vlm(self):
        model = super().build_vlm()
        model.config.image_token_id = self.image_token_id
        return model


class StepClock(L.Callback):
    """End time (after a device sync) and real tokens of every training batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.batches: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        self.ends.append(time.perf_counter())
        self.tokens.append(int(batch["stats"]["real_tokens"]))
        self.batches.append({k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in batch.items()})


def write_shards(root: Path, preset: VLMPreset, samples: int):
    """(shards dir, tokenizer) of ``samples`` real-JPEG samples at the preset's tile size."""
    tokenizer = build_tokenizer(root / "tokenizer", "qwen2", corpus=[" ".join(_WORDS)])
    add_vlm_tokens(tokenizer)
    meta = write_kind(root / "raw", "img1024x768", photo_jpegs((1024, 768)), samples, seed=0)
    encode = EncodeConfig(
        image_size=preset.vision.image_size,
        tokens_per_tile=tokens_per_tile(preset.vision, preset.downsample_ratio),
    )
    shard_dataset(meta, tokenizer, root / "shards", encode, progress=False)
    return root / "shards", tokenizer


def lightning_vs_harness(
    preset_name: str, preset: VLMPreset, args, attn: str, warmup: int, steps: int
) -> dict:
    """Tokens/s of both paths over the same measured packs (stage 2, all parameters train)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    per_tile = tokens_per_tile(preset.vision, preset.downsample_ratio)
    packing = PackingConfig(max_packed_tokens=16384 * per_tile // 256)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        shards, tokenizer = write_shards(Path(tmp), preset, samples=6 * (warmup + steps) + 8)
        shard_seconds = time.perf_counter() - t0
        data = InternVLDataModule(
            shards=str(shards), tokenizer=tokenizer, image_size=preset.vision.image_size, tokens_per_tile=per_tile,
            packing=packing, num_workers=0 if args.smoke else 2, seed=0,
        )  # fmt: skip
        module = PresetChat(
            tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN), preset=preset_name, attn_implementation=attn,
            lr=1e-5, compile_blocks=args.compile, gradient_checkpointing_vit=args.checkpointing in ("vit", "both"),
            gradient_checkpointing_llm=args.checkpointing in ("llm", "both"),
        )  # fmt: skip
        clock = StepClock()
        trainer = L.Trainer(
            accelerator=device.type, devices=1, precision=args.precision, max_steps=warmup + steps,
            logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[clock],
        )  # fmt: skip
        trainer.fit(module, datamodule=data)
    del module, trainer
    lightning_s = [b - a for a, b in zip(clock.ends[warmup - 1 :], clock.ends[warmup:])]
    measured_tokens = clock.tokens[warmup:]
    packs = [to_device(b, device) for b in clock.batches]
    model, _ = build(preset, device, args.precision, attn, args.checkpointing, args.compile)
    model.config.image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    set_stage(model, "stage2")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, fused=device.type == "cuda")
    train_steps(model, opt, packs[:warmup], device, args.precision)
    harness_s = train_steps(model, opt, packs[warmup:], device, args.precision)
    lightning_tps = sum(measured_tokens) / sum(lightning_s)
    harness_tps = sum(measured_tokens) / sum(harness_s)
    return {
        "shard_seconds": shard_seconds,
        "measured_steps": len(lightning_s),
        "mean_real_tokens": statistics.mean(measured_tokens),
        "mean_tiles": statistics.mean(b["stats"]["tiles"] for b in clock.batches[warmup:]),
        "lightning_step_seconds": lightning_s,
        "harness_step_seconds": harness_s,
        "lightning_tokens_per_s": lightning_tps,
        "harness_tokens_per_s": harness_tps,
        "ratio": lightning_tps / harness_tps,
        "target": f">= {TARGET_RATIO}",
        "passed": lightning_tps / harness_tps >= TARGET_RATIO,
    }
