"""The parts of ``gpu_suite.py`` after time to first step: each builds what it measures, returns
its figures as a dict, and leaves the GPU's memory free for the next."""

from __future__ import annotations

import gc
import json
import subprocess
from pathlib import Path

import torch

from benchmarks.common import machine_info
from benchmarks.gpu import (
    SHAPES,
    SMOKE_SHAPES,
    best_attention,
    build,
    make_packs,
    pack_budget,
    run_config,
    set_stage,
    to_device,
    train_steps,
)  # fmt: skip
from benchmarks.gpu_lightning import lightning_vs_harness
from benchmarks.gpu_loss import loss_kernels
from benchmarks.gpu_padded import packed_vs_padded
from benchmarks.gpu_profile import format_profile, profile
from benchmarks.gpu_slice import slice_projection
from internvl_lightning.model.presets import VLM_PRESETS
from internvl_lightning.training.flops import peak_flops

TARGET_MFU = {"1b": 0.40, "2b-qwen1.5b": 0.50}  # stage 2, one H100/H200


def driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Suite:
    """Settings shared by the parts, the results so far and the file they are written to."""

    def __init__(self, args, path: Path) -> None:
        self.args, self.path = args, path
        self.device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.steps = args.steps or (1 if args.smoke else 4)
        self.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
        self.attn = best_attention(self.device, args.attn)
        self.peak = peak_flops(torch.cuda.get_device_name()) if self.device.type == "cuda" else None
        self.shapes = SMOKE_SHAPES if args.smoke else SHAPES
        self.main_name = "tiny" if args.smoke else "1b"
        self.main = self.shapes[self.main_name]
        self.slice_name = "tiny" if args.smoke else "8b"
        torch.backends.cuda.matmul.allow_tf32 = True
        machine = machine_info() | {"gpu_driver": driver_version() if self.device.type == "cuda" else None}
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        settings |= {
            "device": self.device.type,
            "attention": self.attn,
            "steps": self.steps,
            "warmup": self.warmup,
        }
        self.payload = {"figure": path.stem, "machine": machine, "settings": settings, "parts": {}}

    def gpu_args(self) -> list[str]:
        """``gpu.py`` options for one stage-2 run of the main shape with this suite's settings."""
        shape = ["--smoke"] if self.args.smoke else ["--shapes", self.main_name]
        return [*shape, "--stages", "stage2", "--precision", self.args.precision, "--attn", self.attn,
                "--checkpointing", self.args.checkpointing, "--compile" if self.args.compile else "--no-compile"]  # fmt: skip

    def packs(self, preset, n: int) -> list[dict]:
        return [to_device(b, self.device) for b in make_packs(preset, n, pack_budget(preset))]

    def record(self, part: str, result: dict, seconds: float) -> None:
        self.payload["parts"][part] = result | {"part_seconds": seconds}
        shown = result.get("error") or result.get("table") or f"done in {seconds:.0f} s"
        print(shown, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.payload, indent=1) + "\n")

    def summary(self, seconds: float) -> str:
        parts = self.payload["parts"]
        lines = [
            f"{p:11s} {'error' if 'error' in r else 'ok':5s} {r['part_seconds']:7.1f} s"
            for p, r in parts.items()
        ]
        return "\n".join([*lines, f"{'total':11s} {'':5s} {seconds:7.1f} s; wrote {self.path}"])

    # ---- parts ----------------------------------------------------------------------------
    def mfu(self) -> dict:
        """Stage-2 throughput and MFU of every shape (``gpu.py``'s harness)."""
        out = {}
        for name, preset in self.shapes.items():
            packs = self.packs(preset, self.warmup + self.steps)
            r = run_config(
                name, preset, "stage2", packs, self.device, self.args, self.attn, self.warmup, self.peak
            )
            if name in TARGET_MFU:
                r |= {
                    "target_mfu": TARGET_MFU[name],
                    "passed": r["mfu"] is not None and r["mfu"] >= TARGET_MFU[name],
                }
            out[name] = r
            del packs
            free_memory(self.device)
        return out

    def _main_model(self, checkpointing: str, compile: bool):
        model, used = build(self.main, self.device, self.args.precision, self.attn, checkpointing, compile)
        set_stage(model, "stage2")
        opt = torch.optim.AdamW(
            model.parameters(), lr=1e-5, weight_decay=0.05, fused=self.device.type == "cuda"
        )
        return model, opt, used

    def profile(self) -> dict:
        """Milliseconds per part of the main shape's stage-2 step (with the suite's settings)."""
        model, opt, used = self._main_model(self.args.checkpointing, self.args.compile)
        packs = self.packs(self.main, self.warmup + self.steps)
        train_steps(model, opt, packs[: self.warmup], self.device, self.args.precision)
        result = profile(model, opt, packs[self.warmup :], self.device, self.args.precision)
        del model, opt, packs
        free_memory(self.device)
        return result | {"shape": self.main_name, "attention": used, "table": format_profile(result)}

    def loss(self) -> dict:
        """Full logits, our chunked kernel and Liger-Kernel's at the real output shape."""
        result = loss_kernels(self.device, smoke=self.args.smoke)
        free_memory(self.device)
        return result

    def lightning(self) -> dict:
        result = lightning_vs_harness(
            self.main_name, self.main, self.args, self.attn, self.warmup, self.steps
        )
        free_memory(self.device)
        return result | {"shape": self.main_name}

    def padded(self) -> dict:
        """Packed vs padded tokens/s of the main shape, eager (padded shapes change every batch)."""
        model, opt, _ = self._main_model(self.args.checkpointing, compile=False)
        n = self.args.padded_samples or (8 if self.args.smoke else 40)
        result = packed_vs_padded(
            model, opt, self.main, n, pack_budget(self.main), self.device, self.args.precision
        )
        del model, opt
        free_memory(self.device)
        return result | {"shape": self.main_name}

    def slice8b(self) -> dict:
        preset = VLM_PRESETS[self.slice_name]
        packs = self.packs(preset, self.warmup + self.steps)
        result = slice_projection(preset, packs, self.device, self.args, self.attn, self.warmup, self.peak)
        del packs
        free_memory(self.device)
        return result | {"shape": self.slice_name}
