"""`python -m internvl_lightning chat / infer` as a user types them, on the tiny trained-model export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from internvl_lightning.training.chat import Conversation, load_chatbot
from tests.helpers import IMAGES, REPO

PHOTO = IMAGES / "image1.jpg"


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "internvl_lightning", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def bot(tiny_vlm_dir):
    return load_chatbot(tiny_vlm_dir)


def test_chat_answers_a_question_about_a_photo(tiny_vlm_dir, bot):
    run = _cli(
        "chat",
        "--model",
        str(tiny_vlm_dir),
        "--image",
        str(PHOTO),
        "--max-new-tokens",
        "6",
        "What is in the picture?",
    )
    assert run.returncode == 0, run.stderr
    expected = Conversation(bot, [PHOTO]).ask("What is in the picture?", max_new_tokens=6)
    assert run.stdout.strip() == expected


def test_chat_reads_a_conversation_from_stdin(tiny_vlm_dir, bot):
    run = _cli(
        "chat", "--model", str(tiny_vlm_dir), "--image", str(PHOTO), "--max-new-tokens", "4",
        stdin="What is it?\nWhere is it?\n\nnever asked\n",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    conversation = Conversation(bot, [PHOTO])
    expected = [conversation.ask(q, max_new_tokens=4) for q in ("What is it?", "Where is it?")]
    assert [line.strip() for line in run.stdout.splitlines()] == expected


def test_infer_writes_one_answer_per_line_and_bad_input_is_an_error(tiny_vlm_dir, tmp_path):
    source = tmp_path / "questions.jsonl"
    source.write_text(
        json.dumps({"id": "p", "question": "What is shown?", "image": str(PHOTO)}) + "\n"
        + json.dumps({"id": "t", "question": "Say hello."}) + "\n"
    )  # fmt: skip
    out = tmp_path / "answers.jsonl"
    run = _cli(
        "infer",
        "--input",
        str(source),
        "--output",
        str(out),
        "--model",
        str(tiny_vlm_dir),
        "--max-new-tokens",
        "3",
    )
    assert run.returncode == 0, run.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["p", "t"]
    assert "2/2" in run.stderr  # the progress bar

    source.write_text('{"question": "fine"}\n{"id": 2}\n')
    run = _cli("infer", "--input", str(source), "--output", str(out), "--model", str(tiny_vlm_dir))
    assert run.returncode == 2
    assert f"error: {source}:2: needs a 'question'" in run.stderr
