"""MMMU response parsing and matching as the benchmark's own ``mmmu/utils/eval_utils.py`` decides.

Multiple choice (``parse_multi_choice_response``): the response, its ends stripped of
``, . ! ? ; : '`` (one mark after the other) and padded with a space, names the letters written
"(X)"; failing that, those written " X "; failing that, and only for a response of more than five
words, the options whose text it contains (case-insensitive). Several: the one mentioned last
(the first of them on a tie). None: the official code draws a random letter; we cannot match a
draw, so the question gets **no decision** (None, scored wrong and counted apart).

Open (``parse_open_response`` / ``eval_open``): the lowercased response is cut at newlines; in each
piece the shortest tail after an indicator ("could be ", "so ", "is ", "thus ", "therefore ",
"final ", "answer ", "result ", and "=" in the last piece) is a candidate; with none, the whole
response is. Every number in a candidate is one too. Candidates that read as numbers become floats
rounded to 2 places, others lowercase strings. A gold string matches when it is a substring of a
string candidate (a one-character gold only with a space on one side), a gold number when it equals
a number candidate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_END_MARKS = (",", ".", "!", "?", ";", ":", "'")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}

# The three number shapes of the official extractor, tried in this order and all kept.
_GROUPED = re.compile(r"-?\b\d{1,3}(?:,\d\d\d)+\b")  # 1,234,567
_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][-+]?\d+")  # 1.5e-3
_PLAIN = re.compile(
    r"""-?(?: \d+\.\d+ | \.\d+ | \d+\b )   # 3.14, .5 or 42
        (?![eE][+-]?\d+)                    # not the mantissa of a scientific number
        (?![,\d])                           # nor the head of a grouped one""",
    re.VERBOSE,
)

Candidate = str | float


def parse_choice(response: str, options: Mapping[str, str]) -> str | None:
    """The letter a multiple-choice response picks; None where the official parser guesses."""
    for mark in _END_MARKS:
        response = response.strip(mark)
    padded = f" {response} "
    lowered = padded.lower()
    ways = [
        (padded, {x: f"({x})" for x in options}),  # "(B)"
        (padded, {x: f" {x} " for x in options}),  # " B "
    ]
    if len(padded.split()) > 5:  # option texts only in a longer response
        ways.append((lowered, {x: str(t).lower() for x, t in options.items()}))
    for text, needles in ways:
        last = {x: text.rfind(needle) for x, needle in needles.items() if needle in text}
        if last:
            return max(last, key=last.__getitem__)  # mentioned last; the first letter on a tie
    return None


def numbers_in(text: str) -> list[str]:
    """Every number the official extractor finds: grouped, then scientific, then plain ones."""
    return _GROUPED.findall(text) + _SCIENTIFIC.findall(text) + _PLAIN.findall(text)


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def normalize(text: str) -> list[Candidate]:
    """One answer's comparable forms: a float rounded to 2 places, else the lowercase string
    (a single character as " x" and "x " so that it cannot match inside a word)."""
    text = text.strip()
    value = _as_number(text)
    if value is not None:
        return [round(value, 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_parts(response: str) -> list[str]:
    text = response.strip().strip(".").lower()
    pieces = text.split("\n")  # the official sentence split needs a capital, gone after lower()
    parts = []
    for k, piece in enumerate(pieces):
        indicators = _INDICATORS + (("=",) if k == len(pieces) - 1 else ())
        shortest: str | None = None
        for indicator in indicators:
            if indicator in piece:
                tail = piece.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            parts.append(shortest)
    return parts or [text]


def open_candidates(response: str) -> list[Candidate]:
    """The official candidate set of an open response (strings and numbers, no duplicates)."""
    parts = _key_parts(response)
    raw = parts + [n for part in parts for n in numbers_in(part)]
    out: list[Candidate] = []
    for item in raw:
        for form in normalize(item):
            if form not in out:
                out.append(form)
    return out


def open_correct(candidates: Sequence[Candidate], gold: str | Sequence[str]) -> bool:
    """``eval_open``: a gold form in a string candidate, or a gold number among the numbers."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    forms = [form for g in golds for form in normalize(str(g))]
    for cand in candidates:
        if isinstance(cand, str):
            if any(isinstance(f, str) and f in cand for f in forms):
                return True
        elif cand in forms:
            return True
    return False


def choice_correct(letter: str | None, gold: str | Sequence[str]) -> bool:
    """``eval_multi_choice``: the parsed letter equals the gold letter (or one of a list)."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    return letter is not None and letter in golds
