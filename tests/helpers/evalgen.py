"""Small benchmark files in the real layouts (MMBench TSV, MMMU JSON/parquet, MathVista JSON, VQA JSONL)."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from pathlib import Path

from PIL import Image

from . import IMAGES as ASSETS

COLORS = ["red", "green", "blue", "yellow", "purple"]
RGB = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20), "purple": (150, 40, 160)}  # fmt: skip


def png_bytes(color: str = "red", size: tuple[int, int] = (40, 32)) -> bytes:
    """A small one-colour PNG."""
    buf = io.BytesIO()
    Image.new("RGB", size, RGB[color]).save(buf, format="PNG")
    return buf.getvalue()


def asset_bytes(k: int) -> bytes:
    """JPEG bytes of tests/assets/images/image{k}.jpg (k = 1..5)."""
    return (ASSETS / f"image{k}.jpg").read_bytes()


def mmbench_rows(n: int = 4) -> list[dict]:
    """MMBench rows: colour questions with 3 or 4 options, the E column blank, some hints blank."""
    rows = []
    for i in range(n):
        color = COLORS[i % 4]
        opts = COLORS[:4] if i % 2 == 0 else COLORS[:3] + [""]
        rows.append(
            {
                "index": i,
                "question": "What colour is the image?",
                "hint": "The image has one colour." if i % 2 else "",
                "A": opts[0],
                "B": opts[1],
                "C": opts[2],
                "D": opts[3],
                "E": "",
                "answer": "ABCD"[opts.index(color)] if color in opts else "A",
                "category": "color" if i < 3 else "count",
                "l2-category": "attribute",
                "image": base64.b64encode(png_bytes(color) if i != 1 else asset_bytes(1)).decode(),
            }
        )
    return rows


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """Tab-separated with a header, as pandas' ``to_csv(sep="\\t")`` writes (blank = missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_mmbench(path: Path, n: int = 4, drop: str | None = None, bad_image_row: int | None = None) -> Path:
    rows = mmbench_rows(n)
    if bad_image_row is not None:
        rows[bad_image_row]["image"] = base64.b64encode(b"this is not an image at all" * 4).decode()
    if drop:
        rows = [{k: v for k, v in r.items() if k != drop} for r in rows]
    return write_tsv(path, rows)


def mmbench_official_rows() -> list[dict]:
    """Rows as the distributed MMBench dev TSV holds them: every column of the official file, a hint,
    2 to 9 options (letter columns absent from a row are blank), and the rotated copies of the
    first question (index + k * 1e6) whose image cell is the original's index."""
    header = {"index": 0, "question": "", "hint": "", **dict.fromkeys("ABCDEFGHI", ""), "answer": ""}
    header |= {"category": "", "image": "", "source": "", "l2-category": "", "comment": "", "split": "dev"}
    colours = [*COLORS, "black", "white", "grey", "orange"]
    specs = [  # (index, option texts, answer, hint, image)
        (0, ["red", "green", "blue"], "A", "The picture is a flat colour.", png_bytes("red")),
        (1, ["yes", "no"], "B", "", png_bytes("green")),
        (2, colours, "E", "", png_bytes("purple")),
        (1_000_000, ["green", "blue", "red"], "C", "The picture is a flat colour.", "0"),
        (2_000_000, ["blue", "red", "green"], "B", "The picture is a flat colour.", "0"),
    ]
    rows = []
    for index, texts, answer, hint, image in specs:
        row = dict(header, index=index, answer=answer, hint=hint, category="colour")
        row |= {"question": "Is the picture red?" if index == 1 else "Which colour is shown?"}
        row |= dict(zip("ABCDEFGHI", texts)) | {"l2-category": "attribute", "source": "synthetic"}
        row["image"] = image if isinstance(image, str) else base64.b64encode(image).decode()
        rows.append(row)
    return rows


def mmmu_rows(image_cell) -> list[dict]:
    """Three MMMU validation records: one-image MC, two-image MC with an image in the options, open.
    They carry the official files' other columns too (explanation, img_type, ...), unread."""
    base = {f"image_{k}": None for k in range(1, 8)}
    base |= {"explanation": "", "img_type": "['Photographs']", "topic_difficulty": "Easy", "subfield": "x"}
    return [
        dict(
            base,
            id="validation_Art_1",
            question="<image 1> What colour dominates this painting?",
            options=str(["red", "green", "blue", "yellow"]),
            answer="A",
            question_type="multiple-choice",
            image_1=image_cell(1, "red"),
        ),
        dict(
            base,
            id="validation_Clinical_Medicine_2",
            question="Which is brighter, <image 1> or the other picture?",
            options=str(["<image 1>", "<image 2>"]),
            answer="B",
            question_type="multiple-choice",
            image_1=image_cell(1, "blue"),
            image_2=image_cell(2, "yellow"),
        ),
        dict(
            base,
            id="validation_Math_3",
            question="How many shapes are in the image?",
            options="[]",
            answer="3",
            question_type="open",
            image_1=image_cell(1, "green"),
            image_3=image_cell(3, "purple"),  # mentioned by no tag: shown before the question
        ),
    ]


