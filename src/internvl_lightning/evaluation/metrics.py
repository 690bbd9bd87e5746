"""Per-sample VQA-family scores (each a float in [0, 1]), each as its official evaluator decides.

- ``vqa``: VQA accuracy as GT-Vision-Lab's ``vqaEval.py``: the mean over the leave-one-out subsets
  of the reference answers of min(1, matches / 3), after its answer normalisation;
- ``anls``: ANLS as the DocVQA / InfographicVQA script (InternVL's ``infographicsvqa_eval.py``);
- ``relaxed``: ChartQA relaxed accuracy as pix2struct's ``relaxed_correctness``;
- ``exact``: InternVL's ``evaluate_exact_match_accuracy`` (stripped, case-insensitive equality).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# --- VQA answer normalisation (vqaEval.processPunctuation / processDigitArticle) ---------------

_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")  # anywhere in the text: every mark is deleted
_PERIOD = re.compile(r"\.(?!\d)")  # the official look-behind is a typo that never fires
_PERIOD_LIMIT = 32  # the official passes re.UNICODE (= 32) where ``count`` goes
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = ("a", "an", "the")
# Contracted forms; the evaluator maps each spelling with one apostrophe left out back to the form.
_CONTRACTED = """'twas I'm I've ain't aren't can't could've couldn't couldn't've didn't doesn't don't
hadn't hadn't've hasn't haven't he'd he'd've he's how'd how'll how's I'd've isn't it'd it'd've it'll
ma'am might've mightn't mightn't've must've mustn't needn't not've o'clock oughtn't 'ow's'at shan't
she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've wasn't we'd've we've weren't
what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's who've
why'll why're why's won't would've wouldn't wouldn't've y'all y'all'd've y'all'll you'd you'd've
you'll you're you've""".split()
_CONTRACTIONS = {
    form[:i] + form[i + 1 :]: form for form in _CONTRACTED for i, ch in enumerate(form) if ch == "'"
}
_CONTRACTIONS["somebody'd"] = "somebodyd"  # the one entry that goes the other way


def _punctuation(text: str) -> str:
    """A mark touching a space (or any mark, when a digit-comma-digit is present) is deleted;
    any other mark becomes a space; then a period not followed by a digit is deleted."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCT:
        gone = delete_all or f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if gone else " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def _digits_articles(text: str) -> str:
    """Lowercase words; number words as digits; articles dropped; contractions restored."""
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa(answer: str) -> str:
    """The evaluator's normal form: "Two dogs." -> "2 dogs", "the red one" -> "red 1"."""
    return _digits_articles(_punctuation(answer))


def _answers(target: str | Sequence[str]) -> list[str]:
    return [target] if isinstance(target, str) else [str(t) for t in target]


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_score(prediction: str, target: str | Sequence[str]) -> float:
    """VQA accuracy: for each reference answer left out, min(1, equal others / 3); their mean.

    As the evaluator, answers are normalised only when they are not all the same. One reference
    answer alone (no leave-one-out subset; the official formula gives 0) scores normalised
    exact match instead.
    """
    answers = [_clean(a) for a in _answers(target)]
    pred = _clean(prediction)
    if len(answers) == 1:
        return float(normalize_vqa(pred) == normalize_vqa(answers[0]))
    if len(set(answers)) > 1:
        answers, pred = [normalize_vqa(a) for a in answers], normalize_vqa(pred)
    equal = sum(a == pred for a in answers)
    per_subset = [min(1.0, (equal - (a == pred)) / 3) for a in answers]
    return sum(per_subset) / len(per_subset) if per_subset else 0.0


# --- ANLS (DocVQA) -------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute: 1 each)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def anls(prediction: str, target: str | Sequence[str], threshold: float = 0.5) -> float:
    """1 - the smallest normalised edit distance to an answer, 0 when below ``threshold``.

    Distances are between lowercased, space-collapsed strings; the length that divides them is
    that of the raw strings (as ``str.upper`` writes them), as in the DocVQA script.
    """

    def squash(s: str) -> str:
        return " ".join(s.strip().lower().split())

    values = []
    for answer in _answers(target):
        longest = max(len(answer.upper()), len(prediction.upper()))
        dist = levenshtein(squash(answer), squash(prediction))
        values.append(0.0 if longest == 0 else dist / longest)
    score = 1.0 - min(values) if values else 0.0
    return 0.0 if score < threshold else score


# --- ChartQA relaxed accuracy (pix2struct) and exact match (InternVL) ---------------------------


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(target: str, prediction: str, tolerance: float = 0.05) -> bool:
    """Within ``tolerance`` relative change when both read as numbers (the target non-zero),
    else equal ignoring case. "12%" reads as 0.12."""
    p, t = _to_float(prediction), _to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


def relaxed_accuracy(prediction: str, target: str | Sequence[str], tolerance: float = 0.05) -> float:
    """The best relaxed correctness over the answers (the prediction stripped, as InternVL does)."""
    p = prediction.strip()
    return float(any(relaxed_correct(t, p, tolerance) for t in _answers(target)))


def exact_match(prediction: str, target: str | Sequence[str]) -> float:
    """1 if the stripped, lowercased prediction equals a stripped, lowercased answer."""
    p = prediction.strip().lower()
    return float(any(p == t.strip().lower() for t in _answers(target)))


VQA_METRICS = {"vqa": vqa_score, "exact": exact_match, "anls": anls, "relaxed": relaxed_accuracy}
