"""An 8B-shape slice on one GPU: the preset's real widths with fewer LLM layers, projected to all.

Two slices (``k`` and ``k // 2`` LLM layers; ``k`` from ``--slice-layers`` or from the GPU's
memory) train on the same 16,384-token packs; a line through their step times, ``fixed +
layers x per_layer``, gives the full model's step (ViT, projector, embeddings, output layer and
loss are in ``fixed``). Per-GPU throughput at 512 GPUs is that step's pack per GPU (ZeRO shards
states, not compute; communication not included), compared with ``training/plan.py::plan``'s
step for the same preset and stage.
"""

from __future__ import annotations

import dataclasses
import gc
import statistics

import torch

from benchmarks.gpu import build, pack_budget, set_stage, train_steps
from internvl_lightning.model.presets import VLMPreset, meta_model, parameter_counts
from internvl_lightning.training.plan import plan

STATE_BYTES = 16  # fp32 weight + gradient + two AdamW moments per parameter
ACTIVATION_RESERVE = 0.30  # share of GPU memory kept for activations, workspace and fragmentation
MAX_LAYERS = 16  # enough for a steady per-layer slope, short enough for the time budget


def sliced(preset: VLMPreset, layers: int) -> VLMPreset:
    llm = dataclasses.replace(preset.llm, num_layers=layers)
    return dataclasses.replace(preset, name=f"{preset.name}-{layers}l", llm=llm)


def layers_that_fit(preset: VLMPreset, memory_bytes: float) -> int:
    """LLM layers whose training states fit beside the rest of the model in ``memory_bytes``."""
    one, two = (parameter_counts(meta_model(sliced(preset, n)))["total"] for n in (1, 2))
    per_layer, fixed = two - one, 2 * one - two
    room = memory_bytes * (1 - ACTIVATION_RESERVE) - fixed * STATE_BYTES
    return max(2, min(preset.llm.num_layers, MAX_LAYERS, int(room // (per_layer * STATE_BYTES))))


def slice_step_seconds(preset: VLMPreset, layers: int, packs, device, args, attn: str, warmup: int) -> float:
    model, _ = build(sliced(preset, layers), device, args.precision, attn, "both", args.compile)
    set_stage(model, "stage2")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, fused=device.type == "cuda")
    train_steps(model, opt, packs[:warmup], device, args.precision)
    seconds = statistics.median(train_steps(model, opt, packs[warmup:], device, args.precision))
    del model, opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def slice_projection(
    preset: VLMPreset, packs, device, args, attn: str, warmup: int, peak: float | None
) -> dict:
    """Measured slices, the projected full-depth step and ``plan``'s figures for 512 GPUs."""
    if args.slice_layers:
        k = args.slice_layers
    elif device.type == "cuda":
        k = layers_that_fit(preset, torch.cuda.get_device_properties(device).total_memory)
    else:
        k = 2
    k = max(2, k - k % 2)
    times = {n: slice_step_seconds(preset, n, packs, device, args, attn, warmup) for n in (k // 2, k)}
    per_layer = (times[k] - times[k // 2]) / (k - k // 2)
    fixed = times[k] - k * per_layer
    full = fixed + preset.llm.num_layers * per_layer
    real = statistics.mean(b["stats"]["real_tokens"] for b in packs[warmup:])
    budget = pack_budget(preset)
    pl = plan(preset.name, "2", gpus=512, peak_tflops=peak / 1e12 if peak else None, pack_tokens=budget)
    plan_pack_seconds = pl.step_seconds * pl.gpus / pl.packs_per_step
    return {
        "hidden_size": preset.llm.hidden_size,
        "full_layers": preset.llm.num_layers,
        "slice_step_seconds": {str(n): t for n, t in times.items()},
        "per_layer_seconds": per_layer,
        "fixed_seconds": fixed,
        "projected_step_seconds": full,
        "pack_tokens": budget,
        "projected_pack_tokens_per_s_per_gpu": budget / full,
        "projected_real_tokens_per_s_per_gpu": real / full,
        "projected_mfu_on_plan_flops": pl.flops_per_pack / full / peak if peak else None,
        "plan": {
            "gpus": pl.gpus,
            "zero": pl.zero,
            "mfu_assumed": pl.mfu,
            "step_seconds": pl.step_seconds,
            "pack_seconds": plan_pack_seconds,
            "pack_tokens_per_s_per_gpu": pl.pack_tokens / plan_pack_seconds,
            "flops_per_pack": pl.flops_per_pack,
        },  # fmt: skip
        "measured_over_plan_speed": plan_pack_seconds / full,
    }
