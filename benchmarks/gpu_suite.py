"""Issue-sized GPU check in one process: MFU, a step profile, the Lightning path, packed vs padded,
an 8B slice and time to first step, on one H100/H200, JSON to ``$OUT/gpu_suite.json``.

Run from the repository root (no install, no network); ``--parts`` picks a subset for a rerun:

    python3 benchmarks/gpu_suite.py                       # everything within --budget (460 s) on one H200
    python3 benchmarks/gpu_suite.py --parts profile slice8b
    python3 benchmarks/gpu_suite.py --smoke --no-compile  # on CPU: tiny shapes, 1-2 steps

Parts, in run order, with the seconds expected on one H200 on a fresh machine (cold compile
cache) and on a rerun (warm cache, ``--cache-dir`` kept):

    part        cold  warm
    first_step  ~250   ~70  two fresh ``gpu.py`` processes (1B, one pack) sharing the compile
                            cache: cold and warm time to first step (``gpu_first_step.py``)
    mfu         ~110   ~50  stage-2 tokens/s and MFU of the 1B and 2B shapes (``gpu.py::run_config``;
                            the 2B shape's kernels compile here)
    profile      ~25   ~25  the 1B step split into ViT, LLM, output layer + loss, optimizer
                            (``gpu_profile.py``)
    loss         ~20   ~15  the loss kernels at 16,384 x 151,674 x 896: full logits, ours and
                            Liger-Kernel's (time, peak memory, bf16 error; ``gpu_loss.py``)
    lightning    ~60   ~50  ``InternVLChat`` + Trainer + ``InternVLDataModule`` on real-JPEG shards
                            vs the harness on the same packs (``gpu_lightning.py``)
    padded       ~35   ~35  packed vs padded tokens/s of the 1B shape, eager (``gpu_padded.py``)
    slice8b      ~60   ~40  the 8B widths at k and k/2 LLM layers, projected to 32 and compared
                            with ``plan("8b", "2", gpus=512)`` (``gpu_slice.py``)
    total       ~560  ~285

A part starts only if the seconds spent so far plus its cold estimate stay within ``--budget``
(460 s): on a fresh machine the last part or two may be skipped, to be run by a second call with
``--parts`` (warm cache, well inside the budget). Every part runs in a ``try``: a failure is
recorded as its ``error`` and the others still run. The compile cache (``--cache-dir``) is set
before torch is imported, so every part and every later run reuse it. The JSON is rewritten
after every part, with the machine (GPU, driver, versions) and the settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT / "src"), str(ROOT)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from benchmarks.gpu_first_step import cache_env, first_step  # noqa: E402  (imports no torch)

PARTS = {
    "first_step": 250,
    "mfu": 110,
    "profile": 25,
    "loss": 20,
    "lightning": 60,
    "padded": 35,
    "slice8b": 60,
}  # cold seconds


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 1-2 steps, the same code paths")
    p.add_argument(
        "--steps", type=int, default=None, help="measured steps per measurement (default 4; smoke 1)"
    )
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; smoke 1)")
    p.add_argument("--precision", choices=("bf16-mixed", "bf16-true"), default="bf16-mixed")
    p.add_argument("--attn", default="auto", help="auto | flash_attention_2 | flex_attention | sdpa")
    p.add_argument("--checkpointing", choices=("both", "vit", "llm", "none"), default="vit")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--slice-layers", type=int, default=None, help="LLM layers of the 8B slice (default: what fits)"
    )
    p.add_argument(
        "--padded-samples", type=int, default=None, help="samples of the packed/padded epoch (default 40)"
    )
    p.add_argument(
        "--budget", type=float, default=460.0, help="seconds; a part that would end later is skipped"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="compile cache (default ~/.cache/internvl-lightning/compile)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for gpu_suite.json (default $OUT or benchmarks/results)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    cache_dir = args.cache_dir or Path.home() / ".cache" / "internvl-lightning" / "compile"
    os.environ.update(cache_env(cache_dir))  # before torch is imported: this process reuses it too
    from benchmarks.gpu_parts import Suite

    out_dir = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    suite = Suite(args, out_dir / ("gpu_suite_smoke.json" if args.smoke else "gpu_suite.json"))
    t_start = time.perf_counter()
    for part in args.parts:
        if not args.smoke and time.perf_counter() - t_start + PARTS[part] > args.budget:
            suite.record(part, {"error": "skipped: time budget reached"}, 0.0)
            continue
        print(f"== {part} (up to ~{PARTS[part]} s on one H200)", flush=True)
        t0 = time.perf_counter()
        try:
            if part == "first_step":
                with tempfile.TemporaryDirectory() as tmp:
                    result = first_step(cache_dir, Path(tmp), suite.gpu_args())
            else:
                result = getattr(suite, part)()
        except Exception as e:  # one failing part must not lose the others
            result = {"error": f"{type(e).__name__}: {e}"}
        suite.record(part, result, time.perf_counter() - t0)
    print(suite.summary(time.perf_counter() - t_start))
    return suite.payload


if __name__ == "__main__":
    main()