def write_mmmu_json(directory: Path) -> Path:
    """MMMU records as JSON with image paths relative to the file."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "images").mkdir(exist_ok=True)

    def cell(k: int, color: str) -> str:
        name = f"images/{color}_{k}.png"
        (directory / name).write_bytes(png_bytes(color))
        return name

    path = directory / "mmmu_validation.json"
    path.write_text(json.dumps(mmmu_rows(cell), indent=1))
    return path


def mmmu_parquet_image(k: int, color: str) -> dict:
    """An image cell as the HF parquet files store it."""
    return {"bytes": png_bytes(color), "path": f"{color}.png"}


def write_mmmu_parquet(path: Path, rows: list[dict] | None = None) -> Path:
    """MMMU records as the HF parquet files store them (every column a string but the image
    columns: {"bytes", "path"} or null); ``rows`` default to ``mmmu_rows``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = rows or mmmu_rows(mmmu_parquet_image)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    text = ("id", "question", "options", "explanation", "img_type", "answer", "topic_difficulty")
    fields = [(c, pa.string()) for c in (*text, "question_type", "subfield")]
    fields += [(f"image_{k}", image_type) for k in range(1, 8)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path)
    return path


def write_mathvista(directory: Path) -> Path:
    """A testmini.json-style object {pid: record} with images/ beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "images").mkdir(exist_ok=True)
    records = {}
    specs = [
        ("multi_choice", "text", None, ["red", "green", "blue"], "green", "green"),
        ("free_form", "integer", None, None, "3", "red"),
        ("free_form", "float", 1, None, "3.5", "blue"),
        ("free_form", "list", None, None, "[1, 2, 3]", "yellow"),
    ]
    for pid, (qtype, atype, precision, choices, answer, color) in enumerate(specs, 1):
        (directory / f"images/{pid}.png").write_bytes(png_bytes(color))
        query = f"Hint: Please answer the question and provide the final answer at the end.\nQuestion: question {pid}?"
        if choices:
            query += "\nChoices:\n" + "\n".join(f"({'ABC'[i]}) {c}" for i, c in enumerate(choices))
        records[str(pid)] = {
            "question": f"question {pid}?",
            "image": f"images/{pid}.png",
            "choices": choices,
            "unit": None,
            "precision": precision,
            "answer": answer,
            "question_type": qtype,
            "answer_type": atype,
            "pid": str(pid),
            "metadata": {"task": "math word problem" if pid % 2 else "figure question answering"},
            "query": query,
        }
    path = directory / "testmini.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def write_mathvista_parquet(path: Path) -> Path:
    """The records of ``write_mathvista`` as the HF parquet stores them: the image both as a path
    (``image``) and as ``decoded_image`` bytes, ``choices`` a list or null, ``precision`` a float
    (NaN where the JSON has null), ``metadata`` a struct."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scratch = path.parent / "scratch_json"
    records = json.loads(write_mathvista(scratch).read_text())
    rows = []
    for record in records.values():
        png = (scratch / record["image"]).read_bytes()
        precision = math.nan if record["precision"] is None else float(record["precision"])
        rows.append(dict(record, precision=precision, decoded_image={"bytes": png, "path": None}))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    text = ("pid", "question", "image", "unit", "answer", "question_type", "answer_type", "query")
    schema = pa.schema(
        [(c, pa.string()) for c in text]
        + [("decoded_image", image_type), ("choices", pa.list_(pa.string())), ("precision", pa.float64())]
        + [("metadata", pa.struct([("task", pa.string())]))]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def write_vqa(directory: Path, n: int = 3) -> Path:
    """InternVL-style VQA JSONL: question_id, image (relative path), question, answer(s)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        name = f"img_{i}.jpg"
        (directory / name).write_bytes(asset_bytes(i % 5 + 1))
        record = {"question_id": 100 + i, "image": name, "question": f"What is shown in picture {i}?"}
        if i % 2:
            record["answer"] = "two"
        else:
            record["answers"] = ["2", "two", "2 dogs", "2", "3"]
        lines.append(json.dumps(record))
    path = directory / "textvqa_val.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
