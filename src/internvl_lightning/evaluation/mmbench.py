"""MMBench (and CCBench): TSV with base64 images, options A, B, ..., scored as VLMEvalKit does.

Circular evaluation (the default, as in VLMEvalKit) counts a question right only if every
rotated copy of it is. Official files already hold the copies (index ``i + k * 1_000_000``), used
as they are and grouped by ``index % 1_000_000``; for a file without copies we make them (the
copy k with the options shifted by k). Answer matching: ``mmbench_rules.py``. A test file (no
``answer`` column) is not scored; ``write_submission`` writes the upload file for it.
Bad rows fail at load, naming the file and row: an answer letter with no option, an image cell
that is not base64 or not an image, a short image cell (a reference) naming no row with an image.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from ..constants import IMAGE_PLACEHOLDER
from . import protocols
from .common import (
    Benchmark,
    Sample,
    Summary,
    check_columns,
    check_image_bytes,
    decode_base64,
    mean_summary,
    read_records,
)
from .generate import Request
from .mmbench_rules import match_option, missing
from .submission import write_xlsx

OPTION_LETTERS = string.ascii_uppercase  # VLMEvalKit reads any letter column; MMBench uses A-D
IMAGE_REF_MAX = 64  # VLMEvalKit: an image cell this short is the index of the row holding the image
COPY_OFFSET = 1_000_000
PROMPT_EN = "Answer with the option's letter from the given choices directly."
PROMPT_CN = "请直接回答选项字母。"


def mc_prompt(
    question: str, options: dict[str, str], hint: str | None = None, instruction: str = PROMPT_EN
) -> str:
    """[hint + newline] + question + one "X. text" line per option + the instruction line."""
    text = (hint + "\n" if hint else "") + question
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    return text + "\n" + instruction


def _is_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _index(row: dict, n: int, path: Path) -> int:
    try:
        return int(float(row["index"]))
    except (TypeError, ValueError):
        raise ValueError(f"{path} row {n + 1}: index {row['index']!r} is not a number") from None


def rotate(options: dict[str, str], answer: str, k: int) -> tuple[dict[str, str], str]:
    """Options shifted by ``k`` (letters keep their order, texts move) and the answer's new letter."""
    letters, texts = list(options), list(options.values())
    n = len(texts)
    rotated = {letters[i]: texts[(i + k) % n] for i in range(n)}
    new_answer = letters[(letters.index(answer) - k) % n] if answer in options else answer
    return rotated, new_answer


