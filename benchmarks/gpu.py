"""Figure 6 (GPU): training throughput and MFU of InternVL shapes on 16,384-token packs.

Run from the repository root, without installing the package and without network:

    python3 benchmarks/gpu.py                 # on one GPU, all shapes and stages (< 8 minutes)
    python3 benchmarks/gpu.py --no-compile --checkpointing both   # the eager baseline
    python3 benchmarks/gpu.py --smoke         # on CPU: tiny shapes, 2 steps, the same code path

Shapes (random weights, built from model/presets.py dataclasses): ``1b`` = InternViT-300M +
Qwen2.5-0.5B (InternVL2.5-1B) and ``2b-qwen1.5b`` = InternViT-300M + Qwen2.5-1.5B. Data: greedy packs
of ``realistic_length_mix`` at 16,384 tokens / 48 tiles, padded to the budget (one shape for every
step, so compiled attention kernels are built once), random token ids and pixels, on the GPU
before timing (the figure times the model, not the host-to-device copy). Precision
``bf16-mixed`` (fp32 weights, bf16 autocast; the stage recipes' setting) or ``bf16-true``. Attention:
``flash_attention_2`` if importable, else ``flex_attention`` (block-diagonal packed mask), else
``sdpa`` (dense mask) for the LLM; the ViT uses sdpa (fixed 1,025-token tiles, no mask). By default
each ViT and LLM block is compiled (``model/compile.py``; ``--no-compile``) and the ViT recomputes
its activations in backward (``--checkpointing vit``; ``both`` also the LLM's). That is the fastest
setting that fits: on an 80 GB H100 the 2B shape peaked at 72.5 GiB so, and ran out of memory
with ``--checkpointing llm`` (48 tiles of ViT activations outweigh 16k tokens of LLM ones).
Stages: ``stage1`` trains the MLP projector only, ``stage2`` trains everything. One step = forward,
chunked loss (``training/loss.py``), backward, fused AdamW.

Reported per shape and stage (median over the measured steps): real tokens/s, tiles/s, MFU with
model FLOPs from ``training/flops.py`` (6N per token + attention per packed sample + ViT + MLP, for
the parts that train: stage 1 runs the ViT forward only and skips the LLM's weight gradients;
recomputation is never counted) over the peak in its table, and peak memory. Results go to
``$OUT/gpu.json`` (or benchmarks/results/gpu.json); ``--rescore FILE`` recomputes a stored file's
FLOP fields on the CPU after a change to flops.py. The first step of a fresh machine compiles
kernels for minutes (flex attention, the blocks); later runs on it reuse the on-disk cache.
Target (for the record): >= 40% MFU in stage 2 for the 2B shape.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT / "src"), str(ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

import torch  # noqa: E402
from transformers import InternVLForConditionalGeneration  # noqa: E402

from benchmarks.common import machine_info  # noqa: E402
from internvl_lightning.data.collate import PackingCollator  # noqa: E402
from internvl_lightning.data.length_mix import realistic_length_mix  # noqa: E402
from internvl_lightning.data.packing import EncodedSample, Packer  # noqa: E402
from internvl_lightning.model.config import tokens_per_tile  # noqa: E402
from internvl_lightning.model.forward import vlm_hidden_states  # noqa: E402
from internvl_lightning.model.presets import (  # noqa: E402
    LLM_PRESETS,
    VISION_PRESETS,
    VLM_PRESETS,
    VLMPreset,
    vlm_config,
)
from internvl_lightning.training.flops import FlopsModel, peak_flops, trained_parts  # noqa: E402
from internvl_lightning.training.loss import weighted_loss  # noqa: E402
from internvl_lightning.training.parallelize import TrainingSetup, parallelize  # noqa: E402

SHAPES = {
    "1b": VLM_PRESETS["1b"],
    "2b-qwen1.5b": VLMPreset(
        "2b-qwen1.5b", VISION_PRESETS["InternViT-300M-448px"], LLM_PRESETS["Qwen2.5-1.5B"]
    ),
}
SMOKE_SHAPES = {"tiny": VLM_PRESETS["tiny"]}
STAGES = ("stage1", "stage2")
TOKENS, TILES, BUFFER = 16384, 48, 20
LOSS_CHUNK = 4096
TARGET_MFU = 0.40


def best_attention(device: torch.device, wanted: str) -> str:
    if wanted != "auto":
        return wanted
    if device.type != "cuda":
        return "sdpa"  # flex_attention has no backward on CPU
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "flex_attention"


# ---- data --------------------------------------------------------------------------------------
def mix_samples(preset: VLMPreset, n: int, seed: int = 0) -> Iterator[EncodedSample]:
    """``n`` samples of the realistic mix (scaled to the preset's tokens per tile), made lazily.

    Text is random token ids around one run of image tokens; the answer (second half of the text)
    is trained. Pixels are views of one bank of random tiles (a collator copies them into each
    batch), so only the batches take memory.
    """
    cfg = vlm_config(preset)
    per_tile = tokens_per_tile(preset.vision, preset.downsample_ratio)
    scale = 256 // per_tile
    size = preset.vision.image_size
    vocab = cfg.image_token_id - 2
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(TILES, 3, size, size, generator=g)
    for i, (tokens, tiles) in enumerate(realistic_length_mix(seed, n)):
        text = max(2, (tokens - tiles * 256) // scale)
        ids = torch.randint(5, vocab, (text,), generator=g)
        image = torch.full((tiles * per_tile,), cfg.image_token_id)
        input_ids = torch.cat([ids[: text // 2], image, ids[text // 2 :]])
        labels = input_ids.clone()
        labels[: len(input_ids) - (text - text // 2)] = -100  # the answer (second half) is trained
        flags = torch.ones(tiles, dtype=torch.long)
        yield EncodedSample(f"s{i}", "mix", input_ids, labels, bank[:tiles], flags)


def make_packs(preset: VLMPreset, n_packs: int, budget: int, seed: int = 0) -> list[dict]:
    """``n_packs`` collated greedy packs of :func:`mix_samples`, padded to the budget."""
    collate = PackingCollator(
        max_packed_tokens=budget, num_images_expected=TILES, pad_to_budget=True,
        image_size=preset.vision.image_size,
    )  # fmt: skip
    packs = []
    for pack in Packer(budget, TILES, BUFFER).pack(mix_samples(preset, 100 * n_packs, seed)):
        packs.append(collate([pack]))
        if len(packs) == n_packs:
            break
    return packs


def pack_budget(preset: VLMPreset) -> int:
    """The pack's token budget: 16,384 at 256 tokens per tile, scaled for other tile sizes."""
    return TOKENS * tokens_per_tile(preset.vision, preset.downsample_ratio) // 256


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---- model -------------------------------------------------------------------------------------
def build(
    preset: VLMPreset, device: torch.device, precision: str, attn: str, checkpointing: str, compile: bool
):
    config = vlm_config(preset)
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    with torch.device(device):
        model = InternVLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation="sdpa")
    used = "sdpa"
    if attn != "sdpa":
        try:
            model.model.language_model.set_attn_implementation(attn)
            used = attn
        except Exception as e:  # not supported by this transformers / torch
            print(f"  {attn} unavailable ({type(e).__name__}: {e}); using sdpa", flush=True)
    setup = TrainingSetup(
        checkpoint_vision=checkpointing in ("both", "vit"),
        checkpoint_llm=checkpointing in ("both", "llm"),
        compile_blocks=compile,
    )
    parallelize(model, setup)  # the library's order: checkpointing, then compilation
    return model.train(), used


