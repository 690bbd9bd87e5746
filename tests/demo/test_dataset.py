"""The demo's multiple-choice data: training options shuffled (seeded), the held-out file in order;
the full run's pass bar."""

from __future__ import annotations

import csv
import json
import random

from internvl_lightning.demo.dataset import (
    _facts,
    multiple_choice,
    option_order,
    write_mmbench_tsv,
    write_stage_data,
)
from internvl_lightning.demo.run import PASS_CIRCULAR, passes
from internvl_lightning.demo.scenes import COLOURS, random_scene
from internvl_lightning.evaluation.mmbench_rules import match_option


def _fixed_orders() -> dict[str, list[str]]:
    """Question -> its options in their fixed order (the same for every scene)."""
    return {q: opts for q, _, opts in _facts(random_scene(random.Random(0))).values()}


def _options(prompt: str) -> list[str]:
    return [line[3:] for line in prompt.split("\n") if line[:3] in ("A. ", "B. ", "C. ", "D. ")]


def test_training_options_are_shuffled_and_the_letter_follows_the_answer():
    rng, order = random.Random(0), option_order(0)
    canonical, positions = 0, {letter: 0 for letter in "ABCD"}
    for _ in range(400):
        prompt, letter, opts = multiple_choice("What colour?", "red", list(COLOURS), rng, order)
        assert _options(prompt) == opts and opts["ABCD".index(letter)] == "red"
        canonical += opts == [c for c in COLOURS if c in opts]
        positions[letter] += 1
    # "red" comes first in COLOURS: in a fixed order it would always be A.
    assert all(60 < n < 140 for n in positions.values()), positions
    assert canonical < 40  # 1 in 24 orders is the canonical one


def test_option_order_is_seeded_apart_from_the_data():
    def draws(seed: int) -> list[list[str]]:
        rng, order = random.Random(0), option_order(seed)
        return [multiple_choice("What colour?", "red", list(COLOURS), rng, order)[2] for _ in range(8)]

    assert draws(0) == draws(0) and draws(0) != draws(1)
    assert [sorted(o) for o in draws(0)] == [sorted(o) for o in draws(1)]  # the same distractors


def test_without_order_the_options_keep_their_order():
    _, letter, opts = multiple_choice("What colour?", "red", list(COLOURS), random.Random(3))
    assert opts == [c for c in COLOURS if c in opts] and letter == "A"


def test_stage2_mc_is_shuffled_and_seeded(tmp_path):
    metas = [write_stage_data(tmp_path / f"run{k}", 0, 0, 40, seed=7) for k in (0, 1)]
    records = [
        [json.loads(x) for x in (m["stage2"].parent / "mc.jsonl").read_text().splitlines()] for m in metas
    ]
    assert records[0] == records[1] and len(records[0]) > 10  # the same seed writes the same data
    kinds = _fixed_orders()
    reordered = 0
    for r in records[0]:
        question, *_ = r["conversations"][0]["value"].removeprefix("<image>\n").split("\n")
        opts = _options(r["conversations"][0]["value"])
        reordered += opts != [o for o in kinds[question] if o in opts]
    assert reordered > len(records[0]) // 2


def test_stage2_mc_answers_with_the_option_text_which_mmbench_matching_scores_as_its_letter(tmp_path):
    meta = write_stage_data(tmp_path, 0, 0, 40, seed=7)["stage2"]
    records = [json.loads(x) for x in (meta.parent / "mc.jsonl").read_text().splitlines()]
    for r in records:
        question, answer = (turn["value"] for turn in r["conversations"])
        options = dict(zip("ABCD", _options(question)))
        assert answer in options.values()
        assert options[match_option(answer, options)] == answer  # the official rules' step 2


def test_held_out_file_keeps_the_fixed_order(tmp_path):
    path = write_mmbench_tsv(tmp_path / "mmbench_dev_en.tsv", 30, seed=1)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    order = _fixed_orders()
    for row in rows:
        opts = [row[k] for k in "ABCD"]
        assert opts == [o for o in order[row["question"]] if o in opts]
        assert row[row["answer"]] in opts


def test_the_gate_needs_the_bar_and_no_loss_against_stage1():
    assert passes({"stage1": 0.7, "stage2": 0.7})
    assert passes({"stage1": 0.1, "stage2": PASS_CIRCULAR})
    assert not passes({"stage1": 0.8, "stage2": 0.7})
    assert not passes({"stage1": 0.0, "stage2": PASS_CIRCULAR - 0.01})
    assert not passes({"stage1": 0.0})