class MMBench(Benchmark):
    name = "mmbench"
    default_max_new_tokens = 16

    def load(self, path: Path, circular: bool = True) -> list[Sample]:
        rows = read_records(path)
        check_columns(rows, ("index", "question", "image"), path)  # a test file has no answer
        # Some option columns (E) are absent from a file altogether; those that exist may be blank.
        images: dict[str, str] = {}
        for row in rows:
            if not missing(row["image"]) and len(row["image"]) > IMAGE_REF_MAX:
                images[str(row["index"]).strip()] = row["image"]
        indices = [_index(row, n, path) for n, row in enumerate(rows)]
        pre_rotated = any(i >= COPY_OFFSET for i in indices)
        samples: list[Sample] = []
        decoded: dict[str, bytes] = {}  # copies share their original's bytes
        for n, (row, index) in enumerate(zip(rows, indices)):
            if pre_rotated and not circular and index >= COPY_OFFSET:
                continue  # the vanilla protocol scores only the original questions
            where = f"{path} row {n + 1} (index {index})"
            raw = _image_bytes(row, index, images, decoded, where)
            samples += self._row_samples(row, index, where, raw, circular and not pre_rotated)
        return samples

    def _row_samples(self, row: dict, index: int, where: str, raw: bytes, rotate_here: bool) -> list[Sample]:
        options = option_cells(row)
        if len(options) < 2:
            raise ValueError(f"{where}: fewer than two options")
        answer = None if missing(row.get("answer")) else str(row["answer"]).strip()
        if answer is not None and answer not in options:
            raise ValueError(f"{where}: answer {answer!r} is not one of its options ({', '.join(options)})")
        hint = None if missing(row.get("hint")) else str(row["hint"]).strip()
        question = str(row["question"]).strip()
        instruction = PROMPT_CN if _is_chinese(question) else PROMPT_EN
        cats = {k: str(row[k]) for k in ("category", "l2-category") if k in row and not missing(row[k])}
        cells = {k: row[k] for k in SUBMISSION_EXTRA if k in row and not missing(row[k])}
        out = []
        for k in range(len(options) if rotate_here else 1):
            opts, ans = rotate(options, answer, k)
            text = IMAGE_PLACEHOLDER + "\n" + mc_prompt(question, opts, hint, instruction)
            out.append(
                Sample(
                    id=str(index + k * COPY_OFFSET),
                    request=Request(text, [(raw, where)]),
                    answer=ans,
                    group=str(index % COPY_OFFSET),
                    categories=cats,
                    meta={"options": opts, "question": str(row["question"]), "cells": cells},
                )
            )
        return out

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        letter = match_option(prediction, sample.meta["options"])
        return float(sample.answer is not None and letter == sample.answer), letter

    def summarize(self, samples: list[Sample], judged: list[tuple[float, Any]], circular: bool) -> Summary:
        if not any(s.answer is not None for s in samples):  # a test split: nothing to score
            return Summary(score=0.0, num_scored=0)
        scores = [sc for sc, _ in judged]
        summary = mean_summary(samples, scores, by_group=circular)
        if circular:  # the plain accuracy over every row (copies included) beside it
            summary.metrics["per_copy_accuracy"] = mean_summary(samples, scores).score
        summary.counts["unmatched"] = sum(letter is None for _, letter in judged)
        return summary

    def protocol(self, data: str | Path, circular: bool, samples: list[Sample]) -> dict[str, str]:
        split = protocols.mmbench_split(Path(str(data)).name)
        if not any(s.answer is not None for s in samples):
            return {"score": f"{split}: no answers in the file, not scored (see the submission file)"}
        mode = "circular" if circular else "vanilla (original rows)"
        text = {"score": f"{split}, {mode}, {protocols.VLMEVALKIT}"}
        if circular:
            text["per_copy_accuracy"] = f"{split}, every row, {protocols.VLMEVALKIT}"
        return text

    def write_submission(
        self, out_dir: Path, stem: str, samples: list[Sample], predictions: list[str]
    ) -> Path:
        """The MMBench upload file: an .xlsx with index, question, the options, prediction,
        category and l2-category, one row per question asked (circular copies included)."""
        letters = [k for k in OPTION_LETTERS if any(k in s.meta["options"] for s in samples)]
        extra = [k for k in SUBMISSION_EXTRA if any(k in s.meta["cells"] for s in samples)]
        header = ["index", "question", *letters, "prediction", *extra]
        rows = [
            [int(s.id), s.meta["question"], *(s.meta["options"].get(k) for k in letters), p]
            + [s.meta["cells"].get(k) for k in extra]
            for s, p in zip(samples, predictions, strict=True)
        ]
        return write_xlsx(Path(out_dir) / f"{stem}_submission.xlsx", header, rows)


SUBMISSION_EXTRA = ("category", "l2-category", "answer")


def _image_bytes(
    row: dict, index: int, images: dict[str, str], decoded: dict[str, bytes], where: str
) -> bytes:
    """The image of a row. Official files store each image once; copies and repeats hold the
    index of the row with the image (a short cell), or nothing (then the original's index)."""
    cell = row["image"]
    if not missing(cell) and len(cell) > IMAGE_REF_MAX:
        key = str(row["index"]).strip()
    else:
        key = str(index % COPY_OFFSET) if missing(cell) else str(cell).strip()
        if key not in images:
            raise ValueError(f"{where}: image cell {cell!r} names no row holding an image")
    if key not in decoded:
        decoded[key] = check_image_bytes(decode_base64(images[key], where), where)
    return decoded[key]


def option_cells(row: dict) -> dict[str, str]:
    """The options of a row as VLMEvalKit reads them: every letter column, skipping cells pandas
    reads as missing."""
    return {k: str(row[k]) for k in OPTION_LETTERS if k in row and not missing(row[k])}
