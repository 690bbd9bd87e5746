"""Run every CPU benchmark figure (``make bench``), write results/*.json and print the summary table.

    python -m benchmarks.run_all                 # all figures (about 3-5 minutes on 2 cores)
    python -m benchmarks.run_all --quick         # smaller sizes, for a quick look
    python -m benchmarks.run_all --only packing_efficiency loss_memory

Figure 6 (benchmarks/gpu.py) needs a GPU; here it runs as ``--smoke`` on CPU to prove its code path.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import data_pipeline, framework_overhead, loss_memory, packed_vs_padded, packing_efficiency
from .common import RESULTS, machine_info, markdown_table, print_result, row, save, table

FIGURES = {
    "data_pipeline": data_pipeline.run,
    "packing_efficiency": packing_efficiency.run,
    "packed_vs_padded": packed_vs_padded.run,
    "loss_memory": loss_memory.run,
    "framework_overhead": framework_overhead.run,
}


def gpu_smoke(quick: bool = False) -> dict:
    """benchmarks/gpu.py --smoke in a subprocess, as it would run on the GPU machine."""
    script = Path(__file__).resolve().parent / "gpu.py"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, str(script), "--smoke", "--out", tmp],
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = Path(tmp) / "gpu_smoke.json"
        payload = json.loads(out.read_text()) if out.exists() else {"results": []}
    ok = proc.returncode == 0 and payload["results"] and all("error" not in r for r in payload["results"])
    ran = ", ".join(f"{r['shape']}/{r['stage']}" for r in payload["results"] if "error" not in r)
    return {
        "figure": "gpu_smoke",
        "title": "benchmarks/gpu.py --smoke on CPU (tiny shapes, 2 steps): the GPU script's code path",
        "rows": [
            row(
                "gpu.py --smoke runs (CPU)",
                "runs",
                f"{'ok' if ok else 'failed'}: {ran or proc.stderr[-200:]}",
                bool(ok),
            )
        ],
        "details": {
            "returncode": proc.returncode,
            "results": payload["results"],
        },
    }


README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start (written by run_all.py) -->", "<!-- results:end -->"


def update_readme(summary_md: str) -> None:
    """Put the latest full run's table between the README's result markers."""
    text = README.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        README.write_text(head + START + "\n" + summary_md + rest[rest.index(END) :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (not for the record)")
    parser.add_argument(
        "--only", nargs="*", default=None, help=f"figures to run: {sorted(FIGURES) + ['gpu_smoke']}"
    )
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)

    figures = dict(FIGURES, gpu_smoke=gpu_smoke)
    names = args.only or list(figures)
    unknown = sorted(set(names) - set(figures))
    if unknown:
        parser.error(f"unknown figures {unknown}; choose from {sorted(figures)}")
    machine = machine_info()
    out = Path(args.out)
    results, failed = [], []
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"\n>>> {name}", flush=True)
        try:
            result = figures[name](quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            result = {
                "figure": name,
                "title": "failed",
                "rows": [row("ran", "runs", "error (see log)", False)],
            }
        result["seconds"] = time.perf_counter() - t0
        result["quick"] = args.quick
        save(result, out, machine)
        print_result(result)
        if name == "data_pipeline" and "details" in result:
            print(data_pipeline.format_profile(result))
        print(f"({result['seconds']:.0f} s)", flush=True)
        results.append(result)
    total = time.perf_counter() - t_all

    m = machine
    header = (
        f"Measured {m['date']} on {m['cpu_model']} ({m['cpu_cores_usable']} usable cores, load average "
        f"{m['load_average_1min']:.1f} at start), torch {m['torch']}, transformers {m['transformers']}, "
        f"lightning {m['lightning']}; total {total:.0f} s."
    )
    if args.only is None:  # a partial run leaves the summary of the last full run alone
        summary = {
            "machine": machine,
            "quick": args.quick,
            "seconds": total,
            "figures": [{"figure": r["figure"], "title": r["title"], "rows": r["rows"]} for r in results],
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        summary_md = header + "\n\n" + markdown_table(results) + "\n"
        (out / "summary.md").write_text(summary_md)
        if not args.quick and out == RESULTS:
            update_readme(summary_md)
    print("\n" + "=" * 100)
    print(header)
    print(table(results))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
