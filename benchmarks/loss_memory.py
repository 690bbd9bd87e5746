"""Figure 4: peak memory and time of the chunked, logits-free loss vs full logits (forward + backward).

Shapes: hidden 896 (Qwen2.5-0.5B), vocabulary 151,674 (Qwen2.5 + InternVL's tokens), fp32 on CPU,
every position trained (the worst case for the chunked loss, which only computes logits where a
label is trained). Variants, each in its own subprocess (peak RSS is a per-process high-water mark):

- ``full``: what transformers' ``ForCausalLM`` does: ``logits = lm_head(hidden)`` for every position
  (kept alive: the model output returns them), cross-entropy over all of them;
- ``chunked``: ``training/loss.py::weighted_loss`` at a chunk size.

Peak = the resident high-water mark (``VmHWM``, reset just before; see :func:`_reset_peak`) after
forward + backward minus the resident size just before, with inputs, the output layer and both
gradient buffers already allocated (a training step holds those anyway).

Full logits at 16,384 tokens need ~37 GiB (more than this machine has) and each variant's matrix
products take many minutes on two cores, so the 16,384-token figure is projected from a memory
model, ``peak = fixed + k * rows * vocab * 4 B`` (rows: every token for full logits, one chunk for
the chunked loss; k: how many (rows x vocab) fp32 buffers are alive at the peak; fixed: mostly the
output layer's (vocab x hidden) gradient buffers):

- k of each variant from two runs at a reduced hidden size (the (rows x vocab) buffers do not depend
  on the hidden size, so these runs are cheap and exact for k);
- fixed from one run per variant at the real shape (hidden 896) and 512 tokens, chunk 128 (the
  module's token/chunk ratio 16384/4096); these runs also give the loss and gradient parity.

The chunked run at chunk 128 peaks in its gradient-buffer phase, not its chunk phase, so adding
its whole fixed part to the chunk buffers over-states the chunked peak: the projection is an upper
bound. Targets: projected chunked peak <= 25% of full logits at 16,384 tokens / chunk 4096, losses
equal within 1e-5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, VOCAB = 896, 151674
PRODUCTION_TOKENS, PRODUCTION_CHUNK = 16384, 4096
TARGET_RATIO, LOSS_ATOL = 0.25, 1e-5
ROW_BYTES = VOCAB * 4  # one fp32 row of logits
SMALL_HIDDEN = 64  # hidden size of the runs that measure k


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (VmHWM) to its current RSS (Linux >= 4.0).

    ``ru_maxrss`` cannot be used after fork: a child starts with its parent's high-water mark, so
    a large parent (the figure runner) would hide the child's peak. VmHWM belongs to the address
    space, which exec replaces, and ``clear_refs`` resets it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(variant: str, tokens: int, chunk: int, hidden_size: int, out: str) -> None:
    """One measurement in this process; writes loss, gradient probes, peak and time to ``out``."""
    import torch
    import torch.nn.functional as F

    from internvl_lightning.training.loss import weighted_loss

    torch.manual_seed(0)
    with torch.no_grad():  # in-place init: no transient copies before the baseline is read
        lm_head = torch.nn.Linear(hidden_size, VOCAB, bias=False)
        lm_head.weight.normal_(0, 0.02)
        hidden = torch.empty(1, tokens, hidden_size).normal_(0, 1.0)
    hidden.requires_grad_(True)
    labels = torch.randint(0, VOCAB, (1, tokens))
    weights = torch.ones(1, tokens)
    lm_head.weight.grad = torch.zeros_like(lm_head.weight)
    hidden.grad = torch.zeros_like(hidden)
    probe = torch.randn(hidden_size, generator=torch.Generator().manual_seed(1))

    reset = _reset_peak()
    base_rss, base_max = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    t0 = time.perf_counter()
    if variant == "full":
        logits = lm_head(hidden)  # (1, T, V): what a causal LM returns
        tgt = labels[:, 1:].reshape(-1)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), tgt, reduction="none")
        w = weights[:, 1:].reshape(-1)
        loss = (ce * w).sum() / w.sum()
    else:
        loss, _ = weighted_loss(hidden, lm_head, labels, weights, None, chunk)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _status_bytes("VmHWM")
    result = {
        "variant": variant,
        "tokens": tokens,
        "chunk": chunk if variant == "chunked" else None,
        "hidden": hidden_size,
        "rows": chunk if variant == "chunked" else tokens,
        "seconds": seconds,
        "baseline_rss": base_rss,
        "peak_reset": reset,
        "hwm_before": base_max,
        "hwm_after": peak,
        "peak_bytes": peak - base_rss,
        "loss": loss.item(),
    }
    probes = {"grad_hidden": hidden.grad.clone(), "grad_weight_probe": lm_head.weight.grad @ probe}
    torch.save(probes, out + ".pt")
    Path(out).write_text(json.dumps(result))


def measure(variant: str, tokens: int, chunk: int = 0, hidden_size: int = HIDDEN) -> tuple[dict, dict]:
    """Run :func:`worker` in a fresh interpreter; (result, gradient probes)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "benchmarks.loss_memory", "--worker", variant, "--out", out]
        cmd += ["--tokens", str(tokens), "--chunk", str(chunk), "--hidden", str(hidden_size)]
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
        result = json.loads(Path(out).read_text())
        grads = torch.load(out + ".pt", weights_only=True)
    if result["hwm_after"] <= result["hwm_before"]:
        raise RuntimeError(f"{variant}: the set-up, not the loss, set the peak; peak not measurable")
    return result, grads


