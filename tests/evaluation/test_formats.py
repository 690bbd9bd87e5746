"""Each benchmark's distributed file layout read as distributed, and bad rows named (no model)."""

from __future__ import annotations

import base64
import math

import pytest

from internvl_lightning.evaluation import get_benchmark, load_samples
from internvl_lightning.evaluation.generate import _decode
from internvl_lightning.evaluation.mmbench import PROMPT_EN
from internvl_lightning.evaluation.submission import read_xlsx
from tests.helpers.evalgen import (
    RGB,
    mmbench_official_rows,
    mmbench_rows,
    mmmu_parquet_image,
    mmmu_rows,
    write_mathvista,
    write_mathvista_parquet,
    write_mmbench,
    write_mmmu_parquet,
    write_tsv,
)

# --- MMBench TSV ------------------------------------------------------------------------------


def test_mmbench_official_dev_layout(tmp_path):
    """Hint, 2 to 9 options, rotated copies holding the original's index as their image."""
    path = write_tsv(tmp_path / "MMBench_DEV_EN_V11.tsv", mmbench_official_rows())
    bench = get_benchmark("mmbench")
    samples = load_samples(bench, path)
    assert [(s.id, s.group) for s in samples] == [
        ("0", "0"), ("1", "1"), ("2", "2"), ("1000000", "0"), ("2000000", "0"),
    ]  # fmt: skip
    first, yes_no, nine = samples[:3]
    assert first.request.text == (
        "<image>\nThe picture is a flat colour.\nWhich colour is shown?\nA. red\nB. green\nC. blue\n"
        + PROMPT_EN
    )
    assert yes_no.meta["options"] == {"A": "yes", "B": "no"}
    assert list(nine.meta["options"]) == list("ABCDEFGHI") and nine.answer == "E"
    assert "\nI. orange\n" in nine.request.text
    assert bench.judge(nine, "I")[1] == "I" and bench.judge(nine, "E")[0] == 1.0
    # The copies reuse the original's bytes (decoded once) and move the answer with the text.
    assert samples[3].request.images[0][0] is first.request.images[0][0]
    assert _decode(samples[4].request.images[0]).getpixel((0, 0)) == RGB["red"]
    assert [s.meta["options"][s.answer] for s in (first, samples[3], samples[4])] == ["red"] * 3
    judged = [bench.judge(s, p) for s, p in zip(samples, ["A", "B", "E", "C", "A"])]
    summary = bench.summarize(samples, judged, circular=True)
    assert summary.num_scored == 3 and summary.score == pytest.approx(200 / 3)  # question 0: a copy wrong
    assert summary.metrics["per_copy_accuracy"] == pytest.approx(80.0)


def test_mmbench_official_test_layout_gives_the_upload_file(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in mmbench_official_rows()]
    path = write_tsv(tmp_path / "MMBench_TEST_EN_V11.tsv", rows)
    bench = get_benchmark("mmbench")
    samples = load_samples(bench, path)
    out = bench.write_submission(tmp_path, "t", samples, ["A", "B", "C", "D", "E"])
    table = read_xlsx(out)
    assert table[0] == ["index", "question", *"ABCDEFGHI", "prediction", "category", "l2-category"]
    assert [row[0] for row in table[1:]] == ["0", "1", "2", "1000000", "2000000"]
    assert table[2][:4] == ["1", "Is the picture red?", "yes", "no"] and table[2][11] == "B"


def _mmbench_error(tmp_path, rows, name="bad.tsv") -> str:
    with pytest.raises(ValueError) as info:
        load_samples(get_benchmark("mmbench"), write_tsv(tmp_path / name, rows))
    return str(info.value)


def test_mmbench_answer_without_option(tmp_path):
    rows = mmbench_rows(4)
    rows[3]["answer"] = "D"  # row 4 has options A-C only
    message = _mmbench_error(tmp_path, rows)
    assert message.endswith("bad.tsv row 4 (index 3): answer 'D' is not one of its options (A, B, C)")


def test_mmbench_image_not_base64(tmp_path):
    rows = mmbench_rows(3)
    rows[2]["image"] = "data:image/png;" + rows[2]["image"]  # a data URL, not a base64 cell
    message = _mmbench_error(tmp_path, rows)
    assert "bad.tsv row 3 (index 2): image cell is not base64 ('data:image/png;" in message


def test_mmbench_image_cell_naming_no_image(tmp_path):
    rows = mmbench_official_rows()
    rows[4]["image"] = "7"
    message = _mmbench_error(tmp_path, rows)
    assert message.endswith("bad.tsv row 5 (index 2000000): image cell '7' names no row holding an image")


def test_mmbench_missing_required_column(tmp_path):
    path = write_mmbench(tmp_path / "noimg.tsv", drop="image")
    with pytest.raises(ValueError, match=r"noimg\.tsv: missing column\(s\) 'image'; found \['A', 'B'"):
        load_samples(get_benchmark("mmbench"), path)


def test_mmbench_base64_with_line_breaks_is_read(tmp_path):
    rows = mmbench_rows(1)
    cell = rows[0]["image"]
    rows[0]["image"] = "\n".join(cell[i : i + 76] for i in range(0, len(cell), 76))  # MIME-style lines
    samples = load_samples(get_benchmark("mmbench"), write_tsv(tmp_path / "lines.tsv", rows), circular=False)
    assert samples[0].request.images[0][0] == base64.b64decode(cell)


