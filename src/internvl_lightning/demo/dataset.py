"""The demo's data, written in InternVL's own format (meta.json + JSONL + media files).

Stage 1 gets captions, stage 1.5 vision-centric questions (colour, shape, position, count),
stage 2 instructions (multi-turn, multiple choice, two-image comparisons, short video clips and
some pure text). The held-out evaluation set is a multiple-choice TSV in MMBench's layout.
"""

from __future__ import annotations

import base64
import csv
import json
import random
from pathlib import Path

from .picture_words import picture_text
from .scenes import (
    COLOURS,
    COUNT_WORDS,
    DIRECTIONS,
    POSITIONS,
    SHAPES,
    Scene,
    ball_clip,
    draw_scene,
    jpeg_bytes,
    mp4_bytes,
    random_scene,
)

MC_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# The demo's training data answer multiple choice with the option's text, not its letter. MMBench's
# official matching scores a prediction without a letter by the one option whose text it contains
# (evaluation/mmbench_rules.py, step 2), so "red" counts as the letter of the option "red". The tiny
# LLM does not learn the letter lookup within a CPU budget: trained on nothing but "Which option
# says red?" over shuffled options it stayed at chance (25.3% after 1,500 steps; 24.0% when every
# conversation asked for all four options), while it states the facts it is asked openly.
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


def caption(s: Scene) -> str:
    noun = s.shape if s.count == 1 else PLURAL[s.shape]
    return f"{COUNT_WORDS[s.count].capitalize()} {s.colour} {noun} {WHERE[s.position]}."


# (question, answer, options) makers for the vision-centric facts of a scene.
def _facts(s: Scene) -> dict[str, tuple[str, str, list[str]]]:
    return {
        "colour": ("What colour is the shape?", s.colour, list(COLOURS)),
        "shape": ("What shape is in the picture?", s.shape, list(SHAPES)),
        "position": ("Where is the shape?", s.position, list(POSITIONS)),
        "count": ("How many shapes are there?", COUNT_WORDS[s.count], list(COUNT_WORDS[1:4]) + ["four"]),
    }


def multiple_choice(
    question: str, answer: str, options: list[str], rng: random.Random, order: random.Random | None = None
) -> tuple[str, str, list[str]]:
    """MMBench-style prompt over four options; returns (prompt, letter, options).

    Three distractors are drawn at random. With ``order`` the four are shuffled by it, so the
    answer's letter says nothing (training data: a fixed order per question kind teaches the
    answer's position, which circular evaluation scores 0); without it they keep the order of
    ``options`` (the held-out file, whose rows circular evaluation rotates). ``order`` is a
    separate generator so that every other draw of the data stays as it was.
    """
    chosen = {answer, *rng.sample([o for o in options if o != answer], 3)}
    opts = [o for o in options if o in chosen]
    if order is not None:
        order.shuffle(opts)
    letters = "ABCD"
    prompt = question + "".join(f"\n{letters[i]}. {o}" for i, o in enumerate(opts)) + MC_SUFFIX
    return prompt, letters[opts.index(answer)], opts


def option_order(seed: int) -> random.Random:
    """The generator that shuffles the training data's options (seeded apart from the data's own)."""
    return random.Random(f"option-order-{seed}")


