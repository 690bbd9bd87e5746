"""Benchmark loaders on files in the real layouts, prompts, circular grouping, bad input (no model)."""

from __future__ import annotations

import base64
import json

import pytest

from internvl_lightning.evaluation import get_benchmark, load_samples
from internvl_lightning.evaluation.common import mean_summary
from internvl_lightning.evaluation.generate import _decode
from internvl_lightning.evaluation.mmbench import PROMPT_EN, rotate
from tests.helpers.evalgen import (
    mmbench_rows,
    png_bytes,
    write_mathvista,
    write_mmbench,
    write_mmmu_json,
    write_mmmu_parquet,
    write_tsv,
    write_vqa,
)


def test_mmbench_prompt_and_options(tmp_path):
    path = write_mmbench(tmp_path / "mmbench_dev_en.tsv")
    samples = load_samples(get_benchmark("mmbench"), path, circular=False)
    assert [s.id for s in samples] == ["0", "1", "2", "3"]
    first, second = samples[0], samples[1]
    assert first.request.text == (
        "<image>\nWhat colour is the image?\nA. red\nB. green\nC. blue\nD. yellow\n" + PROMPT_EN
    )
    # Blank D and E are skipped; the hint goes first.
    assert second.request.text == (
        "<image>\nThe image has one colour.\nWhat colour is the image?\nA. red\nB. green\nC. blue\n"
        + PROMPT_EN
    )
    assert first.answer == "A" and second.answer == "B"
    assert first.categories == {"category": "color", "l2-category": "attribute"}
    assert _decode(first.request.images[0]).size == (40, 32)
    assert load_samples(get_benchmark("mmbench"), path, circular=False, limit=2)[-1].id == "1"
    # Circular is the default (as in VLMEvalKit): 2 questions, 4 + 3 rotated copies.
    assert [s.group for s in load_samples(get_benchmark("mmbench"), path, limit=2)] == ["0"] * 4 + ["1"] * 3


def test_rotate():
    opts = {"A": "red", "B": "green", "C": "blue"}
    assert rotate(opts, "B", 1) == ({"A": "green", "B": "blue", "C": "red"}, "A")
    assert rotate(opts, "B", 2) == ({"A": "blue", "B": "red", "C": "green"}, "C")


def test_mmbench_circular_copies_and_grouping(tmp_path):
    bench = get_benchmark("mmbench")
    samples = load_samples(bench, write_mmbench(tmp_path / "mmb.tsv"), circular=True)
    # 4 + 3 + 4 + 3 options -> 14 copies in 4 groups.
    assert len(samples) == 14 and len({s.group for s in samples}) == 4
    group0 = [s for s in samples if s.group == "0"]
    assert [s.id for s in group0] == ["0", "1000000", "2000000", "3000000"]
    for s in group0:  # the answer letter always points at "red"
        assert s.meta["options"][s.answer] == "red"
    # Group 0 all right, group 1 one copy wrong, groups 2 and 3 all wrong.
    scores = [1.0 if s.group == "0" or (s.group == "1" and s.id != "1") else 0.0 for s in samples]
    summary = bench.summarize(samples, [(sc, None) for sc in scores], circular=True)
    assert summary.num_scored == 4 and summary.score == pytest.approx(25.0)
    assert summary.per_category["category: color"] == pytest.approx(100 / 3)
    assert summary.metrics["per_copy_accuracy"] == pytest.approx(100 * 6 / 14)


def test_mmbench_pre_rotated_file(tmp_path):
    """Official circular files hold the copies (index + k * 1e6) with the image given once."""
    rows = mmbench_rows(2)
    copy = dict(rows[0], index=1_000_000, A="green", B="blue", C="yellow", D="red", answer="D", image="0")
    path = write_tsv(tmp_path / "circ.tsv", rows + [copy])
    bench = get_benchmark("mmbench")
    assert [s.id for s in load_samples(bench, path, circular=False)] == ["0", "1"]  # vanilla: originals only
    circ = load_samples(bench, path, circular=True)
    assert [(s.id, s.group) for s in circ] == [("0", "0"), ("1", "1"), ("1000000", "0")]
    assert circ[2].request.images[0][0] == circ[0].request.images[0][0]


