"""MMMU (dev/validation): HF parquet files per subject or the same records as JSON.

Columns: ``id`` ("validation_Art_1"), ``question`` with ``<image k>`` tags, ``options`` (a Python
list written as a string), ``answer``, ``question_type`` ("multiple-choice" / "open"),
``image_1`` .. ``image_7`` (parquet: ``{"bytes": ..., "path": ...}``; JSON: a path relative to the
file). Each tag becomes an ``<image>`` placeholder where it first appears (question, then options);
images no tag mentions go before the question. Scores per subject and per discipline, with the
official parsing and matching (``mmmu_rules.py``). A gold answer written as a list literal
("['24/7', '3.429']") is the list of accepted answers, as in MMMU's ``answer_dict_val.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..constants import IMAGE_PLACEHOLDER
from . import protocols
from .common import Benchmark, Sample, Summary, blank, check_columns, image_ref, mean_summary, read_records
from .extract import LETTERS, literal_list
from .generate import Request
from .mmbench import PROMPT_EN, mc_prompt
from .mmmu_rules import choice_correct, open_candidates, open_correct, parse_choice

OPEN_PROMPT = "Answer the question using a single word or phrase."
MAX_IMAGES = 7
_TAG = re.compile(r"<image (\d+)>")

# MMMU's 30 subjects in its 6 disciplines (the grouping of the official results table).
DISCIPLINES = {
    "Art and Design": "Art Art_Theory Design Music",
    "Business": "Accounting Economics Finance Manage Marketing",
    "Science": "Biology Chemistry Geography Math Physics",
    "Health and Medicine": "Basic_Medical_Science Clinical_Medicine Diagnostics_and_Laboratory_Medicine "
    "Pharmacy Public_Health",
    "Humanities and Social Science": "History Literature Sociology Psychology",
    "Tech and Engineering": "Agriculture Architecture_and_Engineering Computer_Science Electronics "
    "Energy_and_Power Materials Mechanical_Engineering",
}
SUBJECT_TO_DISCIPLINE = {s: d for d, subjects in DISCIPLINES.items() for s in subjects.split()}


def subject_of(sample_id: str) -> str:
    """ "validation_Art_Theory_12" -> "Art_Theory"."""
    parts = sample_id.split("_")
    return "_".join(parts[1:-1]) if len(parts) >= 3 else sample_id


class MMMU(Benchmark):
    name = "mmmu"
    default_max_new_tokens = 64

    def load(self, path: Path, circular: bool = True) -> list[Sample]:
        rows = read_records(path)
        check_columns(rows, ("id", "question", "options", "answer", "question_type", "image_1"), path)
        return [self._sample(row, f"{path} row {n + 1}", path) for n, row in enumerate(rows)]

    def _sample(self, row: dict, row_name: str, path: Path) -> Sample:
        sid = str(row["id"])
        where = f"{row_name} (id {sid})"
        raw_options = row["options"]
        options = [] if blank(raw_options) else literal_list(raw_options)
        if options is None:
            raise ValueError(f"{where}: options {str(raw_options)[:60]!r} is not a list")
        mc = str(row["question_type"]).strip().lower() == "multiple-choice" and bool(options)
        used: list[int] = []

        def swap(m: re.Match) -> str:
            k = int(m.group(1))
            if k in used:
                return m.group(0)  # mentioned again: keep the text; the image is already shown
            if not 1 <= k <= MAX_IMAGES or blank(row.get(f"image_{k}")):
                raise ValueError(f"{where}: refers to <image {k}> but it has no image_{k}")
            used.append(k)
            return IMAGE_PLACEHOLDER

        question = _TAG.sub(swap, str(row["question"]).strip())
        texts = [_TAG.sub(swap, str(o).strip()) for o in options]
        if mc:
            text = mc_prompt(question, dict(zip(LETTERS, texts)), instruction=PROMPT_EN)
        else:
            text = question + "\n" + OPEN_PROMPT
        unmentioned = [
            k for k in range(1, MAX_IMAGES + 1) if k not in used and not blank(row.get(f"image_{k}"))
        ]
        # Unmentioned images get placeholders at the start (Request's rule), so they come first.
        refs = [
            image_ref(row[f"image_{k}"], path.parent, f"{where} image_{k}", self.image_root)
            for k in unmentioned + used
        ]
        subject = subject_of(sid)
        cats = {"subject": subject}
        if subject in SUBJECT_TO_DISCIPLINE:
            cats["discipline"] = SUBJECT_TO_DISCIPLINE[subject]
        return Sample(
            id=sid,
            request=Request(text, refs),
            answer=row["answer"],
            categories=cats,
            # The official parser matches the options as written (tags included), not as prompted.
            meta={
                "options": {LETTERS[i]: str(o) for i, o in enumerate(options)} if mc else {},
                "question_type": "multiple-choice" if mc else "open",
            },
        )

    def judge(self, sample: Sample, prediction: str) -> tuple[float, Any]:
        gold = gold_answers(sample.answer)
        if sample.meta["question_type"] == "multiple-choice":
            letter = parse_choice(prediction, sample.meta["options"])  # None: no decision
            return float(choice_correct(letter, gold)), letter
        candidates = open_candidates(prediction)
        return float(open_correct(candidates, gold)), candidates

    def summarize(self, samples: list[Sample], judged: list[tuple[float, Any]], circular: bool) -> Summary:
        summary = mean_summary(samples, [sc for sc, _ in judged])
        summary.counts["no_decision"] = sum(
            s.meta["question_type"] == "multiple-choice" and letter is None
            for s, (_, letter) in zip(samples, judged, strict=True)
        )
        return summary

    def protocol(self, data: str | Path, circular: bool, samples: list[Sample]) -> dict[str, str]:
        splits = sorted({s.id.split("_")[0] for s in samples})
        return {
            "score": f"MMMU {'/'.join(splits)}, {protocols.MMMU}; a multiple-choice response it "
            "cannot parse is no decision (the official draws a random letter) and counts wrong"
        }


def gold_answers(answer: Any) -> str | list[str]:
    """The gold answer, or the list of accepted ones when it is a list (or a list literal)."""
    items = literal_list(answer)
    return [str(a) for a in items] if items is not None else str(answer)
