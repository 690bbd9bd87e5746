"""MMBench answer matching as VLMEvalKit's exact-matching mode decides it (no judge model).

A prediction maps to an option letter in two steps (VLMEvalKit ``vlmeval/utils/matching_util.py``,
``can_infer`` = ``can_infer_option`` then ``can_infer_text``):

1. letters: punctuation ``.()[],:;!*#{}`` becomes space and the text is cut into words; a refusal
   phrase gives ``Z``; exactly one option letter among the words gives that letter, but only when
   it first appears among the last four words; no letter and a word ``Z`` gives ``Z``; failing
   that, "(correct) answer is X" (X in A-D, any case, no word boundary after it) gives X;
2. text: unless the prediction is over twice as long as all option texts together, the one option
   whose lowercased text is a substring of the lowercased prediction.

A question is right when the letter equals the answer; circularly, when every rotated copy is.
Cells pandas reads as missing ("None", "N/A", "NA", "nan", "", ...) are no options (VLMEvalKit
and InternVL load the TSV with ``pandas.read_csv``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

API_FAILURE = "Failed to obtain answer via API"
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
NO_ANSWER = "Z"  # VLMEvalKit's letter for "refused / no option"
_SPACE_OUT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_ANSWER_IS = re.compile(r"answer\s+is\s+\**([A-D])", re.IGNORECASE)  # "(correct) answer is **B**"
_LAST_WORDS = 4  # a lone letter counts only among the last four words

# pandas.read_csv's default missing-value strings (exact cell text, no stripping).
PANDAS_NA = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
     "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)  # fmt: skip


def missing(cell: object) -> bool:
    """True for what ``pandas.read_csv`` turns into NaN: None, NaN, or one of its NA strings."""
    if cell is None:
        return True
    if isinstance(cell, float):
        return math.isnan(cell)
    return isinstance(cell, str) and cell in PANDAS_NA


def letter_by_words(prediction: str, options: Mapping[str, str]) -> str | None:
    """Step 1: the option letter (or ``Z``) the words of ``prediction`` name, else None."""
    if API_FAILURE in prediction:
        return None
    if any(phrase in prediction for phrase in REFUSALS):
        return NO_ANSWER
    words = prediction.translate(_SPACE_OUT).split()
    named = [letter for letter in options if letter in words]
    if len(named) == 1:
        first = words.index(named[0])
        if first >= len(words) - _LAST_WORDS:
            return named[0]
    elif not named and NO_ANSWER in words:
        return NO_ANSWER
    found = _ANSWER_IS.search(prediction)
    if found and found.group(1).upper() in options:
        return found.group(1).upper()
    return None


def letter_by_text(prediction: str, options: Mapping[str, str]) -> str | None:
    """Step 2: the single option whose text occurs in ``prediction`` (case-insensitive), else None."""
    text = prediction.lower()
    if len(text) > 2 * sum(len(str(v)) for v in options.values()):
        return None
    hits = [letter for letter, option in options.items() if str(option).lower() in text]
    return hits[0] if len(hits) == 1 else None


def match_option(prediction: str, options: Mapping[str, str]) -> str | None:
    """The letter VLMEvalKit reads from ``prediction`` (``Z`` for a refusal), None when it reads none."""
    prediction = str(prediction)
    return letter_by_words(prediction, options) or letter_by_text(prediction, options)
