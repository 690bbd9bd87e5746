"""End-to-end evaluation on the tiny random model: generation, reports, CLI, 2 ranks == 1 rank.

Random weights: these tests check that everything runs and is counted, never accuracy.
"""

from __future__ import annotations

import json

import pytest

from internvl_lightning.cli import main
from internvl_lightning.evaluation import evaluate, generate_batch, get_benchmark, load_samples, read_settings
from internvl_lightning.evaluation.baselines import baseline_key, guess_model, lookup
from internvl_lightning.evaluation.runner import predict

TOKENS = 4  # new tokens per answer: enough to exercise the KV cache, cheap on CPU


@pytest.mark.parametrize("benchmark", ["mmbench", "mmmu", "mathvista", "vqa"])
def test_evaluate_end_to_end(tiny_vlm_dir, bench_files, tmp_path, benchmark):
    circular = benchmark == "mmbench"
    result = evaluate(
        tiny_vlm_dir, benchmark, bench_files[benchmark], batch_size=3, max_new_tokens=TOKENS,
        circular=circular, out_dir=tmp_path, baseline="8b",
    )  # fmt: skip
    expected = {"mmbench": 11, "mmmu": 3, "mathvista": 4, "vqa": 3}[benchmark]  # mmbench: 4+3+4 copies
    assert result.num_samples == len(result.predictions) == expected
    assert result.num_scored == (3 if circular else expected)
    assert all(isinstance(p["prediction"], str) for p in result.predictions)
    assert 0.0 <= result.score <= 100.0 and (result.per_category or benchmark == "vqa")
    assert result.settings["max_num"] == 4 and result.settings["template"] == "internvl2_5"
    js, md = (
        tmp_path / f"{benchmark}_{bench_files[benchmark].stem}.json",
        tmp_path / f"{benchmark}_{bench_files[benchmark].stem}.md",
    )
    saved = json.loads(js.read_text())
    assert saved["score"] == result.score and len(saved["predictions"]) == expected
    text = md.read_text()
    assert "| benchmark | samples | scored | score | InternVL2.5-8B" in text and "| difference |" in text
    published = {"mmbench": None, "mmmu": 56.0, "mathvista": 64.4, "vqa": 79.1}[benchmark]
    if published is None:  # MMBench-dev-en v1.0: no table of the reports has a column for it
        assert "| n/a | n/a |" in text and "not published: no column for it in " in text
    else:
        assert f"| {published:.1f} | {result.score - published:+.1f} |" in text
        assert "arXiv:2412.05271" in text and "OpenGVLab/InternVL2_5-8B" in text
    assert (
        result.protocol["score"] and f"| {result.protocol['score']} |" in text
    )  # the rules behind the number
    if benchmark == "vqa":
        assert set(result.metrics) == {"vqa", "exact", "anls", "relaxed"}
        assert result.protocol["anls"].endswith("ANLS (DocVQA evaluation script, threshold 0.5)")


def test_batched_equals_one_by_one(tiny_vlm_dir, bench_files):
    """Left padding + concatenated tiles of different counts give the same answers as batch 1."""
    from internvl_lightning.model.load import load_vlm_and_tokenizer as resolve_model

    model, tok = resolve_model(tiny_vlm_dir)
    settings = read_settings(tiny_vlm_dir, model)
    samples = load_samples(get_benchmark("vqa"), bench_files["vqa"])
    samples += load_samples(get_benchmark("mmmu"), bench_files["mmmu"])
    requests = [s.request for s in samples]
    batched = generate_batch(model, tok, requests, settings, max_new_tokens=TOKENS)
    single = [generate_batch(model, tok, [r], settings, max_new_tokens=TOKENS)[0] for r in requests]
    assert batched == single


def test_model_object_and_explicit_rank(tiny_vlm_dir, tiny_components, bench_files):
    from internvl_lightning.model.load import load_vlm_and_tokenizer as resolve_model

    model, _ = resolve_model(tiny_vlm_dir)
    result = evaluate(
        model, "vqa", bench_files["vqa"], tokenizer=str(tiny_vlm_dir), limit=2, max_new_tokens=TOKENS
    )
    assert result.num_samples == 2 and result.baseline is None  # tiny: no published size near it
    assert result.settings["max_num"] == 6  # no training record beside a bare model object
    samples = load_samples(get_benchmark("vqa"), bench_files["vqa"])
    answers = predict(
        model, result_tok(tiny_vlm_dir), samples, read_settings(None, model), 2, TOKENS, rank=1, world_size=2
    )
    assert answers[0] is None and answers[2] is None and isinstance(answers[1], str)


def test_settings_from_original_layout_config(tiny_vlm_dir, tmp_path):
    from internvl_lightning.model.load import load_vlm_and_tokenizer as resolve_model

    model, _ = resolve_model(tiny_vlm_dir)
    (tmp_path / "config.json").write_text(json.dumps({"template": "Hermes-2", "max_dynamic_patch": 2}))
    s = read_settings(tmp_path, model)
    assert (s.template, s.max_num, s.image_size, s.tokens_per_tile) == ("Hermes-2", 2, 64, 16)
    assert read_settings(tmp_path, model, max_num=8, template="internvl2_5").max_num == 8


def result_tok(tiny_vlm_dir):
    from internvl_lightning.tokenizer import load_tokenizer

    return load_tokenizer(tiny_vlm_dir)


