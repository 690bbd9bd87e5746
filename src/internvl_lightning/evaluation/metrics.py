"""Per-sample scoring functions (each returns a float in [0, 1]).

VQA answers are normalised the way the VQA evaluation server does (punctuation, articles,
number words, a few contractions); ANLS uses torchmetrics' character edit distance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torchmetrics.functional.text import edit_distance

from .extract import literal_list, open_candidates, parse_number

_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
    "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "hasnt": "hasn't",
    "havent": "haven't", "couldnt": "couldn't", "shouldnt": "shouldn't", "wouldnt": "wouldn't",
    "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "thats": "that's",
    "whats": "what's", "its": "it's", "lets": "let's",
}  # fmt: skip
_PUNCT = set(';/[]"{}()=+\\_-><@`,?!')
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


def normalize_vqa(answer: str) -> str:
    """VQA-server style normalisation: "Two dogs." -> "2 dogs", "the red one" -> "red 1"."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _DIGIT_COMMA.sub("", text)  # "1,000" -> "1000"
    # A punctuation mark next to a space is dropped; inside a word it separates ("yes/no" -> "yes no").
    chars = list(text)
    for i, ch in enumerate(chars):
        if ch in _PUNCT:
            glued = 0 < i < len(chars) - 1 and chars[i - 1] != " " and chars[i + 1] != " "
            chars[i] = " " if glued else ""
    text = _LONE_PERIOD.sub("", "".join(chars))  # keep decimal points
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def _answers(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else [str(t) for t in target]


def _light(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".").strip()


def exact_match(prediction: str, target: str | Sequence[str]) -> float:
    """1 if the prediction equals any answer (case, surrounding space and a final period ignored)."""
    p = _light(prediction)
    return float(any(p == _light(t) for t in _answers(target)))


def vqa_score(prediction: str, target: str | Sequence[str]) -> float:
    """min(#answers equal to the prediction / 3, 1) after VQA normalisation.

    With fewer than 3 reference answers the denominator is their count, so a single-answer
    file scores plain normalised exact match instead of capping at 1/3.
    """
    answers = [normalize_vqa(t) for t in _answers(target)]
    if not answers:
        return 0.0
    p = normalize_vqa(prediction)
    return min(sum(a == p for a in answers) / min(3, len(answers)), 1.0)


def anls(prediction: str, target: str | Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one sample: the best over the answers of
    1 - distance / longer length, zeroed when the normalised distance reaches ``threshold``."""
    p = " ".join(prediction.strip().lower().split())
    best = 0.0
    for t in _answers(target):
        t = " ".join(t.strip().lower().split())
        longest = max(len(p), len(t))
        if longest == 0:
            return 1.0
        dist = float(edit_distance([p], [t])) / longest if p and t else 1.0
        best = max(best, 1.0 - dist if dist < threshold else 0.0)
    return best


def _to_float(text: str) -> float | None:
    value = parse_number(text)
    if value is not None and text.strip().endswith("%"):
        value /= 100.0  # ChartQA writes some answers as percentages
    return value


def relaxed_accuracy(prediction: str, target: str | Sequence[str], tolerance: float = 0.05) -> float:
    """ChartQA's relaxed accuracy: numbers within ``tolerance`` relative error, else exact match."""
    p = prediction.strip().rstrip(".")
    p_num = _to_float(p)
    for t in _answers(target):
        t_num = _to_float(t)
        if p_num is not None and t_num is not None:
            if t_num == 0:
                ok = p_num == 0
            else:
                ok = abs(p_num - t_num) / abs(t_num) <= tolerance
        else:
            ok = p.lower() == t.strip().lower()
        if ok:
            return 1.0
    return 0.0


VQA_METRICS = {"vqa": vqa_score, "exact": exact_match, "anls": anls, "relaxed": relaxed_accuracy}


def _gold_forms(answer: str) -> list[str | float]:
    """A gold open answer as a number (2 decimals) where it is one, else a lowercase string."""
    value = parse_number(answer)
    return [round(value, 2)] if value is not None else [answer.strip().lower()]


def open_match(response: str, answer: str | Sequence[str]) -> float:
    """MMMU-style open-answer check: any gold answer matches any candidate of the response.

    A numeric gold matches a candidate number equal to it at 2 decimals; a text gold matches a
    candidate that contains it as a whole word (so "a" does not match inside "cat").
    """
    golds = literal_list(answer) if isinstance(answer, str) else list(answer)
    golds = golds if golds is not None else [answer]
    candidates = open_candidates(response)
    for gold in golds:
        for form in _gold_forms(str(gold)):
            for cand in candidates:
                if isinstance(form, float):
                    if isinstance(cand, float) and round(cand, 2) == form:
                        return 1.0
                elif isinstance(cand, str) and form and _contains_word(cand, form):
                    return 1.0
    return 0.0


def _contains_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(word)}(?![a-z0-9])", text) is not None
