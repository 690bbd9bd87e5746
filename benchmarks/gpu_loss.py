"""The loss kernels on a GPU at the real output shape: full logits, ours (`chunked`) and Liger's.

One pack of 16,384 trained positions, hidden 896 (the 1B LLM's), vocabulary 151,674, bf16-mixed
as training runs it (fp32 output weight, autocast bf16, square-reduction token weights). Per
kernel: forward + backward time (median of ``repeats`` after one untimed pass), peak memory above
the inputs, and the bf16 result's distance from an fp32 reference (our kernel without autocast,
which tests/training/test_loss_fused.py checks against full logits to 1e-6): loss relative
error and the relative norm error of the hidden and weight gradients. ``liger`` is skipped with
its reason where Liger-Kernel is missing or cannot run (no CUDA device and no Triton
interpreter).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

from benchmarks.gpu import sync
from internvl_lightning.training.loss import weighted_loss

SHAPE = {"tokens": 16_384, "hidden": 896, "vocab": 151_674}
SMOKE_SHAPE = {"tokens": 96, "hidden": 32, "vocab": 500}
CHUNK = 4096  # the module's loss_chunk_size default


def _inputs(tokens: int, hidden: int, vocab: int, device: torch.device):
    g = torch.Generator(device="cpu").manual_seed(0)
    h = (torch.randn(1, tokens + 1, hidden, generator=g) * 0.5).to(device)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g) * hidden**-0.5)
    labels = torch.randint(0, vocab, (1, tokens + 1), generator=g).to(device)
    sizes = torch.randint(50, 2000, (64,), generator=g)  # packed samples, square reduction weights
    weights = torch.repeat_interleave(sizes.float().rsqrt(), sizes)[: tokens + 1]
    weights = torch.cat([weights, weights.new_full((tokens + 1 - weights.numel(),), 0.02)])[None].to(device)
    return h, head.to(device), labels, weights


def _full_logits(h, head, labels, weights):
    logits = head(h)[:, :-1].float().flatten(0, 1)
    w = weights[:, 1:].flatten()
    return (F.cross_entropy(logits, labels[:, 1:].flatten(), reduction="none") * w).sum() / w.sum()


def _run(kernel: str, h, head, labels, weights, autocast: bool):
    """One forward + backward; returns (loss, d hidden, d weight)."""
    hidden = h.detach().requires_grad_(True)
    head.weight.grad = None
    with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=autocast):
        if kernel == "full":
            loss = _full_logits(hidden, head, labels, weights)
        else:
            loss, _ = weighted_loss(hidden, head, labels, weights, None, CHUNK, kernel)
    loss.backward()
    return loss.detach().float(), hidden.grad.float(), head.weight.grad.float()


def _liger_unavailable(device: torch.device) -> str | None:
    try:
        from internvl_lightning.training.loss_liger import check_liger

        check_liger(device)
    except (ImportError, RuntimeError) as e:
        return f"skipped: {e}"
    return None


def loss_kernels(device: torch.device, smoke: bool = False, repeats: int = 5) -> dict:
    shape = SMOKE_SHAPE if smoke else SHAPE
    h, head, labels, weights = _inputs(shape["tokens"], shape["hidden"], shape["vocab"], device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    ref_loss, ref_dh, ref_dw = _run("chunked", h, head, labels, weights, autocast=False)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    out: dict = {"shape": shape, "chunk": CHUNK, "precision": "bf16-mixed", "repeats": repeats}
    for kernel in ("full", "chunked", "liger"):
        reason = _liger_unavailable(device) if kernel == "liger" else None
        if reason:
            out[kernel] = {"error": reason}
            continue
        _run(kernel, h, head, labels, weights, autocast=True)  # untimed: kernels compiled, caches warm
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            loss, dh, dw = _run(kernel, h, head, labels, weights, autocast=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        out[kernel] = {
            "median_seconds": statistics.median(times),
            "peak_gib_above_inputs": None if peak is None else peak / 2**30,
            "loss_rel_error": float((loss - ref_loss).abs() / ref_loss.abs()),
            "hidden_grad_rel_error": float((dh - ref_dh).norm() / ref_dh.norm()),
            "weight_grad_rel_error": float((dw - ref_dw).norm() / ref_dw.norm()),
        }
        del loss, dh, dw
    full = out["full"]
    for kernel in ("chunked", "liger"):
        r = out[kernel]
        if "error" in r:
            continue
        r["time_over_full"] = r["median_seconds"] / full["median_seconds"]
        if r["peak_gib_above_inputs"] is not None and full["peak_gib_above_inputs"]:
            r["memory_over_full"] = r["peak_gib_above_inputs"] / full["peak_gib_above_inputs"]
    out["table"] = format_table(out)
    out["interpreted"] = os.environ.get("TRITON_INTERPRET") == "1"
    return out


def format_table(out: dict) -> str:
    rows = [f"{'kernel':8s} {'ms':>9s} {'x full':>7s} {'GiB':>7s} {'x full':>7s} {'dW err':>8s}"]
    for kernel in ("full", "chunked", "liger"):
        r = out[kernel]
        if "error" in r:
            rows.append(f"{kernel:8s} {r['error']}")
            continue
        gib = r["peak_gib_above_inputs"]  # None on a CPU: no allocator peak to read
        memory = "" if gib is None else f"{gib:.2f}"
        memory_ratio = "" if gib is None else f"{r.get('memory_over_full', 1.0):.2f}"
        rows.append(
            f"{kernel:8s} {1e3 * r['median_seconds']:9.1f} {r.get('time_over_full', 1.0):7.2f} "
            f"{memory:>7s} {memory_ratio:>7s} {r['weight_grad_rel_error']:8.1e}"
        )
    return "\n".join(rows)