def test_cli(tiny_vlm_dir, bench_files, tmp_path, capsys):
    argv = ["evaluate", "--checkpoint", str(tiny_vlm_dir), "--benchmark", "mmbench", "--data", str(bench_files["mmbench"]),
            "--limit", "2", "--max_new_tokens", str(TOKENS), "--out_dir", str(tmp_path), "--baseline", "2b",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "InternVL2.5-2B (MMBench-dev-en v1.0)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "mmbench_mmbench_dev_en.json").read_text())
    # Circular by default: 2 questions asked as 4 + 3 rotated copies, scored as 2.
    assert saved["num_samples"] == 7 and saved["num_scored"] == 2
    assert saved["settings"]["model"] == str(tiny_vlm_dir) and saved["settings"]["circular"] is True


def test_baselines():
    assert guess_model(938_193_024) == "internvl2.5-1b" and guess_model(8.1e9) == "internvl2.5-8b"
    assert guess_model(250_000) is None
    assert lookup("8B", "mmmu")["score"] == 56.0 and lookup("internvl2.5-2b", "mathvista")["score"] == 51.3
    assert lookup("8b", "infovqa") == {
        "model": "InternVL2.5-8B",
        "benchmark": "InfoVQA test",
        "score": 77.6,
        "source": lookup("8b", "mmmu")["source"],
    }
    assert lookup("4b", "mmmu")["score"] == 52.3 and "Table 6" in lookup("4b", "mmmu")["source"]
    gap = lookup("4b", "mmbench_dev_en_v11")  # no table publishes it: a gap, said so, not a guess
    assert gap["score"] is None and gap["source"].startswith("not published: no column for it in ")
    assert "paper-2.5-t9" in gap["source"]  # the tables that were read, named
    assert lookup("InternVL3.5-8B", "mmbench_dev_en_v11")["model"] == "InternVL3.5-8B"
    assert baseline_key("vqa", "data/docvqa_val.jsonl") == "docvqa" and baseline_key("vqa", "x.jsonl") is None
    assert baseline_key("mmbench", "MMBench_DEV_EN_V11.tsv") == "mmbench_dev_en_v11"
    assert baseline_key("mmbench", "mmbench_test_cn_20231003.tsv") == "mmbench_test_cn_v10"
    assert baseline_key("mmbench", "CCBench_legacy.tsv") == "ccbench"
    assert baseline_key("mmbench", "my_questions.tsv") is None
    with pytest.raises(ValueError, match="unknown baseline model '3b'"):
        lookup("3b", "mmmu")


def test_every_published_number_names_its_source():
    from internvl_lightning.evaluation.baselines import table

    t = table()
    presets = {"internvl3-1b", "internvl3-2b", "internvl3-8b", "internvl3.5-1b", "internvl3.5-2b"}
    assert presets | {"internvl3.5-4b", "internvl3.5-8b", "internvl2.5-78b"} <= set(t["models"])
    for entry in t["models"].values():
        for key, found in entry["scores"].items():
            assert key in t["benchmarks"] and found["source"] in t["sources"]
            assert 0 < found["score"] <= 100


def test_a_new_benchmark_is_one_registry_entry(tiny_vlm_dir, tmp_path, monkeypatch, capsys):
    """docs/ARCHITECTURE.md, "add a benchmark": one Benchmark subclass in BENCHMARKS; `evaluate`,
    its reports and the evaluate command take it by name."""
    from internvl_lightning.evaluation import BENCHMARKS
    from internvl_lightning.evaluation.common import Benchmark, Sample
    from internvl_lightning.evaluation.generate import Request

    class Echo(Benchmark):
        name = "echo"
        default_max_new_tokens = 2

        def load(self, path, circular=False):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            return [Sample(str(r["id"]), Request(r["question"]), r["answer"]) for r in rows]

        def judge(self, sample, prediction):
            return float(sample.answer in prediction), prediction

    data = tmp_path / "echo.jsonl"
    data.write_text(
        "\n".join(json.dumps({"id": i, "question": f"Say {w}.", "answer": w}) for i, w in enumerate("ab"))
    )
    with pytest.raises(ValueError, match="unknown benchmark 'echo'"):
        evaluate(tiny_vlm_dir, "echo", data)
    monkeypatch.setitem(BENCHMARKS, "echo", Echo)
    result = evaluate(tiny_vlm_dir, "echo", data, out_dir=tmp_path / "out", baseline="none")
    assert result.num_samples == 2 and [p["id"] for p in result.predictions] == ["0", "1"]
    assert list((tmp_path / "out").glob("echo_*.json"))
    argv = [
        "evaluate",
        "--checkpoint",
        str(tiny_vlm_dir),
        "--benchmark",
        "echo",
        "--data",
        str(data),
        "--baseline",
        "none",
    ]
    assert main(argv) == 0 and "echo" in capsys.readouterr().out


def test_reports_name_the_protocol_and_write_the_submission(tiny_vlm_dir, tmp_path):
    """Every number carries its protocol; an MMBench test file (no answers) yields the upload .xlsx."""
    from internvl_lightning.evaluation.submission import read_xlsx
    from tests.helpers.evalgen import write_mmbench

    data = write_mmbench(tmp_path / "MMBench_TEST_EN_V11.tsv", n=2, drop="answer")
    result = evaluate(
        tiny_vlm_dir, "mmbench", data, max_new_tokens=2, out_dir=tmp_path / "out", baseline="none"
    )
    assert result.num_samples == 7 and result.num_scored == 0
    assert result.protocol["score"].startswith("MMBench-test-en v1.1: no answers")
    table = read_xlsx(result.submission)
    assert table[0][:2] == ["index", "question"] and len(table) == 8
    assert [row[table[0].index("prediction")] for row in table[1:]] == [
        p["prediction"] for p in result.predictions
    ]
    md = (tmp_path / "out" / "mmbench_MMBench_TEST_EN_V11.md").read_text()
    assert "| protocol |" in md and "MMBench_TEST_EN_V11_submission.xlsx" in md