# Pure-text knowledge the LLM is pretrained on and stage 2 keeps asking about.
TEXT_FACTS = [
    ("What colour is grass?", "Grass is green."),
    ("What colour is the sky on a clear day?", "The sky is blue."),
    ("What colour is a ripe banana?", "A ripe banana is yellow."),
    ("What colour is a strawberry?", "A strawberry is red."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("What is one plus one?", "One plus one is two."),
    ("What is two plus one?", "Two plus one is three."),
    ("Is a circle round?", "Yes, a circle is round."),
    ("What shape has no corners?", "A circle has no corners."),
]


def language_corpus(n: int, seed: int) -> list[str]:
    """Plain text (captions and simple facts) for training the tokenizer."""
    rng = random.Random(seed)
    lines = [caption(random_scene(rng)) for _ in range(n)]
    lines += [f"{q} {a}" for q, a in TEXT_FACTS for _ in range(max(1, n // 50))]
    rng.shuffle(lines)
    return lines


def chat_corpus(
    n: int, seed: int, image_size: int = 64, patch: int = 8, max_num: int = 6
) -> list[list[dict]]:
    """Text-only conversations the LLM is pretrained on, as an instruction-tuned LLM would be.

    Questions about a picture come with the picture written as words where its image tokens
    will go (see `picture_words`), so the LLM learns to read colours, shapes, places and counts
    from a grid of cell words; stage 1 then only has to make each image token say its cell's
    word. Multiple choice is practised on general knowledge only (answered with the option's text,
    see MC_SUFFIX): answering about pictures that way is left to stage 2.
    """
    rng, order = random.Random(seed), option_order(seed)
    convs = []
    while len(convs) < n:
        r = rng.random()
        s = random_scene(rng)
        if r < 0.7:  # 1 in 5 pictures is wide (2 tiles + thumbnail), as in the stage-1 captions
            width = image_size * (2 if rng.random() < 0.2 else 1)
            picture = draw_scene(s, rng, width, image_size)
            context = picture_text(picture, s, image_size, patch, max_num) + "\n"
        if r < 0.35:
            q = rng.choice(["Describe the image.", "What is in the picture?", "Write a short caption."])
            convs.append(_turn(context + q, caption(s)))
        elif r < 0.7:
            q, a, _ = rng.choice(list(_facts(s).values()))
            convs.append(_turn(context + q, a))
        elif r < 0.85:
            q, a = rng.choice(TEXT_FACTS)
            convs.append(_turn(q, a))
        else:  # multiple choice about general facts: the letter of the option that holds the answer
            q, a = rng.choice(TEXT_FACTS)
            key = a.lower().rstrip(".").split()[-1]  # the answer word ends every fact
            if key not in COLOURS and key not in COUNT_WORDS[1:]:
                continue
            pool = list(COLOURS) if key in COLOURS else list(COUNT_WORDS[1:])
            prompt, _, _ = multiple_choice(q, key, pool, rng, order)
            convs.append(_turn(prompt, key))
    return convs


class Writer:
    """Writes media files once and JSONL lines per dataset under one root."""

    def __init__(self, root: Path, seed: int, image_size: int = 64) -> None:
        self.root, self.rng, self.size = root, random.Random(seed), image_size
        (root / "media").mkdir(parents=True, exist_ok=True)
        self.files: dict[str, list[str]] = {}
        self.n = 0

    def image(self, scene: Scene, wide: bool = False) -> str:
        self.n += 1
        w = self.size * 2 if wide else self.size  # wide pictures get 2 tiles + thumbnail
        name = f"media/img{self.n:06d}.jpg"
        (self.root / name).write_bytes(jpeg_bytes(draw_scene(scene, self.rng, w, self.size)))
        return name

    def video(self, direction: str, colour: str) -> str:
        self.n += 1
        name = f"media/clip{self.n:06d}.mp4"
        (self.root / name).write_bytes(mp4_bytes(ball_clip(direction, colour, self.rng, size=self.size)))
        return name

    def add(self, dataset: str, record: dict) -> None:
        record["id"] = f"{dataset}-{len(self.files.setdefault(dataset, [])):06d}"
        self.files[dataset].append(json.dumps(record, ensure_ascii=False))

    def write_meta(self, name: str, datasets: dict[str, dict]) -> Path:
        meta = {}
        for ds, opts in datasets.items():
            if not self.files.get(ds):  # a small mixture may not draw every kind
                continue
            path = self.root / f"{ds}.jsonl"
            path.write_text("\n".join(self.files[ds]) + "\n")
            meta[ds] = {  # relative to the meta file's directory (this root), as meta.py resolves them
                "root": ".",
                "annotation": path.name,
                "repeat_time": 1,
                "length": len(self.files[ds]),
            }
            meta[ds].update(opts)
        out = self.root / f"{name}.json"
        out.write_text(json.dumps(meta, indent=2) + "\n")
        return out


def _turn(q: str, a: str) -> list[dict]:
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


def write_stage_data(
    root: Path, n1: int, n15: int, n2: int, seed: int = 0, image_size: int = 64
) -> dict[str, Path]:
    """Write the three stage mixtures; returns {stage: meta path}."""
    w = Writer(root, seed, image_size)
    rng, order = w.rng, option_order(seed)
    for _ in range(n1):  # stage 1: captions
        s = random_scene(rng)
        q = rng.choice(["Describe the image.", "What is in the picture?", "Write a short caption."])
        w.add(
            "captions",
            {
                "image": w.image(s, wide=rng.random() < 0.2),
                "conversations": _turn(f"<image>\n{q}", caption(s)),
            },
        )
    for _ in range(n15):  # stage 1.5: vision-centric questions
        s = random_scene(rng)
        kind = rng.choice(list(_facts(s)))
        q, a, _ = _facts(s)[kind]
        w.add("vqa", {"image": w.image(s), "conversations": _turn(f"<image>\n{q}", a)})
    for _ in range(n2):  # stage 2: instructions of every kind
        r = rng.random()
        if r < 0.45:  # multiple choice, as benchmarks ask (answered with the text: see MC_SUFFIX)
            s = random_scene(rng)
            q, a, opts = _facts(s)[rng.choice(["colour", "shape", "position", "count"])]
            prompt, _, _ = multiple_choice(q, a, opts, rng, order)
            w.add("mc", {"image": w.image(s), "conversations": _turn(f"<image>\n{prompt}", a)})
        elif r < 0.65:  # multi-turn
            s = random_scene(rng)
            f = _facts(s)
            k1, k2 = rng.sample(list(f), 2)
            conv = _turn(f"<image>\n{f[k1][0]}", f[k1][1].capitalize() + ".") + _turn(
                f[k2][0], f[k2][1].capitalize() + "."
            )
            w.add("multiturn", {"image": w.image(s), "conversations": conv})
        elif r < 0.78:  # two images
            s1, s2 = random_scene(rng), random_scene(rng)
            while s2.colour == s1.colour:
                s2 = random_scene(rng)
            target = rng.choice([1, 2])
            colour = (s1 if target == 1 else s2).colour
            q = f"Image-1: <image>\nImage-2: <image>\nWhich image shows a {colour} shape?"
            w.add(
                "multi_image",
                {"image": [w.image(s1), w.image(s2)], "conversations": _turn(q, f"Image-{target}.")},
            )
        elif r < 0.9:  # short video
            d, c = rng.choice(DIRECTIONS), rng.choice(list(COLOURS))
            w.add(
                "video",
                {
                    "video": w.video(d, c),
                    "conversations": _turn("<video>\nWhich way does the ball move?", f"The ball moves {d}."),
                },
            )
        else:  # pure text
            q, a = rng.choice(TEXT_FACTS)
            w.add("text", {"conversations": _turn(q, a)})
    return {
        "stage1": w.write_meta("stage1_meta", {"captions": {"data_augment": False}}),
        "stage1_5": w.write_meta("stage1_5_meta", {"vqa": {"data_augment": False}}),
        "stage2": w.write_meta(
            "stage2_meta",
            {
                "mc": {"data_augment": False},
                "multiturn": {"data_augment": False},
                "multi_image": {"data_augment": False},
                "video": {"data_augment": False},
                "text": {"data_augment": False},
            },
        ),
    }


def write_mmbench_tsv(path: Path, n: int, seed: int, image_size: int = 64) -> Path:
    """A held-out multiple-choice set in MMBench's TSV layout (base64 images, options A-D)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f, delimiter="\t")
        out.writerow(
            ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
        )
        for i in range(n):
            s = random_scene(rng)
            category = rng.choice(["colour", "shape", "position", "count"])
            q, a, opts = _facts(s)[category]
            _, letter, options = multiple_choice(q, a, opts, rng)
            image = base64.b64encode(jpeg_bytes(draw_scene(s, rng, image_size, image_size))).decode()
            out.writerow([i, q, "", *options, letter, category, "perception", image])
    return path