def set_stage(model, stage: str) -> None:
    for p in model.parameters():
        p.requires_grad_(stage == "stage2")
    for p in model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process peak)


def train_steps(model, opt, packs: list[dict], device: torch.device, precision: str) -> list[float]:
    """Seconds per step, one pack per step."""
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for b in packs:  # already on the device: this times the model, not the host-to-device copy
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            hidden = vlm_hidden_states(
                model, b["input_ids"], b["position_ids"], b["pixel_values"], b["image_flags"]
            )
            loss, _ = weighted_loss(hidden, model.lm_head, b["labels"], b["loss_weight"], None, LOSS_CHUNK)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise FloatingPointError("loss is not finite")
    return times


def mean_step_flops(flops_model: FlopsModel, parts: dict[str, bool], packs: list[dict]) -> float:
    """Model FLOPs of one step (one pack), averaged over ``packs`` (training/flops.py)."""
    flops = []
    for b in packs:
        sid = b["sample_index"]
        lengths = torch.bincount(sid[sid >= 0].flatten()).tolist()
        flops.append(flops_model.step_flops(b["stats"]["real_tokens"], lengths, b["stats"]["tiles"], **parts))
    return statistics.mean(flops)


def flops_fields(step_flops: float, step_seconds: float, peak: float | None) -> dict:
    return {
        "model_tflops_per_step": step_flops / 1e12,
        "achieved_tflops": step_flops / step_seconds / 1e12,
        "mfu": step_flops / step_seconds / peak if peak else None,
    }


