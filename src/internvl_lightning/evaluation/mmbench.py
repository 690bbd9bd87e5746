"""MMBench (and CCBench): TSV with base64 images, options A..E, accuracy, circular evaluation.

Circular evaluation asks every question once per rotation of its options (n options -> n
copies, the copy k at index ``index + k * 1_000_000`` as in the official files) and counts it
correct only if every copy is. Official circular dev files already contain the copies (index
>= 1e6); they are used as they are and grouped by ``index % 1_000_000``.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

from ..constants import IMAGE_PLACEHOLDER
from .common import Benchmark, Sample, Summary, blank, check_columns, mean_summary, read_records
from .extract import extract_choice
from .generate import Request

OPTION_LETTERS = "ABCDE"  # MMBench files have at most five option columns
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

    def load(self, path: Path, circular: bool = False) -> list[Sample]:
        rows = read_records(path)
        check_columns(rows, ("index", "question", "image", "answer"), path)
        # Some option columns (E) are absent from a file altogether; those that exist may be blank.
        images: dict[str, str] = {}
        for row in rows:
            if not blank(row["image"]) and len(row["image"]) > 64:
                images[str(row["index"])] = row["image"]
        indices = [_index(row, n, path) for n, row in enumerate(rows)]
        pre_rotated = any(i >= COPY_OFFSET for i in indices)
        samples = []
        for n, (row, index) in enumerate(zip(rows, indices)):
            if pre_rotated and not circular and index >= COPY_OFFSET:
                continue  # the vanilla protocol scores only the original questions
            samples += self._row_samples(row, n, index, path, images, circular and not pre_rotated)
        return samples

    def _row_samples(
        self, row: dict, n: int, index: int, path: Path, images: dict[str, str], rotate_here: bool
    ) -> list[Sample]:
        where = f"{path} row {n + 1} (index {index})"
        options = {k: str(row[k]).strip() for k in OPTION_LETTERS if k in row and not blank(row[k])}
        if len(options) < 2:
            raise ValueError(f"{where}: fewer than two options")
        answer = str(row["answer"]).strip()
        # Official files store the image once; copies and repeats point at it by index (a short cell).
        cell = row["image"]
        if blank(cell) or len(cell) <= 64:
            cell = images.get(str(cell).strip() if not blank(cell) else "", "") or images.get(
                str(index % COPY_OFFSET), ""
            )
        try:
            raw = base64.b64decode(cell, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{where}: image is not valid base64: {e}") from e
        if not raw:
            raise ValueError(f"{where}: empty image")
        hint = None if blank(row.get("hint")) else str(row["hint"]).strip()
        question = str(row["question"]).strip()
        instruction = PROMPT_CN if _is_chinese(question) else PROMPT_EN
        cats = {k: str(row[k]) for k in ("category", "l2-category") if k in row and not blank(row[k])}
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
                    meta={"options": opts},
                )
            )
        return out

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        letter = extract_choice(prediction, sample.meta["options"])
        return float(letter == sample.answer), letter

    def summarize(self, samples: list[Sample], judged: list[tuple[float, Any]], circular: bool) -> Summary:
        summary = mean_summary(samples, [sc for sc, _ in judged], by_group=circular)
        if circular:  # also report the plain per-copy accuracy
            summary.metrics["per_copy_accuracy"] = mean_summary(samples, [sc for sc, _ in judged]).score
        return summary