def test_mmmu_json_and_parquet_agree(tmp_path):
    pytest.importorskip("pyarrow")
    bench = get_benchmark("mmmu")
    from_json = load_samples(bench, write_mmmu_json(tmp_path / "json"))
    from_parquet = load_samples(bench, write_mmmu_parquet(tmp_path / "pq" / "Art" / "validation-0.parquet"))
    for a, b in zip(from_json, from_parquet, strict=True):
        assert (a.id, a.request.text, a.answer, a.meta) == (b.id, b.request.text, b.answer, b.meta)
        assert [_decode(x).getpixel((0, 0)) for x in a.request.images] == [
            _decode(x).getpixel((0, 0)) for x in b.request.images
        ]
    mc, two, open_q = from_json
    assert mc.request.text.startswith("<image> What colour dominates this painting?\nA. red\nB. green")
    assert mc.categories == {"subject": "Art", "discipline": "Art and Design"}
    # Tags become placeholders in order of first mention, options included; a repeat stays text.
    assert two.request.text.count("<image>") == 2 and "A. <image 1>" in two.request.text
    assert "B. <image>" in two.request.text and len(two.request.images) == 2
    assert two.categories["discipline"] == "Health and Medicine"
    assert open_q.request.text.endswith("Answer the question using a single word or phrase.")
    assert len(open_q.request.images) == 2  # image_3 is shown although no tag mentions it
    assert bench.judge(mc, "The answer is (A).")[0] == 1.0
    assert bench.judge(open_q, "There are 3 shapes.")[0] == 1.0
    assert bench.judge(open_q, "4")[0] == 0.0


def test_mathvista_loader(tmp_path):
    bench = get_benchmark("mathvista")
    samples = load_samples(bench, write_mathvista(tmp_path / "mv"))
    assert [s.id for s in samples] == ["1", "2", "3", "4"]
    assert samples[0].request.text.endswith("(C) blue")
    assert samples[0].categories["question_type"] == "multi_choice"
    assert samples[2].categories == {
        "question_type": "free_form",
        "answer_type": "float",
        "task": "math word problem",
    }
    judged = [bench.judge(s, r) for s, r in zip(samples, ["B", "3", "I think it's 3.50", "[1, 2, 3]"])]
    assert [sc for sc, _ in judged] == [1.0, 1.0, 1.0, 1.0]
    summary = bench.summarize(samples, judged, circular=False)
    assert summary.score == 100.0 and summary.category_counts["question_type: free_form"] == 3


def test_vqa_loader(tmp_path):
    bench = get_benchmark("vqa", metric="vqa")
    samples = load_samples(bench, write_vqa(tmp_path / "vqa"))
    assert [s.id for s in samples] == ["100", "101", "102"]
    assert samples[0].request.text == (
        "<image>\nWhat is shown in picture 0?\nAnswer the question using a single word or phrase."
    )
    assert samples[1].answer == "two"
    score, all_metrics = bench.judge(samples[0], "Two")
    # Official leave-one-out mean over ["2", "two", "2 dogs", "2", "3"] (the old scorer said 1.0).
    assert score == pytest.approx(0.8) and set(all_metrics) == {"vqa", "exact", "anls", "relaxed"}
    summary = bench.summarize(samples, [bench.judge(s, "2") for s in samples], circular=False)
    assert summary.score == pytest.approx((0.8 + 1 + 0.8) / 3 * 100)
    assert set(summary.metrics) == {"vqa", "exact", "anls", "relaxed"}
    assert set(bench.protocol("textvqa_val.jsonl", False, samples)) == {
        "score",
        "vqa",
        "exact",
        "anls",
        "relaxed",
    }


def test_summary_per_category():
    from internvl_lightning.evaluation.common import Sample
    from internvl_lightning.evaluation.generate import Request

    samples = [Sample(str(i), Request("q"), "A", categories={"c": "x" if i < 2 else "y"}) for i in range(4)]
    s = mean_summary(samples, [1.0, 0.0, 1.0, 1.0])
    assert s.score == 75.0 and s.per_category == {"c: x": 50.0, "c: y": 100.0}


# --- bad input -------------------------------------------------------------------------------


def test_missing_column_names_file_and_column(tmp_path):
    path = write_mmbench(tmp_path / "broken.tsv", drop="question")
    with pytest.raises(ValueError, match=r"broken\.tsv.*missing column.*'question'"):
        load_samples(get_benchmark("mmbench"), path)
    mv = tmp_path / "mv.json"
    mv.write_text(json.dumps([{"pid": "1", "question": "q", "answer": "1", "answer_type": "integer"}]))
    with pytest.raises(ValueError, match=r"mv\.json.*'question_type'.*'image or decoded_image'"):
        load_samples(get_benchmark("mathvista"), mv)


def test_undecodable_image_names_file_and_row(tmp_path):
    """A cell that is base64 but no image fails at load; an image whose header reads but whose
    pixels do not (a truncated PNG) fails when decoded; both name the file and the row."""
    with pytest.raises(ValueError, match=r"bad_img\.tsv row 3 \(index 2\): not an image Pillow can read"):
        load_samples(get_benchmark("mmbench"), write_mmbench(tmp_path / "bad_img.tsv", bad_image_row=2))
    rows = mmbench_rows(3)
    rows[1]["image"] = base64.b64encode(png_bytes("red", (200, 200))[:60]).decode()
    samples = load_samples(get_benchmark("mmbench"), write_tsv(tmp_path / "cut.tsv", rows), circular=False)
    with pytest.raises(ValueError, match=r"cut\.tsv row 2 \(index 1\): cannot decode image"):
        _decode(samples[1].request.images[0])


