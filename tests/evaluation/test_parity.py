"""Our scorers against the official ones, case by case (``parity/*.json``, see ``parity/README.md``).

Every case holds an input, the branch of the official function it exercises and the decision that
function gave; the one test below runs our judge on the same input and must give the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from internvl_lightning.evaluation.common import Sample
from internvl_lightning.evaluation.generate import Request
from internvl_lightning.evaluation.mathvista import MathVista
from internvl_lightning.evaluation.mathvista_rules import build_query, correct, normalize, official_extract
from internvl_lightning.evaluation.mmbench import MMBench, option_cells
from internvl_lightning.evaluation.mmmu import MMMU
from internvl_lightning.evaluation.vqa import VQA

PARITY = Path(__file__).with_name("parity")


def _cases() -> list:
    out = []
    for path in sorted(PARITY.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out += [pytest.param(doc["benchmark"], case, id=case["id"]) for case in doc["cases"]]
    return out


def _sample(answer: Any, **meta: Any) -> Sample:
    return Sample("0", Request("q"), answer, meta=meta)


def _mmbench(case: dict) -> dict:
    bench = MMBench()
    if case["kind"] == "single":
        return {"letter": bench.judge(_sample(None, options=case["options"]), case["prediction"])[1]}
    if case["kind"] == "tsv_cells":
        options = option_cells(case["cells"])
        return {
            "options": options,
            "letter": bench.judge(_sample(None, options=options), case["prediction"])[1],
        }
    copies = [_sample(c["answer"], options=c["options"]) for c in case["copies"]]
    judged = [bench.judge(s, c["prediction"]) for s, c in zip(copies, case["copies"], strict=True)]
    return {"hit": int(bench.summarize(copies, judged, circular=True).score == 100.0)}


def _mmmu(case: dict) -> dict:
    options = dict(zip("ABCDEFGHIJ", case.get("options", [])))
    sample = _sample(case["answer"], options=options, question_type=case["kind"])
    score, parsed = MMMU().judge(sample, case["response"])
    if case["kind"] == "open":
        parsed = sorted(repr(x) for x in parsed)
    return {"parsed": parsed, "correct": bool(score)}


def _mathvista(case: dict) -> dict:
    problem = case["problem"]
    if case["kind"] == "query":
        return {"query": build_query(problem)}
    if case["kind"] == "needs_judge":
        return {"needs_judge": official_extract(case["response"], problem) is None}
    if case["kind"] == "normalize":
        prediction = normalize(case["extraction"], problem)
        return {"prediction": prediction, "true_false": correct(prediction, problem)}
    meta = {k: problem[k] for k in ("choices", "question_type", "answer_type", "precision")}
    meta["choices"] = meta["choices"] or []
    score, info = MathVista().judge(_sample(problem["answer"], **meta), case["response"])
    assert info["official_rule"], "a pipeline case is decided by the official rules alone"
    return {"extraction": info["extraction"], "prediction": info["prediction"], "true_false": bool(score)}


def _vqa(case: dict) -> float:
    return VQA(metric=case["metric"]).judge(_sample(case["answers"]), case["prediction"])[0]


@pytest.mark.parametrize("benchmark, case", _cases())
def test_matches_the_official_decision(benchmark: str, case: dict) -> None:
    if benchmark == "vqa":
        assert _vqa(case) == pytest.approx(case["official"], abs=1e-12), case["branch"]
    else:
        ours = {"mmbench": _mmbench, "mmmu": _mmmu, "mathvista": _mathvista}[benchmark](case)
        assert ours == case["official"], case["branch"]


def test_every_benchmark_has_at_least_100_cases() -> None:
    counts: dict[str, int] = {}
    for param in _cases():
        benchmark, case = param.values
        key = f"vqa/{case['metric']}" if benchmark == "vqa" else benchmark
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {"mmbench", "mmmu", "mathvista", "vqa/vqa", "vqa/anls", "vqa/relaxed", "vqa/exact"}
    assert min(counts.values()) >= 100, counts