def buffers_per_row(a: dict, b: dict) -> float:
    """k: the slope of peak over logit rows between two runs, in (vocab-sized fp32 rows) per row."""
    return (b["peak_bytes"] - a["peak_bytes"]) / ((b["rows"] - a["rows"]) * ROW_BYTES)


def project(run: dict, k: float, rows: int) -> dict:
    """Peak at ``rows`` logit rows: the real-shape ``run``'s fixed part plus ``k`` buffers per row."""
    fixed = run["peak_bytes"] - k * run["rows"] * ROW_BYTES
    return {"fixed_bytes": fixed, "k": k, "rows": rows, "peak_bytes": fixed + k * rows * ROW_BYTES}


def compare(tokens: int, chunk: int) -> tuple[dict, dict, float, float]:
    """Both variants at ``tokens`` (the chunked one at ``chunk``): (full, chunked, |loss difference|,
    largest gradient-probe difference)."""
    full, full_grads = measure("full", tokens)
    chunked, chunked_grads = measure("chunked", tokens, chunk)
    loss_diff = abs(chunked["loss"] - full["loss"])
    grad_diff = max(
        float((chunked_grads[k] - full_grads[k]).abs().max()) for k in ("grad_hidden", "grad_weight_probe")
    )
    return full, chunked, loss_diff, grad_diff