def rescore(path: Path) -> None:
    """Recompute the FLOP fields of a results file from its measured step times with the current
    ``training/flops.py`` (no GPU: the packs are rebuilt on the CPU from the same seed and checked
    against the recorded token and tile means; the model is built on the meta device)."""
    payload = json.loads(path.read_text())
    settings, peak = payload["settings"], peak_flops(payload["machine"].get("gpu"))
    packs = {}  # shape -> its packs, built once for both stages
    for r in payload["results"]:
        if "error" in r:
            continue
        preset = SHAPES[r["shape"]]
        if r["shape"] not in packs:
            packs[r["shape"]] = make_packs(
                preset, settings["warmup"] + settings["steps"], pack_budget(preset)
            )
        measured = packs[r["shape"]][settings["warmup"] :]
        tokens = statistics.mean(b["stats"]["real_tokens"] for b in measured)
        tiles = statistics.mean(b["stats"]["tiles"] for b in measured)
        if (tokens, tiles) != (r["mean_real_tokens"], r["mean_tiles"]):
            raise ValueError(f"{path}: {r['shape']} packs differ from the measured ones ({tokens}, {tiles})")
        with torch.device("meta"):
            model = InternVLForConditionalGeneration._from_config(vlm_config(preset))
        set_stage(model, r["stage"])
        old = {k: r[k] for k in ("model_tflops_per_step", "achieved_tflops", "mfu")}
        new = flops_fields(
            mean_step_flops(FlopsModel.from_model(model), trained_parts(model), measured),
            r["median_step_seconds"],
            peak,
        )
        if new != old:
            r.update(new, flops_before_rescore=old)
        print(table([r]).splitlines()[-1], flush=True)
    payload["rescored"] = machine_info()["date"]
    path.write_text(json.dumps(payload, indent=1) + "\n")


