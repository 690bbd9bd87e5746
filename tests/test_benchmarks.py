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