# --- MMMU parquet -------------------------------------------------------------------------------


def test_mmmu_parquet_list_answers_and_image_options(tmp_path):
    pytest.importorskip("pyarrow")
    rows = mmmu_rows(mmmu_parquet_image)
    rows[2]["answer"] = "['3', '3.0', 'three']"  # an open question with several accepted answers
    rows[1]["question"] = "Which picture is brighter?"  # options are the only image tags
    bench = get_benchmark("mmmu")
    _, two, open_q = load_samples(bench, write_mmmu_parquet(tmp_path / "validation-0.parquet", rows))
    assert two.request.text == (
        "Which picture is brighter?\nA. <image>\nB. <image>\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert [_decode(i).getpixel((0, 0)) for i in two.request.images] == [RGB["blue"], RGB["yellow"]]
    assert two.meta["options"] == {"A": "<image 1>", "B": "<image 2>"}
    assert bench.judge(two, "B")[0] == 1.0
    assert bench.judge(open_q, "It is three.")[0] == 1.0 and bench.judge(open_q, "3.0")[0] == 1.0
    assert bench.judge(open_q, "four")[0] == 0.0


def test_mmmu_parquet_tag_without_image(tmp_path):
    pytest.importorskip("pyarrow")
    rows = mmmu_rows(mmmu_parquet_image)
    rows[1]["options"] = str(["<image 1>", "<image 4>"])
    path = write_mmmu_parquet(tmp_path / "validation-0.parquet", rows)
    with pytest.raises(ValueError) as info:
        load_samples(get_benchmark("mmmu"), path)
    assert str(info.value) == (
        f"{path} row 2 (id validation_Clinical_Medicine_2): refers to <image 4> but it has no image_4"
    )


def test_mmmu_parquet_image_bytes_not_an_image(tmp_path):
    pytest.importorskip("pyarrow")
    rows = mmmu_rows(mmmu_parquet_image)
    rows[0]["image_1"] = {"bytes": b"GIF89a broken", "path": "x.gif"}
    path = write_mmmu_parquet(tmp_path / "validation-0.parquet", rows)
    with pytest.raises(ValueError, match=r"row 1 \(id validation_Art_1\) image_1: not an image Pillow"):
        load_samples(get_benchmark("mmmu"), path)


# --- MathVista JSON and parquet -----------------------------------------------------------------


def test_mathvista_parquet_reads_as_the_json(tmp_path):
    """decoded_image bytes instead of the path, NaN precision for null, choices null or a list."""
    pytest.importorskip("pyarrow")
    bench = get_benchmark("mathvista")
    parquet = write_mathvista_parquet(tmp_path / "pq" / "testmini-0.parquet")
    from_parquet = load_samples(bench, parquet)
    from_json = load_samples(bench, write_mathvista(tmp_path / "json"))
    for a, b in zip(from_json, from_parquet, strict=True):
        assert (a.id, a.request.text, a.answer, a.meta, a.categories) == (
            b.id, b.request.text, b.answer, b.meta, b.categories,
        )  # fmt: skip
        assert _decode(a.request.images[0]).getpixel((0, 0)) == _decode(b.request.images[0]).getpixel((0, 0))
    assert isinstance(from_parquet[1].request.images[0][0], bytes)  # no image file beside the parquet
    assert from_parquet[1].meta["precision"] is None and from_parquet[2].meta["precision"] == 1.0
    judged = [bench.judge(s, p) for s, p in zip(from_parquet, ["(B) green", "3", "3.54", "[1, 2, 3]"])]
    assert [score for score, _ in judged] == [1.0, 1.0, 1.0, 1.0]  # 3.54 at precision 1 is 3.5


def _rewrite_parquet(path, edit) -> None:
    """Apply ``edit`` to the rows of a parquet file, keeping its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)


def test_mathvista_parquet_without_query_builds_it_from_nan_precision(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = write_mathvista_parquet(tmp_path / "testmini.parquet")
    assert math.isnan(pq.read_table(parquet).to_pylist()[1]["precision"])  # the layout holds a NaN
    _rewrite_parquet(parquet, lambda rows: [r.update(query=None) for r in rows])
    integer, one_place = load_samples(get_benchmark("mathvista"), parquet)[1:3]
    assert integer.request.text == (
        "Hint: Please answer the question requiring an integer answer and provide the final value, "
        "e.g., 1, 2, 3, at the end.\nQuestion: question 2?"
    )
    assert one_place.request.text.startswith(
        "Hint: Please answer the question requiring a floating-point number with one decimal place"
    )


def test_mathvista_row_without_any_image(tmp_path):
    pytest.importorskip("pyarrow")
    parquet = write_mathvista_parquet(tmp_path / "testmini.parquet")
    _rewrite_parquet(parquet, lambda rows: rows[2].update(decoded_image=None, image=None))
    with pytest.raises(ValueError, match=r"testmini\.parquet row 3 \(pid 3\): no usable image"):
        load_samples(get_benchmark("mathvista"), parquet)