def run_config(name, preset, stage, packs, device, args, attn, warmup, peak) -> dict:
    precision = args.precision
    t_build = time.perf_counter()
    model, used = build(preset, device, precision, attn, args.checkpointing, args.compile)
    set_stage(model, stage)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, fused=fused)
    flops_model, parts = FlopsModel.from_model(model), trained_parts(model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    build_s = time.perf_counter() - t_build
    try:
        warm = train_steps(model, opt, packs[:warmup], device, precision)
    except Exception as e:
        if used == "sdpa":
            raise
        print(f"  {used} failed in the first step ({type(e).__name__}: {e}); retrying with sdpa", flush=True)
        model.model.language_model.set_attn_implementation("sdpa")
        used = "sdpa"
        opt.zero_grad(set_to_none=True)
        warm = train_steps(model, opt, packs[:warmup], device, precision)
    times = train_steps(model, opt, packs[warmup:], device, precision)
    step = statistics.median(times)
    measured = packs[warmup:]
    tokens = statistics.mean(b["stats"]["real_tokens"] for b in measured)
    tiles = statistics.mean(b["stats"]["tiles"] for b in measured)
    result = {
        "shape": name,
        "stage": stage,
        "attention": used,
        "precision": precision,
        "checkpointing": args.checkpointing,
        "compiled": args.compile,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "build_seconds": build_s,
        "warmup_seconds": warm,
        "step_seconds": times,
        "median_step_seconds": step,
        "tokens_per_s": tokens / step,
        "tiles_per_s": tiles / step,
        **flops_fields(mean_step_flops(flops_model, parts, measured), step, peak),
        "peak_memory_gib": peak_memory(device),
        "mean_real_tokens": tokens,
        "mean_tiles": tiles,
    }
    del model, opt, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def table(results: list[dict]) -> str:
    head = ("shape", "stage", "attention", "tokens/s", "tiles/s", "TFLOP/s", "MFU", "peak GiB", "step s")
    lines = [head]
    for r in results:
        if "error" in r:
            lines.append((r["shape"], r["stage"], "error", r["error"][:60], "", "", "", "", ""))
            continue
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(
            (
                r["shape"], r["stage"], r["attention"], f"{r['tokens_per_s']:,.0f}", f"{r['tiles_per_s']:.1f}",
                f"{r['achieved_tflops']:.1f}", mfu, f"{r['peak_memory_gib']:.1f}", f"{r['median_step_seconds']:.3f}",
            )
        )  # fmt: skip
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 steps, runs on CPU")
    parser.add_argument("--shapes", nargs="*", default=None, help=f"subset of {sorted(SHAPES)}")
    parser.add_argument("--stages", nargs="*", default=list(STAGES))
    parser.add_argument(
        "--steps", type=int, default=None, help="measured steps per config (default 5; smoke 1)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; smoke 1)")
    parser.add_argument("--precision", choices=("bf16-mixed", "bf16-true"), default="bf16-mixed")
    parser.add_argument("--attn", default="auto", help="auto | flash_attention_2 | flex_attention | sdpa")
    parser.add_argument(
        "--checkpointing", choices=("both", "vit", "llm", "none"), default="vit",
        help="which parts recompute activations in backward (default vit: a 2B model fits 80 GB)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True,
        help="torch.compile each ViT and LLM block (model/compile.py; default on)",
    )  # fmt: skip
    parser.add_argument(
        "--rescore", nargs="+", type=Path, metavar="JSON",
        help="recompute the FLOP fields of result files with the current flops.py (CPU), then exit",
    )  # fmt: skip
    parser.add_argument("--name", default=None, help="results file name (default gpu, or gpu_smoke)")
    parser.add_argument("--deadline", type=float, default=450.0, help="seconds; later configs are skipped")
    parser.add_argument(
        "--out", default=None, help="directory for gpu.json (default $OUT or benchmarks/results)"
    )
    args = parser.parse_args(argv)
    if args.rescore:
        for path in args.rescore:
            rescore(path)
        return {}

    t_start = time.perf_counter()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    shapes = SMOKE_SHAPES if args.smoke else {k: SHAPES[k] for k in (args.shapes or SHAPES)}
    steps = args.steps or (1 if args.smoke else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    attn = best_attention(device, args.attn)
    peak = peak_flops(torch.cuda.get_device_name()) if device.type == "cuda" else None
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"peak {peak}, attention {attn}, precision {args.precision}", flush=True)  # fmt: skip

    results = []
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    name = args.name or ("gpu_smoke" if args.smoke else "gpu")
    for shape, preset in shapes.items():
        packs = [to_device(b, device) for b in make_packs(preset, warmup + steps, pack_budget(preset))]
        for stage in args.stages:
            if time.perf_counter() - t_start > args.deadline:
                results.append({"shape": shape, "stage": stage, "error": "skipped: deadline reached"})
                continue
            print(f"{shape} {stage} ...", flush=True)
            try:
                r = run_config(shape, preset, stage, packs, device, args, attn, warmup, peak)
            except Exception as e:  # keep going: one failing config must not lose the others
                r = {"shape": shape, "stage": stage, "error": f"{type(e).__name__}: {e}"}
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(r)
            print(table([r]).splitlines()[-1], flush=True)
            payload = {
                "figure": name,
                "machine": machine_info(),
                "settings": {
                    "pack_tokens": TOKENS,
                    "pack_tiles": TILES,
                    "buffer": BUFFER,
                    "loss_chunk": LOSS_CHUNK,
                    "steps": steps,
                    "warmup": warmup,
                    "precision": args.precision,
                    "attention": attn,
                    "activation_checkpointing": args.checkpointing,
                    "compile": args.compile,
                    "smoke": args.smoke,
                },  # fmt: skip
                "results": results,
                "target": f"2b-qwen1.5b stage2 MFU >= {TARGET_MFU:.0%}",
            }
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print()
    print(table(results))
    target = next((r for r in results if r["shape"] == "2b-qwen1.5b" and r["stage"] == "stage2"), None)
    if target is not None and target.get("mfu") is not None:
        verdict = "pass" if target["mfu"] >= TARGET_MFU else "short"
        print(f"\ntarget: 2b-qwen1.5b stage2 MFU {target['mfu']:.1%} (>= {TARGET_MFU:.0%}): {verdict}")
    print(f"wrote {out_dir / (name + '.json')} in {time.perf_counter() - t_start:.0f} s")
    return payload


if __name__ == "__main__":
    main()
