"""Figure 4: peak memory and time of the chunked, logits-free loss vs full logits (forward + backward).

Shapes: hidden 896 (Qwen2.5-0.5B), vocabulary 151,674 (Qwen2.5 + InternVL's tokens), fp32 on CPU,
every position trained (the worst case for the chunked loss, which only computes logits where a
label is trained). Variants:

- ``full``: what transformers' ``ForCausalLM`` does: ``logits = lm_head(hidden)`` for every position
  (kept alive: the model output returns them), cross-entropy over all of them, autograd backward;
- ``chunked``: ``training/loss.py::weighted_loss`` at a chunk size (gradients computed chunk by
  chunk during the forward pass, nothing recomputed).

Peak = the resident high-water mark (``VmHWM``, reset just before; see :func:`_reset_peak`) after
forward + backward minus the resident size just before, with inputs, the output layer and both
gradient buffers already allocated (a training step holds those anyway), each variant in its own
subprocess (peak RSS is a per-process high-water mark).

Full logits at 16,384 tokens need ~37 GiB (more than this machine has) and each variant's matrix
products take many minutes on two cores, so the 16,384-token figure is projected from a memory
model, ``peak = fixed + k * rows * vocab * 4 B`` (rows: every token for full logits, one chunk for
the chunked loss; k: how many (rows x vocab) fp32 buffers are alive at the peak; fixed: mostly the
output layer's (vocab x hidden) gradient buffers):

- k of each variant from two runs at a reduced hidden size (the (rows x vocab) buffers do not depend
  on the hidden size, so these runs are cheap and exact for k);
- fixed from one run per variant at the real shape (hidden 896) and 512 tokens, chunk 128 (the
  module's token/chunk ratio 16384/4096); these runs also give the loss and gradient parity.

Time: at that real shape in one subprocess with one torch thread, alternating full logits, the
chunked loss at chunk 128 and at one chunk of 512 (after one untimed pass each); each chunked
time is divided by the full-logits time beside it and the medians of these paired ratios enter a
time model, ``a`` per row plus ``b`` per chunk, projected to 16,384 tokens / chunk 4096 (see
:func:`time_ratio`): CPU products of 128 rows run slower than of 512, so the scaled-down chunk
128 alone would overstate the cost of chunk 4096. Targets: projected time <= 1.05x and projected
peak <= 25% of full logits at 16,384 tokens / chunk 4096; loss equal within 1e-5, gradients
within 1e-6.
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
TARGET_RATIO, TARGET_TIME, LOSS_ATOL, GRAD_ATOL = 0.25, 1.05, 1e-5, 1e-6
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


def _loss(variant: str, hidden, lm_head, labels, weights, chunk: int):
    """(loss, what the caller keeps alive through backward) of one variant, forward only."""
    import torch.nn.functional as F

    from internvl_lightning.training.loss import weighted_loss

    if variant == "full":
        logits = lm_head(hidden)  # (1, T, V): what a causal LM returns
        tgt = labels[:, 1:].reshape(-1)
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), tgt, reduction="none")
        w = weights[:, 1:].reshape(-1)
        return (ce * w).sum() / w.sum(), logits
    return weighted_loss(hidden, lm_head, labels, weights, None, chunk)[0], None


def _inputs(tokens: int, hidden_size: int):
    """Seeded output layer, hidden states, labels and weights, with gradient buffers allocated."""
    import torch

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
    return hidden, lm_head, labels, weights


def worker(variant: str, tokens: int, chunk: int, hidden_size: int, out: str) -> None:
    """One measurement in this process; writes loss, gradient probes, peak and time to ``out``."""
    import torch

    hidden, lm_head, labels, weights = _inputs(tokens, hidden_size)
    probe = torch.randn(hidden_size, generator=torch.Generator().manual_seed(1))

    reset = _reset_peak()
    base_rss, base_max = _status_bytes("VmRSS"), _status_bytes("VmHWM")
    t0 = time.perf_counter()
    loss, _kept = _loss(variant, hidden, lm_head, labels, weights, chunk)
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


def time_worker(tokens: int, chunk: int, repeats: int, out: str) -> None:
    """Alternate full logits, the chunked loss at ``chunk`` and at one chunk of all ``tokens``,
    ``repeats`` times (one thread) after one untimed pass each; writes the seconds of every timed
    pass per variant to ``out``."""
    from .common import cpu_settings, interleaved

    hidden, lm_head, labels, weights = _inputs(tokens, HIDDEN)

    def step(variant: str, rows: int):
        def run() -> None:
            loss, _kept = _loss(variant, hidden, lm_head, labels, weights, rows)
            loss.backward()

        return run

    variants = {
        "full": step("full", 0),
        "chunked": step("chunked", chunk),
        "one_chunk": step("chunked", tokens),
    }
    with cpu_settings(threads=1):
        interleaved(variants, 1)  # first touch of every buffer, untimed
        times = interleaved(variants, repeats)
    Path(out).write_text(json.dumps(times))


def _subprocess(out: str, *args: str) -> None:
    """This module in a fresh interpreter with ``args`` and ``--out out``."""
    cmd = [sys.executable, "-m", "benchmarks.loss_memory", *args, "--out", out]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])


def measure(variant: str, tokens: int, chunk: int = 0, hidden_size: int = HIDDEN) -> tuple[dict, dict]:
    """Run :func:`worker` in a fresh interpreter; (result, gradient probes)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        _subprocess(
            out,
            "--worker",
            variant,
            "--tokens",
            str(tokens),
            "--chunk",
            str(chunk),
            "--hidden",
            str(hidden_size),
        )
        result = json.loads(Path(out).read_text())
        grads = torch.load(out + ".pt", weights_only=True)
    if result["hwm_after"] <= result["hwm_before"]:
        raise RuntimeError(f"{variant}: the set-up, not the loss, set the peak; peak not measurable")
    return result, grads


