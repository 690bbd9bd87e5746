"""Answer extraction and per-sample scoring on known cases (no model).

The official decisions themselves are checked case by case in ``test_parity.py``; these cases
show the behaviour in a few readable lines (and our own extraction rules, which have no official
counterpart).
"""

from __future__ import annotations

import pytest

from internvl_lightning.evaluation.common import Sample
from internvl_lightning.evaluation.extract import extract_choice, extract_number, parse_list, parse_number
from internvl_lightning.evaluation.generate import Request
from internvl_lightning.evaluation.mathvista import MathVista
from internvl_lightning.evaluation.metrics import (
    anls,
    exact_match,
    normalize_vqa,
    relaxed_accuracy,
    vqa_score,
)
from internvl_lightning.evaluation.mmmu import gold_answers
from internvl_lightning.evaluation.mmmu_rules import open_candidates, open_correct

OPTS = {"A": "blue", "B": "red", "C": "green", "D": "yellow"}


@pytest.mark.parametrize(
    "response, expected",
    [
        ("B", "B"),
        ("B.", "B"),
        ("The answer is (B).", "B"),
        ("B. red", "B"),
        ("C) green", "C"),
        ("Answer: D", "D"),
        ("the answer is c", "C"),
        ("It is red.", "B"),  # option text
        ("I would say the colour is green", "C"),
        ("Apples are nice", None),  # a capital A opening a word is not a letter answer
        ("", None),
        ("purple", None),
        ("E", None),  # not an option
    ],
)
def test_extract_choice(response, expected):
    assert extract_choice(response, OPTS) == expected


def test_extract_choice_prefers_longest_option_text():
    opts = {"A": "red", "B": "dark red"}
    assert extract_choice("it is dark red", opts) == "B"
    assert extract_choice("x", ["cat", "dog"]) is None