def test_unknown_benchmark_lists_known():
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; known: mathvista, mmbench, mmmu, vqa"):
        get_benchmark("mmlu")


def test_mmmu_missing_image_for_tag(tmp_path):
    path = write_mmmu_json(tmp_path / "m")
    records = json.loads(path.read_text())
    records[0]["image_1"] = None
    path.write_text(json.dumps(records))
    with pytest.raises(
        ValueError,
        match=r"mmmu_validation\.json row 1 \(id validation_Art_1\): refers to <image 1> but it has no image_1",
    ):
        load_samples(get_benchmark("mmmu"), path)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no benchmark file"):
        load_samples(get_benchmark("vqa"), "/nonexistent/dir/*.jsonl")


# --- official-protocol details of the loaders -----------------------------------------------


def test_mmbench_options_pandas_reads_as_missing(tmp_path):
    """VLMEvalKit and InternVL read the TSV with pandas: "None", "N/A", "NA", "nan", "" are no options."""
    rows = mmbench_rows(1)
    rows[0].update(A="None", B="Yes", C="N/A", D=" None", answer="B")
    samples = load_samples(get_benchmark("mmbench"), write_tsv(tmp_path / "na.tsv", rows), circular=False)
    assert samples[0].meta["options"] == {"B": "Yes", "D": " None"}  # with a space, pandas keeps it
    assert "A. None" not in samples[0].request.text and "D.  None" in samples[0].request.text
    assert get_benchmark("mmbench").judge(samples[0], "A")[1] is None  # no option A (the old scorer read A)


def test_mmbench_test_split_without_answers_gives_a_submission(tmp_path):
    from internvl_lightning.evaluation.submission import read_xlsx

    path = write_mmbench(tmp_path / "MMBench_TEST_EN_V11.tsv", drop="answer")
    bench = get_benchmark("mmbench")
    samples = load_samples(bench, path)  # circular: every rotation is asked
    assert len(samples) == 14 and all(s.answer is None for s in samples)
    judged = [bench.judge(s, "A") for s in samples]
    summary = bench.summarize(samples, judged, circular=True)
    assert summary.num_scored == 0 and summary.score == 0.0
    assert "MMBench-test-en v1.1: no answers" in bench.protocol(path, True, samples)["score"]
    out = bench.write_submission(tmp_path / "out", "mmbench_test", samples, ["A"] * len(samples))
    table = read_xlsx(out)
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "category", "l2-category"]
    assert len(table) == 15 and table[1][:2] == ["0", "What colour is the image?"]
    assert {row[0] for row in table[1:]} >= {"0", "1000000", "2000000", "3000000"}
    assert all(row[6] == "A" for row in table[1:])


def test_mmbench_protocol_names_split_and_rules(tmp_path):
    bench = get_benchmark("mmbench")
    samples = load_samples(bench, write_mmbench(tmp_path / "MMBench_DEV_EN_V11.tsv"))
    text = bench.protocol(tmp_path / "MMBench_DEV_EN_V11.tsv", True, samples)
    assert text["score"].startswith("MMBench-dev-en v1.1, circular, VLMEvalKit rules")
    assert "per_copy_accuracy" in text


def test_mmmu_no_decision_is_counted(tmp_path):
    bench = get_benchmark("mmmu")
    mc, two, open_q = load_samples(bench, write_mmmu_json(tmp_path / "m"))
    assert mc.meta["options"] == {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
    assert two.meta["options"] == {"A": "<image 1>", "B": "<image 2>"}  # as written, for the parser
    judged = [bench.judge(mc, "hmm"), bench.judge(two, "(B)"), bench.judge(open_q, "3")]
    assert judged[0] == (0.0, None)  # the official parser would guess a random letter here
    summary = bench.summarize([mc, two, open_q], judged, circular=False)
    assert summary.counts == {"no_decision": 1} and summary.score == pytest.approx(200 / 3)
    assert "no decision" in bench.protocol("x", False, [mc])["score"]


def test_mathvista_query_is_built_as_the_official_one(tmp_path):
    path = write_mathvista(tmp_path / "mv")
    records = json.loads(path.read_text())
    for record in records.values():
        del record["query"]
    records["3"]["unit"] = "cm"
    path.write_text(json.dumps(records))
    samples = load_samples(get_benchmark("mathvista"), path)
    assert samples[0].request.text.startswith(
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
        "at the end.\nQuestion: question 1?\nChoices:\n(A) red\n(B) green\n(C) blue"
    )
    assert "requiring a floating-point number with one decimal place" in samples[2].request.text
    assert "Question: question 3? (Unit: cm)" in samples[2].request.text
    assert "requiring a Python list" in samples[3].request.text
