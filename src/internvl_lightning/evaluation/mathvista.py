"""MathVista (testmini): JSON ``{pid: record}`` (or a list / parquet) with rule-based extraction.

Records: ``pid``, ``question``, ``image`` (path relative to the file) or ``decoded_image``
(parquet bytes), ``choices`` (list or null), ``answer``, ``answer_type`` ("integer", "float",
"text", "list"), ``precision``, ``question_type`` ("multi_choice", "free_form"), ``query`` (the
prompt with its hint; used as is when present). No judge model: multiple choice maps a letter or
an option text (else the closest option by edit distance, as MathVista's normaliser does) to the
option; integers must be whole; floats are rounded to ``precision``; lists compare item by item.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchmetrics.functional.text import edit_distance

from .common import Benchmark, Sample, blank, check_columns, image_ref, read_records
from .extract import LETTERS, extract_choice, extract_number, literal_list, parse_list, parse_number
from .generate import Request
from .metrics import exact_match


def closest_choice(response: str, choices: list[str]) -> str:
    """The option with the smallest character edit distance to the response."""
    r = response.strip().lower()
    dists = edit_distance([r] * len(choices), [c.lower() for c in choices], reduction="none")
    return choices[int(dists.argmin())]


def _precision(value: Any) -> int:
    return 1 if blank(value) else int(float(value))


def normalize_prediction(response: str, sample: Sample) -> Any:
    """The response as a comparable answer of the sample's type (None when there is none)."""
    m = sample.meta
    if m["choices"]:
        letter = extract_choice(response, m["choices"])
        if letter is not None:
            return m["choices"][LETTERS.index(letter)]
        return closest_choice(response, m["choices"]) if response.strip() else None
    kind = m["answer_type"]
    if kind == "integer":
        value = extract_number(response)
        return int(value) if value is not None and value == int(value) else None
    if kind == "float":
        value = extract_number(response)
        return None if value is None else round(value, _precision(m["precision"]))
    if kind == "list":
        return parse_list(response)
    return response.strip()


def gold_answer(sample: Sample) -> Any:
    """The sample's answer in the same form as :func:`normalize_prediction` gives."""
    m, answer = sample.meta, sample.answer
    if m["choices"]:
        return str(answer)
    kind = m["answer_type"]
    if kind == "integer":
        value = parse_number(str(answer))
        return None if value is None else int(value)
    if kind == "float":
        value = parse_number(str(answer))
        return None if value is None else round(value, _precision(m["precision"]))
    if kind == "list":
        items = literal_list(answer)
        return parse_list(str(answer)) if items is None else parse_list(str(list(items)))
    return str(answer)


class MathVista(Benchmark):
    name = "mathvista"
    default_max_new_tokens = 128

    def load(self, path: Path, circular: bool = False) -> list[Sample]:
        rows = read_records(path)
        required = ("pid", "question", "answer", "answer_type", "question_type")
        check_columns(rows, required, path, any_of=("image", "decoded_image"))
        return [self._sample(row, path) for row in rows]

    def _sample(self, row: dict, path: Path) -> Sample:
        pid = str(row["pid"])
        where = f"{path} (pid {pid})"
        choices = row.get("choices")
        choices = [] if blank(choices) else literal_list(choices)
        if choices is None:
            raise ValueError(f"{where}: choices {str(row['choices'])[:60]!r} is not a list")
        cell = row.get("decoded_image")
        if blank(cell) or (isinstance(cell, dict) and not (cell.get("bytes") or cell.get("path"))):
            cell = row.get("image")
        ref = image_ref(cell, path.parent, where, self.image_root)
        query = row.get("query")
        if blank(query):
            query = _prompt(str(row["question"]), [str(c) for c in choices])
        cats = {k: str(row[k]) for k in ("question_type", "answer_type") if not blank(row[k])}
        meta_info = row.get("metadata") or {}
        if isinstance(meta_info, dict) and not blank(meta_info.get("task")):
            cats["task"] = str(meta_info["task"])
        return Sample(
            id=pid,
            request=Request(str(query), [ref]),
            answer=row["answer"],
            categories=cats,
            meta={
                "choices": [str(c) for c in choices],
                "answer_type": str(row["answer_type"]),
                "precision": row.get("precision"),
            },
        )

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        extracted = normalize_prediction(prediction, sample)
        gold = gold_answer(sample)
        if extracted is None or gold is None:
            return 0.0, extracted
        if sample.meta["answer_type"] == "text" and not sample.meta["choices"]:
            return exact_match(str(extracted), str(gold)), extracted
        return float(extracted == gold), extracted


def _prompt(question: str, choices: list[str]) -> str:
    """A prompt for records without ``query``: the question, then lettered options if any."""
    if not choices:
        return question
    lines = [question, "Choices:"] + [f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."
