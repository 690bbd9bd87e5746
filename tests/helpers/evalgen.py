"""Small benchmark files in the real layouts (MMBench TSV, MMMU JSON/parquet, MathVista JSON, VQA JSONL)."""

from __future__ import annotations

import base64
import csv
import io
import json
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


def mmmu_rows(image_cell) -> list[dict]:
    """Three MMMU validation records: one-image MC, two-image MC with an image in the options, open."""
    base = {f"image_{k}": None for k in range(1, 8)}
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


def write_mmmu_parquet(path: Path) -> Path:
    """MMMU records as the HF parquet files store them (image columns: {"bytes", "path"} or null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = mmmu_rows(lambda k, color: {"bytes": png_bytes(color), "path": f"{color}.png"})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [(c, pa.string()) for c in ("id", "question", "options", "answer", "question_type")]
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
