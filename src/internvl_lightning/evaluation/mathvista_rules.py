"""MathVista scoring as ``evaluation/extract_answer.py`` and ``calculate_score.py`` decide it.

Extraction: the official rules first (an empty response gives ""; a multiple-choice response that
is one of the choices gives itself; an integer / float answer type takes a response that Python's
``int`` / ``float`` reads whole; 'The answer is "X".' gives X). Where those fail the official
pipeline asks a GPT judge; we never do: :func:`rule_extract` stands in (rule-based, not official).

Normalisation (``normalize_extracted_answer``): multiple choice takes the first "(x)" letter, maps
a letter A.. to its choice, and otherwise the choice nearest by Levenshtein distance (the first
on ties, case-sensitive; an empty extraction too); integer is ``str(int(float(x)))``; float is
``str(round(float(x), int(precision)))``; list is ``str(x)``. A failure gives None. The result
must equal the answer string exactly (``safe_equal``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .extract import LETTERS, extract_choice, extract_number, parse_list
from .metrics import levenshtein

_QUICK = re.compile(r'The answer is "(.*)"\.')
_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")

HINTS = {
    "multi_choice": "Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
    "at the end.",
    "integer": "Please answer the question requiring an integer answer and provide the final value, "
    "e.g., 1, 2, 3, at the end.",
    "float1": "Please answer the question requiring a floating-point number with one decimal place and "
    "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    "float2": "Please answer the question requiring a floating-point number with two decimal places and "
    "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Please answer the question requiring a Python list as an answer and provide the final list, "
    "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def build_query(problem: dict[str, Any]) -> str:
    """The zero-shot query of the released data (``query``): hint, question (+ unit), choices."""
    kind = "multi_choice" if problem.get("question_type") == "multi_choice" else problem.get("answer_type")
    if kind == "float":
        kind = f"float{int(problem['precision'])}" if problem.get("precision") in (1, 2, 1.0, 2.0) else None
    lines = [f"Hint: {HINTS[kind]}"] if kind in HINTS else []
    unit = problem.get("unit")
    lines.append(f"Question: {problem['question']}" + (f" (Unit: {unit})" if unit else ""))
    choices = problem.get("choices") or []
    if choices:
        lines += ["Choices:"] + [f"({LETTERS[i]}) {c}" for i, c in enumerate(choices)]
    return "\n".join(lines).strip()


def official_extract(response: str, problem: dict[str, Any]) -> str | None:
    """The extraction the official rules give, or None where they hand over to the judge."""
    if response == "":
        return ""
    choices = problem.get("choices") or []
    if problem["question_type"] == "multi_choice" and response in choices:
        return response
    kind = problem["answer_type"]
    for reader, wanted in ((int, "integer"), (float, "float")):
        if kind == wanted:
            try:
                return str(reader(response))
            except (ValueError, OverflowError):
                pass
    found = _QUICK.search(response)
    return found.group(1) if found else None


def rule_extract(response: str, problem: dict[str, Any]) -> str:
    """Our stand-in for the judge step: the chosen letter, the final number, the last list."""
    choices = problem.get("choices") or []
    if problem["question_type"] == "multi_choice" and choices:
        letter = extract_choice(response, [str(c) for c in choices])
        return letter if letter is not None else response
    kind = problem["answer_type"]
    if kind in ("integer", "float"):
        value = extract_number(response)
        return "" if value is None else repr(value)
    if kind == "list":
        items = parse_list(response)
        return response if items is None else "[" + ", ".join(_item(i) for i in items) + "]"
    return response.strip()


def _item(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def extract(response: str, problem: dict[str, Any]) -> tuple[str, bool]:
    """(extraction, whether the official rules gave it rather than our stand-in)."""
    found = official_extract(response, problem)
    return (found, True) if found is not None else (rule_extract(response, problem), False)


def nearest_choice(text: str, choices: Sequence[str]) -> str:
    """The choice with the smallest edit distance to ``text`` (the first on ties)."""
    distances = [levenshtein(text, c) for c in choices]
    return choices[distances.index(min(distances))]


def normalize(extraction: Any, problem: dict[str, Any]) -> str | None:
    """The extraction in the answer's form (``normalize_extracted_answer``), None when it has none."""
    if problem["question_type"] == "multi_choice":
        choices = list(problem.get("choices") or [])
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = _PAREN_LETTER.findall(text)
        if letters:
            text = letters[0].upper()
        if text in list(LETTERS[: len(choices)]):  # one whole letter, not a substring of "ABCD"
            return choices[LETTERS.index(text)]
        return nearest_choice(text, choices)
    kind = problem["answer_type"]
    try:
        if kind == "integer":
            return str(int(float(extraction)))
        if kind == "float":
            return str(round(float(extraction), int(problem["precision"])))
        if kind == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return str(extraction).strip()  # free-form text: the official code has no branch (it fails)


def correct(prediction: str | None, problem: dict[str, Any]) -> bool:
    """``safe_equal``: plain equality with the answer string.

    Free-form text answers have no official branch (the official code fails on them): there we
    compare case-insensitively, a final period ignored.
    """
    answer = str(problem["answer"])
    if (
        prediction is not None
        and problem["question_type"] != "multi_choice"
        and problem["answer_type"] == "text"
    ):
        return prediction.rstrip(".").strip().lower() == answer.strip().lower()
    return prediction == answer
