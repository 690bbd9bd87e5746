"""Our own rule-based answer extraction from free-form output, where an official pipeline would
ask a judge model (MathVista's GPT extraction step; see ``mathvista_rules.rule_extract``).

These rules are not any benchmark's official ones (those live in ``mmbench_rules.py``,
``mmmu_rules.py``, ``mathvista_rules.py`` and ``metrics.py``); they are deterministic.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_NUMBER_FULL = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def options_of(letters_to_text: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """``{"A": text, ...}`` from a mapping or a plain list of option texts."""
    if isinstance(letters_to_text, Mapping):
        return {str(k): str(v) for k, v in letters_to_text.items()}
    return {LETTERS[i]: str(t) for i, t in enumerate(letters_to_text)}


def extract_choice(response: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter a response picks, or None.

    In order: a lone letter; a letter in parentheses; "answer is X"; a letter that opens the
    response ("B. red", "C) ..."); the option whose text the response contains (the longest one,
    the last mentioned on ties); a single option letter standing alone anywhere in the response.
    """
    opts = options_of(options)
    text = response.strip()
    if not text or not opts:
        return None
    letters = "".join(re.escape(k) for k in opts)
    bare = text.strip(" .:)(*\"'")
    if bare in opts:
        return bare
    for pattern in (
        rf"\(([{letters}])\)",
        rf"answer\s*(?:is|:)?\s*:?\s*\**\(?([{letters}])\b",
        rf"^\**([{letters}])(?:[.:)\]]|\s|$)",
    ):
        found = re.findall(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0)
        hits = {h.upper() for h in found if h.upper() in opts}
        if len(hits) == 1:
            return hits.pop()
    lowered = text.lower()
    best: tuple[int, int, str] | None = None  # (text length, position, letter)
    for letter, option in opts.items():
        needle = option.strip().lower()
        if not needle:
            continue
        pos = _find_word(lowered, needle)
        if pos >= 0 and (best is None or (len(needle), pos) > best[:2]):
            best = (len(needle), pos, letter)
    if best is not None:
        return best[2]
    standalone = {m for m in re.findall(rf"(?<![A-Za-z])([{letters}])(?![A-Za-z])", text)}
    return standalone.pop() if len(standalone) == 1 else None


def _find_word(haystack: str, needle: str) -> int:
    """Last position of ``needle`` in ``haystack`` not glued to letters or digits, else -1."""
    found = -1
    for m in re.finditer(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", haystack):
        found = m.start()
    return found


def parse_number(text: str) -> float | None:
    """``text`` as a number when it is one ("1,234", "3.50", "-2", "45%" -> 45.0), else None."""
    t = text.strip().strip("$ ").rstrip("%").replace(" ", "")
    if not t or not _NUMBER_FULL.fullmatch(t):
        return None
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return None


def numbers_in(text: str) -> list[float]:
    """Every number in ``text``, in order ("I think it's 3.50" -> [3.5])."""
    out = []
    for m in _NUMBER_FULL.finditer(text):
        value = parse_number(m.group())
        if value is not None:
            out.append(value)
    return out


def answer_part(response: str) -> str:
    """The part of a response that holds its final answer: the text after the last lead-in phrase
    ("the answer is ...") in the last sentence that has one, else the whole response."""
    text = response.strip()
    sentences = [s for s in re.split(r"(?<=[.!?。])\s+|\n+", text) if s.strip()]
    lead_in = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|：)?\s*", re.IGNORECASE)
    for sentence in reversed(sentences):
        found = list(lead_in.finditer(sentence))
        if found and sentence[found[-1].end() :].strip():
            return sentence[found[-1].end() :].strip()
    return text


def extract_number(response: str) -> float | None:
    """The number a response gives: the first one after "the answer is", else the last one anywhere."""
    part = answer_part(response)
    if part != response.strip() and numbers_in(part):
        return numbers_in(part)[0]
    values = numbers_in(response)
    return values[-1] if values else None


def parse_list(text: str) -> list | None:
    """A list written in ``text`` ("[1, 2, 3]", "(1, 2)"): the last bracketed one, items as numbers
    where they are numbers, else stripped lowercase strings; None when there is none."""
    found = re.findall(r"[\[(]([^\[\]()]*)[\])]", text)
    if not found:
        return None
    items = [i.strip().strip("'\"") for i in found[-1].split(",")]
    if not any(items):
        return None
    out: list = []
    for item in items:
        value = parse_number(item)
        out.append(value if value is not None else item.lower())
    return out


def literal_list(value: object) -> list | None:
    """``value`` as a list when it is one or a string holding a Python/JSON list literal."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = ast.literal_eval(value.strip())  # literals only, never code
        except (ValueError, SyntaxError):
            return None
        return list(parsed) if isinstance(parsed, list | tuple) else None
    return None