@pytest.mark.parametrize(
    "text, value",
    [("3.50", 3.5), ("1,234", 1234.0), ("-2", -2.0), ("45%", 45.0), ("$12", 12.0), ("abc", None), ("", None)],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_extract_number():
    assert extract_number("I think it's 3.50") == 3.5
    assert extract_number("There are 2 cats and 3 dogs, so the answer is 5 animals, not 6.") == 5.0
    assert extract_number("no numbers here") is None
    assert extract_number("Final answer: 1,200") == 1200.0


def test_parse_list():
    assert parse_list("[1, 2, 3]") == [1.0, 2.0, 3.0]
    assert parse_list("The list is (4.5, 6)") == [4.5, 6.0]
    assert parse_list("['a', 'B']") == ["a", "b"]
    assert parse_list("no list") is None


def test_vqa_normalisation_and_score():
    assert normalize_vqa("Two dogs.") == "2 dogs"
    assert normalize_vqa("the red one") == "red 1"
    assert normalize_vqa("yes/no") == "yes no"
    assert normalize_vqa("1,000") == "1000"
    assert normalize_vqa("3.5") == "3.5"
    assert normalize_vqa("5.") == "5"  # a period not followed by a digit goes (the old rule kept it)
    answers = ["2", "two", "2 dogs", "2", "3"]
    # Leave-one-out: three of five subsets hold two more "2"s (2/3), two hold three (1): 0.8.
    # (The old scorer gave min(3 / 3, 1) = 1.0, not the official mean.)
    assert vqa_score("Two", answers) == pytest.approx(0.8)
    assert vqa_score("3", answers) == pytest.approx(4 / 15)  # 1/3 in the four subsets that keep "3"
    assert vqa_score("2 Dogs!", answers) == pytest.approx(4 / 15)
    assert vqa_score("cat", answers) == 0.0
    assert vqa_score("Yes", ["yes"] * 10) == 0.0  # all answers equal: the evaluator normalises nothing
    assert vqa_score("two", "2") == 1.0  # a single answer (no official subset): normalised exact match


def test_exact_match():
    assert exact_match(" Paris ", "paris") == 1.0
    assert (
        exact_match("Paris.", "paris") == 0.0
    )  # InternVL's evaluator keeps the period (the old one dropped it)
    assert exact_match("paris france", ["paris", "lyon"]) == 0.0


def test_anls():
    assert anls("hello", "hello") == 1.0
    assert anls("helo", "hello") == pytest.approx(0.8)
    assert anls("abc", "xyz") == 0.0  # beyond the 0.5 threshold
    assert anls("ab", "abcd") == 0.5  # exactly 0.5 is kept, as in the DocVQA script
    assert anls("Hello", ["zzz", "hello"]) == 1.0
    assert anls("", "") == 1.0


def test_relaxed_accuracy():
    assert relaxed_accuracy("104", "100") == 1.0
    assert relaxed_accuracy("106", "100") == 0.0
    assert relaxed_accuracy("25%", "0.25") == 1.0
    assert relaxed_accuracy("0", "0") == 1.0  # a zero target compares as text
    assert relaxed_accuracy("0.0", "0") == 0.0
    assert relaxed_accuracy("Yes", "yes") == 1.0
    assert relaxed_accuracy("no", ["yes", "no"]) == 1.0
    assert relaxed_accuracy("1,000", "1000") == 0.0  # float() does not read "1,000": text match


def test_mmmu_open_matching():
    def match(response, answer):
        return open_correct(open_candidates(response), gold_answers(answer))

    assert match("The answer is 3.", "3")
    assert match("So the total is 3.0 kg", "3")
    assert match("I think it's 3.50", "3.5")
    assert not match("4", "3")
    assert match("Therefore, the rock is granite.", "Granite")
    assert match("a cat", "a")  # a one-letter gold matches with a space on one side
    assert not match("the cat", "a")  # neither " a" nor "a " occurs in "the cat"
    assert match("It is 24/7", "['24/7', '3.43']")
    assert "granite" in open_candidates("Therefore, the rock is granite.")


def _mv(answer, answer_type, choices=None, precision=None) -> Sample:
    meta = {
        "choices": choices or [],
        "question_type": "multi_choice" if choices else "free_form",
        "answer_type": answer_type,
        "precision": precision,
    }
    return Sample("1", Request("q"), answer, meta=meta)


@pytest.mark.parametrize(
    "response, sample, correct",
    [
        ("(B)", _mv("green", "text", ["red", "green"]), 1.0),
        ("B. green", _mv("green", "text", ["red", "green"]), 1.0),
        ("The answer is green", _mv("green", "text", ["red", "green"]), 1.0),
        ("gren", _mv("green", "text", ["red", "green"]), 1.0),  # closest option, as MathVista's normaliser
        ("A", _mv("green", "text", ["red", "green"]), 0.0),
        ("There are 3 apples.", _mv("3", "integer"), 1.0),
        ("2.5", _mv("3", "integer"), 0.0),  # int(float("2.5")) is 2
        ("3.7", _mv("3", "integer"), 1.0),  # ... and 3.7 is 3: the official truncation
        ("I think it's 3.50", _mv("3.5", "float", precision=1), 1.0),
        ("3.54", _mv("3.5", "float", precision=1), 1.0),
        ("3.6", _mv("3.5", "float", precision=1), 0.0),
        ("[1, 2, 3]", _mv("[1, 2, 3]", "list"), 1.0),
        ("[1, 3, 2]", _mv("[1, 2, 3]", "list"), 0.0),
        ("Paris.", _mv("paris", "text"), 1.0),  # free-form text: no official branch, ours
        ("", _mv("red", "text", ["red", "green"]), 1.0),  # empty: the nearest choice (the shortest)
        ("", _mv("3", "integer"), 0.0),
    ],
)
def test_mathvista_judge(response, sample, correct):
    assert MathVista().judge(sample, response)[0] == correct
