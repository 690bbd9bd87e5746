"""The benchmark scripts import against the library as it is (`make bench` is not part of `make test`)."""

from __future__ import annotations

import importlib

import pytest

from tests.helpers import REPO

SCRIPTS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name):
    importlib.import_module(f"benchmarks.{name}")


def test_loss_time_projection_adds_the_per_chunk_cost_of_4_chunks_to_32_times_the_rows():
    from benchmarks.loss_memory import project_time

    # 512 rows: 4 chunks cost 1.3x full logits, one chunk 1.0x -> 0.1 per chunk, 0.9 per 512 rows;
    # 16,384 rows in 4 chunks: (0.9 * 32 + 0.1 * 4) / 32
    per_tokens, per_chunk, projected = project_time(1.3, 1.0, 512, 128)
    assert per_chunk == pytest.approx(0.1) and per_tokens == pytest.approx(0.9)
    assert projected == pytest.approx(0.9125)
    with pytest.raises(ValueError, match="at least 2 chunks, got 512 tokens / chunk 512"):
        project_time(1.0, 1.0, 512, 512)


def test_overhead_pairs_each_lightning_step_with_the_plain_step_beside_it():
    from benchmarks.framework_overhead import Alternate

    clock = Alternate(plain=None)
    clock.stamps["cpu"] = [(1.0, 3.0), (4.0, 7.0), (9.0, 10.0)]  # (end of Lightning step, end of plain step)
    assert clock.step_seconds("cpu") == {"lightning": [1.0, 2.0], "plain": [3.0, 1.0]}


def test_overhead_is_the_ratio_of_the_paired_sums_after_warmup():
    from benchmarks.framework_overhead import paired

    times = {"lightning": [9.0, 1.1, 2.2, 1.0, 3.3], "plain": [1.0, 1.0, 2.0, 1.0, 3.0]}
    stats = paired(times, warmup=1)  # 7.6 / 7.0
    assert stats["overhead"] == pytest.approx(0.6 / 7.0) and stats["pairs"] == 4
    assert stats["mean_extra_seconds"] == pytest.approx(0.15)
    assert stats["median_seconds"] == {"lightning": pytest.approx(1.65), "plain": pytest.approx(1.5)}
    assert 0 < stats["standard_error"] < 0.1  # the per-pair ratios are 1.0 to 1.1
    same = paired({"lightning": [1.0, 2.0, 3.0], "plain": [1.0, 2.0, 3.0]}, warmup=0)
    assert same["overhead"] == 0.0 and same["standard_error"] == 0.0


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_part_on_cpu_and_records_its_figures(tmp_path):
    import json
    import subprocess
    import sys

    from benchmarks.gpu_profile import PARTS as STEP_PARTS
    from benchmarks.gpu_suite import PARTS

    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--smoke", "--no-compile",
           "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads((tmp_path / "gpu_suite_smoke.json").read_text())
    parts = payload["parts"]
    assert list(parts) == list(PARTS)
    assert not [p for p, r in parts.items() if "error" in r], {p: r.get("error") for p, r in parts.items()}
    assert payload["machine"]["torch"] and payload["settings"]["device"] == "cpu"

    cold, warm = parts["first_step"]["cold"], parts["first_step"]["warm"]
    assert parts["first_step"]["cache_dir_was_empty"] and cold["cache_files_before"] == 0
    assert all(
        r[k] > 0 for r in (cold, warm) for k in ("process_seconds", "build_seconds", "first_step_seconds")
    )
    assert cold["process_seconds"] > cold["build_seconds"] + cold["first_step_seconds"]

    mfu = parts["mfu"]["tiny"]
    assert mfu["stage"] == "stage2" and mfu["mfu"] is None  # no peak FLOPs known for a CPU
    assert mfu["tokens_per_s"] == pytest.approx(mfu["mean_real_tokens"] / mfu["median_step_seconds"])

    prof = parts["profile"]
    assert list(prof["parts_ms"]) == list(STEP_PARTS) and all(ms > 0 for ms in prof["parts_ms"].values())
    assert sum(prof["shares"].values()) == pytest.approx(1.0)
    assert prof["split_step_ms"] == pytest.approx(sum(prof["parts_ms"].values()))

    loss = parts["loss"]  # Liger's kernels run here under Triton's interpreter (tests/conftest.py)
    for kernel in ("full", "chunked", "liger"):
        r = loss[kernel]
        assert r["median_seconds"] > 0 and r["loss_rel_error"] < 1e-2 and r["weight_grad_rel_error"] < 5e-2, (
            kernel
        )
    assert loss["chunked"]["time_over_full"] > 0 and loss["liger"]["time_over_full"] > 0

    light = parts["lightning"]
    assert light["measured_steps"] == len(light["harness_step_seconds"]) == 1
    assert light["ratio"] == pytest.approx(light["lightning_tokens_per_s"] / light["harness_tokens_per_s"])
    assert light["mean_real_tokens"] > 0 and light["mean_tiles"] > 0 and light["shard_seconds"] > 0

    padded = parts["padded"]
    assert padded["packed"]["computed_tokens_per_real"] == 1.0 < padded["padded"]["computed_tokens_per_real"]
    assert padded["packed_over_padded"] == pytest.approx(
        padded["packed"]["tokens_per_s"] / padded["padded"]["tokens_per_s"]
    )

    sl = parts["slice8b"]  # the tiny preset has 2 LLM layers: slices of 1 and 2, the projection is the 2
    assert sorted(sl["slice_step_seconds"]) == ["1", "2"] and sl["full_layers"] == 2
    assert sl["projected_step_seconds"] == pytest.approx(sl["slice_step_seconds"]["2"])
    assert sl["plan"]["gpus"] == 512 and sl["plan"]["pack_seconds"] > 0 and sl["measured_over_plan_speed"] > 0