def project_time(rn: float, r1: float, tokens: int, chunk: int) -> tuple[float, float, float]:
    """(a, b, projected chunked / full time at 16,384 tokens / chunk 4096) from the measured ratios
    at ``tokens`` rows: ``rn`` at ``chunk`` rows per chunk, ``r1`` at one chunk.

    Time model (units: one full-logits pass at ``tokens``): the chunked loss costs ``a`` per
    ``tokens`` rows plus ``b`` per chunk (each chunk adds one pass over the (vocab x hidden) weight
    gradient and a smaller matrix product). One chunk (r1) and ``tokens / chunk`` chunks (rn) give
    ``b = (rn - r1) / (n - 1)`` and ``a = r1 - b``; at 16,384 tokens / chunk 4096 the ratio is
    ``a + b * 4 / 32``. Products of 4096 rows run at least as efficiently as those of ``tokens``
    rows, so this does not flatter the chunked loss.
    """
    n = -(-tokens // chunk)
    if n < 2:
        raise ValueError(f"the time model needs at least 2 chunks, got {tokens} tokens / chunk {chunk}")
    per_chunk = (rn - r1) / (n - 1)
    per_tokens = r1 - per_chunk
    scale = PRODUCTION_TOKENS / tokens
    return per_tokens, per_chunk, per_tokens + per_chunk * (PRODUCTION_TOKENS // PRODUCTION_CHUNK) / scale


def time_ratio(tokens: int, chunk: int, repeats: int) -> dict:
    """:func:`time_worker` in a fresh interpreter: paired ratios to full logits and the projection
    (:func:`project_time`)."""
    from .common import median

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        _subprocess(
            out, "--worker", "time", "--tokens", str(tokens), "--chunk", str(chunk), "--repeats", str(repeats)
        )
        times = json.loads(Path(out).read_text())
    paired = {v: [t / f for f, t in zip(times["full"], times[v])] for v in ("chunked", "one_chunk")}
    rn, r1 = median(paired["chunked"]), median(paired["one_chunk"])
    per_tokens, per_chunk, projected = project_time(rn, r1, tokens, chunk)
    return {
        "seconds": times,
        "paired_ratios": paired,
        "median_ratio": rn,
        "median_ratio_one_chunk": r1,
        "per_chunk": per_chunk,
        "per_tokens": per_tokens,
        "projected_ratio": projected,
    }


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


def _parity_rows(loss_diff: float, grad_diff: float) -> list[dict]:
    from .common import row

    return [
        row("|loss chunked - full|", f"<= {LOSS_ATOL:g}", f"{loss_diff:.1e}", loss_diff <= LOSS_ATOL),
        row(
            "max |gradient chunked - full| (hidden, weight probe)",
            f"<= {GRAD_ATOL:g}",
            f"{grad_diff:.1e}",
            grad_diff <= GRAD_ATOL,
        ),
    ]


def run(quick: bool = False) -> dict:
    from .common import median, row

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
    timing = time_ratio(tokens, chunk, repeats=2 if quick else 3)
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
        *_parity_rows(loss_diff, grad_diff),
        row(
            f"time chunked / full, projected {PRODUCTION_TOKENS} tok / chunk {main}",
            f"<= {TARGET_TIME:.2f}x",
            f"{timing['projected_ratio']:.3f}x (from {tokens} tok: {timing['per_tokens']:.3f} per {tokens} "
            f"rows + {timing['per_chunk']:+.3f} per chunk)",
            timing["projected_ratio"] <= TARGET_TIME,
        ),
        row(
            f"time chunked / full, measured {tokens} tok / chunk {chunk}",
            "info (scaled down)",
            f"{timing['median_ratio']:.3f}x (one chunk {timing['median_ratio_one_chunk']:.3f}x; median of "
            f"{len(timing['seconds']['full'])} paired runs, full {median(timing['seconds']['full']):.2f} s, 1 thread)",
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
            "timing": timing,
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
            *_parity_rows(loss_diff, grad_diff),
            row(
                "time chunked / full (one pass each)",
                "info",
                f"{chunked['seconds']:.1f} s / {full['seconds']:.1f} s",
                None,
            ),
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
    parser.add_argument("--worker", choices=("full", "chunked", "time"))
    parser.add_argument("--repeats", type=int, default=4, help="timed passes per variant (--worker time)")
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
    if args.worker == "time":
        time_worker(args.tokens, args.chunk, args.repeats, args.out)
        return
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
