"""The `infer` command: answer every question of a JSONL file, in batches, into a JSONL file.

Each input line is one JSON object in one of two forms:

* simple: ``{"id": "q1", "question": "What is shown?", "image": "a.jpg"}``, with ``"images":
  [...]`` for several images, ``"video": "clip.mp4"`` for a video, or no media for text only;
* the training schema (InternVL's JSONL, ``data/schema.py``): ``{"id", "image" / "video",
  "conversations": [{"from": "human", "value": "<image>\\nWhat is shown?"}, {"from": "gpt", ...}]}``
  with one human turn; a trailing gpt turn (a reference answer) is ignored.

``id`` defaults to the line number. Relative media paths are read from ``media_root`` (default:
the input file's folder). Every line is checked before anything is generated; a bad line is an
error naming the file and line. The output has one line per input line, in input order:
``{"id", "question", "answer"}``, written batch by batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.schema import conversation_problem
from ..evaluation.generate import generate_batch
from .chat import VIDEO_FRAMES, load_chatbot, media_request
from .commands import DTYPES


@dataclass(frozen=True)
class Question:
    """One input line: its id, question text and media paths (resolved)."""

    id: Any
    text: str
    images: tuple[Path, ...] = ()
    video: Path | None = None


def _media_paths(record: dict, root: Path, where: str) -> tuple[tuple[Path, ...], Path | None]:
    image, images, video = record.get("image"), record.get("images"), record.get("video")
    if image is not None and images is not None:
        raise ValueError(f"{where}: give 'image' or 'images', not both")
    listed = images if images is not None else image
    listed = [listed] if isinstance(listed, str) else listed
    if listed is not None and not (isinstance(listed, list) and all(isinstance(p, str) for p in listed)):
        raise ValueError(f"{where}: 'image'/'images' must be a path or a list of paths")
    if video is not None and not isinstance(video, str):
        raise ValueError(f"{where}: 'video' must be a path")
    if video is not None and listed:
        raise ValueError(f"{where}: a question is about images or about a video, not both")
    paths = tuple(root / p for p in listed or [])
    return paths, (root / video if video is not None else None)


def _question_text(record: dict, where: str) -> str:
    if "conversations" in record:
        if "question" in record:
            raise ValueError(f"{where}: give 'question' or 'conversations', not both")
        turns = record["conversations"]
        problem = conversation_problem(turns, final_answer=False)
        if problem:
            raise ValueError(f"{where}: {problem}")
        roles = [t["from"] for t in turns]
        if "system" in roles or roles.count("human") != 1:
            raise ValueError(
                f"{where}: infer answers one question per line: one human turn (and no system turn), "
                f"got {roles}"
            )
        return turns[0]["value"]
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: needs a 'question' string (or the training schema's 'conversations')")
    return question


def read_questions(path: str | Path, media_root: str | Path | None = None) -> list[Question]:
    """Every question of a JSONL file, checked (blank lines are skipped)."""
    path = Path(path)
    root = Path(media_root) if media_root is not None else path.parent
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{where}: a line must be a JSON object, got {type(record).__name__}")
            images, video = _media_paths(record, root, where)
            for p in (*images, video):
                if p is not None and not p.exists():
                    raise ValueError(f"{where}: media file {p} does not exist")
            questions.append(Question(record.get("id", number), _question_text(record, where), images, video))
    return questions


def _batches(questions: list[Question], batch_size: int) -> list[list[Question]]:
    """Consecutive questions in batches of one kind (videos are encoded with their own settings)."""
    batches: list[list[Question]] = []
    for q in questions:
        last = batches[-1] if batches else None
        if last is None or len(last) == batch_size or (last[0].video is None) != (q.video is None):
            batches.append([q])
        else:
            last.append(q)
    return batches


def infer(
    input: str | Path,
    output: str | Path,
    model: str | Path,
    batch_size: int = 8,
    media_root: str | Path | None = None,
    num_frames: int = VIDEO_FRAMES,
    max_new_tokens: int = 512,
    max_num: int | None = None,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    dtype: DTYPES | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> Path:
    """Answer the questions of a JSONL file in batches; one answer line per question, in order.

    Input lines are ``{"id", "question", "image" | "images" | "video"}`` or the training schema
    with one human turn (see the module doc of ``training/infer.py``); answers are greedy, with
    the template, tiling and normalisation the model was trained with.

    Args:
        input: JSONL file of questions.
        output: JSONL file written: ``{"id", "question", "answer"}`` per line.
        model: stage output, HF-native export, original-layout InternVL dir or Lightning .ckpt.
        batch_size: questions generated together.
        media_root: folder relative media paths are read from (default: the input file's folder).
        num_frames: frames taken from each video (one tile each).
        max_new_tokens: longest answer in tokens.
        max_num: tiles per image (default: the tile budget the model was trained with).
        tokenizer: tokenizer dir (default: the one that goes with the checkpoint).
        device: default cuda when available, else cpu.
        dtype: default bfloat16 on a GPU, float32 on the CPU.
        progress: show a progress bar.
        trust_remote_code: let a tokenizer defined by its own code (``tokenization_*.py``) run it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    questions = read_questions(input, media_root)
    bot = load_chatbot(model, tokenizer, device, dtype, max_num, trust_remote_code)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(out, "w", encoding="utf-8") as f,
        tqdm(total=len(questions), unit="question", disable=not progress) as bar,
    ):
        for batch in _batches(questions, batch_size):
            encoded = [media_request(q.text, bot.settings, q.images, q.video, num_frames) for q in batch]
            settings = encoded[0][1]  # one kind per batch: the same settings for all
            answers = generate_batch(
                bot.model, bot.tokenizer, [r for r, _ in encoded], settings, max_new_tokens
            )
            for q, answer in zip(batch, answers, strict=True):
                f.write(
                    json.dumps({"id": q.id, "question": q.text, "answer": answer}, ensure_ascii=False) + "\n"
                )
            f.flush()
            bar.update(len(batch))
    return out
