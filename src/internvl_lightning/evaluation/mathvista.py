"""MathVista (testmini): JSON ``{pid: record}`` (or a list / parquet), scored by the official rules.

Records: ``pid``, ``question``, ``image`` (path relative to the file) or ``decoded_image``
(parquet bytes), ``choices`` (list or null), ``unit``, ``answer``, ``answer_type`` ("integer",
"float", "text", "list"), ``precision``, ``question_type`` ("multi_choice", "free_form"),
``query`` (the official prompt with its hint; used as is, else built the same way). Extraction is
rule-based (the official rules, then ours where the official pipeline asks a GPT judge);
normalisation and equality are the official ones (``mathvista_rules.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import protocols
from .common import Benchmark, Sample, Summary, blank, check_columns, image_ref, mean_summary, read_records
from .extract import literal_list
from .generate import Request
from .mathvista_rules import build_query, correct, extract, normalize


def problem_of(sample: Sample) -> dict[str, Any]:
    """The fields the official scorer reads, from a sample."""
    return dict(sample.meta, answer=sample.answer)


class MathVista(Benchmark):
    name = "mathvista"
    default_max_new_tokens = 128

    def load(self, path: Path, circular: bool = True) -> list[Sample]:
        rows = read_records(path)
        required = ("pid", "question", "answer", "answer_type", "question_type")
        check_columns(rows, required, path, any_of=("image", "decoded_image"))
        return [self._sample(row, f"{path} row {n + 1}", path) for n, row in enumerate(rows)]

    def _sample(self, row: dict, row_name: str, path: Path) -> Sample:
        pid = str(row["pid"])
        where = f"{row_name} (pid {pid})"
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
            query = build_query(dict(row, choices=[str(c) for c in choices]))
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
                "question_type": str(row["question_type"]),
                "answer_type": str(row["answer_type"]),
                "precision": None if blank(row.get("precision")) else row["precision"],
            },
        )

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        problem = problem_of(sample)
        extraction, by_rule = extract(prediction, problem)
        normalized = normalize(extraction, problem)
        info = {"extraction": extraction, "official_rule": by_rule, "prediction": normalized}
        return float(correct(normalized, problem)), info

    def summarize(self, samples: list[Sample], judged: list[tuple[float, Any]], circular: bool) -> Summary:
        summary = mean_summary(samples, [sc for sc, _ in judged])
        summary.counts["extracted_by_our_rules"] = sum(not info["official_rule"] for _, info in judged)
        return summary

    def protocol(self, data: str | Path, circular: bool, samples: list[Sample]) -> dict[str, str]:
        return {"score": f"MathVista ({Path(str(data)).name}), {protocols.MATHVISTA}"}