def run(quick: bool = False) -> dict:
    from .common import row

    tokens = 256 if quick else 512
    chunk = tokens * PRODUCTION_CHUNK // PRODUCTION_TOKENS
    # k of each variant at a small hidden size (two sizes each)
    small = 2 * tokens
    k_runs = {
        "full_a": measure("full", small // 2, hidden_size=SMALL_HIDDEN)[0],
        "full_b": measure("full", small, hidden_size=SMALL_HIDDEN)[0],
        "chunked_a": measure("chunked", small, small // 4, SMALL_HIDDEN)[0],
        "chunked_b": measure("chunked", small, small // 2, SMALL_HIDDEN)[0],
    }
    k_full = buffers_per_row(k_runs["full_a"], k_runs["full_b"])
    k_chunked = buffers_per_row(k_runs["chunked_a"], k_runs["chunked_b"])
    # the real shape: fixed parts, parity, time
    full, chunked, loss_diff, grad_diff = compare(tokens, chunk)
    measured_ratio = chunked["peak_bytes"] / full["peak_bytes"]
    full_16k = project(full, k_full, PRODUCTION_TOKENS)
    proj = {c: project(chunked, k_chunked, c) for c in (PRODUCTION_CHUNK, PRODUCTION_CHUNK // 2)}
    ratio = {c: p["peak_bytes"] / full_16k["peak_bytes"] for c, p in proj.items()}
    gib = 2**30
    main, half = PRODUCTION_CHUNK, PRODUCTION_CHUNK // 2
    rows = [
        row(
            f"chunked/full peak, measured {tokens} tok / chunk {chunk}",
            "info (scaled down)",
            f"{measured_ratio:.1%} ({chunked['peak_bytes'] / gib:.2f} vs {full['peak_bytes'] / gib:.2f} GiB)",
            None,
        ),
        row(
            f"chunked/full peak, projected {PRODUCTION_TOKENS} tok / chunk {main}",
            f"<= {TARGET_RATIO:.0%}",
            f"{ratio[main]:.1%} ({proj[main]['peak_bytes'] / gib:.1f} vs {full_16k['peak_bytes'] / gib:.1f} GiB)",
            ratio[main] <= TARGET_RATIO,
        ),
        row(
            f"same at chunk {half}",
            "info",
            f"{ratio[half]:.1%} ({proj[half]['peak_bytes'] / gib:.1f} GiB)",
            None,
        ),
        row(
            "logit-sized buffers alive per row (k)",
            "info",
            f"full {k_full:.2f}, chunked {k_chunked:.2f}",
            None,
        ),
        row(
            "|loss chunked - full|",
            f"<= {LOSS_ATOL:g}",
            f"{loss_diff:.1e} (gradients: max diff {grad_diff:.1e})",
            loss_diff <= LOSS_ATOL,
        ),
        row(
            f"time chunked / full at {tokens} tok",
            "info",
            f"{chunked['seconds']:.1f} s / {full['seconds']:.1f} s",
            None,
        ),
    ]
    return {
        "figure": "loss_memory",
        "title": f"chunked loss vs full logits, vocab {VOCAB}, hidden {HIDDEN}, fp32 CPU, fwd+bwd",
        "rows": rows,
        "details": {
            "real_shape_runs": {"full": full, "chunked": chunked},
            "k_runs": k_runs,
            "k_full": k_full,
            "k_chunked": k_chunked,
            "loss_abs_diff": loss_diff,
            "grad_max_abs_diff": grad_diff,
            "projection_full_16384": full_16k,
            "projection_chunked": {str(c): p for c, p in proj.items()},
            "projected_ratio": {str(c): r for c, r in ratio.items()},
        },
    }


def full_scale(tokens: int = PRODUCTION_TOKENS, chunk: int = PRODUCTION_CHUNK) -> dict:
    """Both variants measured at the production shape, no projection: needs ~45 GiB of free memory
    (full logits), so it runs on a larger host than the CI box (``--full-scale``; ``make bench``
    keeps to :func:`run`). Same workers, same peak definition."""
    from .common import row

    full, chunked, loss_diff, grad_diff = compare(tokens, chunk)
    ratio = chunked["peak_bytes"] / full["peak_bytes"]
    gib = 2**30
    return {
        "figure": "loss_memory_full_scale",
        "title": f"chunked loss vs full logits measured at {tokens} tokens, vocab {VOCAB}, hidden {HIDDEN}, fp32 CPU",
        "rows": [
            row(
                f"chunked/full peak, measured {tokens} tok / chunk {chunk}",
                f"<= {TARGET_RATIO:.0%}",
                f"{ratio:.1%} ({chunked['peak_bytes'] / gib:.1f} vs {full['peak_bytes'] / gib:.1f} GiB)",
                ratio <= TARGET_RATIO,
            ),
            row(
                "|loss chunked - full|",
                f"<= {LOSS_ATOL:g}",
                f"{loss_diff:.1e} (gradients: max diff {grad_diff:.1e})",
                loss_diff <= LOSS_ATOL,
            ),
            row("time chunked / full", "info", f"{chunked['seconds']:.1f} s / {full['seconds']:.1f} s", None),
        ],
        "details": {
            "full": full,
            "chunked": chunked,
            "loss_abs_diff": loss_diff,
            "grad_max_abs_diff": grad_diff,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("full", "chunked"))
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--chunk", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--full-scale", action="store_true",
        help="measure both variants at 16,384 tokens (~45 GiB free memory); writes to $OUT or results/",
    )  # fmt: skip
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.tokens, args.chunk, args.hidden, args.out)
        return
    from .common import RESULTS, print_result, save

    if args.full_scale:
        tokens = args.tokens or PRODUCTION_TOKENS
        result = full_scale(tokens, tokens * PRODUCTION_CHUNK // PRODUCTION_TOKENS)
        save(result, Path(os.environ.get("OUT") or RESULTS))
    else:
        result = run(quick=args.quick)
        save(result)
    print_result(result)


if __name__ == "__main__":
    main()
