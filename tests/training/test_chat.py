"""chat / infer: prompts as training builds them, streamed answers equal greedy ones, infer in order."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from transformers import TextStreamer

from internvl_lightning.constants import IMG_CONTEXT_TOKEN
from internvl_lightning.data.collate import PackingCollator
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.templates import render
from internvl_lightning.evaluation.generate import Request, encode_request, generate_batch
from internvl_lightning.tokenizer import load_tokenizer
from internvl_lightning.training.chat import Chatbot, Conversation, load_chatbot, stdin_questions
from internvl_lightning.training.infer import infer, read_questions
from tests.helpers import IMAGES
from tests.helpers.batches import fit_batches, make_module, make_sample

PHOTO = IMAGES / "image1.jpg"


@pytest.fixture(scope="module")
def bot(tiny_vlm_dir):
    return load_chatbot(tiny_vlm_dir)


class RecordingStreamer(TextStreamer):
    """A TextStreamer that keeps what it would print and counts the token chunks it is given."""

    def __init__(self, tokenizer) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.puts, self.text = 0, ""

    def put(self, value) -> None:
        self.puts += 1
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text += text


def test_settings_are_the_trained_ones(bot, tiny_vlm_dir):
    s = bot.settings  # tiny_vlm_dir's training record: a tile budget of 4
    assert (s.max_num, s.min_num, s.template, s.normalization) == (4, 1, "internvl2_5", "imagenet")
    assert load_chatbot(tiny_vlm_dir, max_num=2).settings.max_num == 2


def test_first_prompt_is_the_evaluation_prompt(bot):
    ids, tiles = Conversation(bot, [PHOTO]).prompt("What is in the picture?")
    ref_ids, ref_tiles = encode_request(
        Request("What is in the picture?", [(str(PHOTO), "photo")]), bot.tokenizer, bot.settings
    )
    assert ids.tolist() == ref_ids.tolist()
    assert tiles.shape[0] == 5  # 4 tiles + thumbnail: the trained budget
    assert torch.equal(tiles, ref_tiles)


def test_streamed_answer_equals_greedy_generation(bot):
    streamer = RecordingStreamer(bot.tokenizer)
    answer = Conversation(bot, [PHOTO]).ask("What is in the picture?", streamer, max_new_tokens=6)
    request = Request("What is in the picture?", [(str(PHOTO), "photo")])
    assert answer == generate_batch(bot.model, bot.tokenizer, [request], bot.settings, max_new_tokens=6)[0]
    assert answer
    assert streamer.puts > 2  # the prompt, then the answer token by token
    assert streamer.text.strip() == answer


def test_later_questions_see_the_history(bot):
    conversation = Conversation(bot, [PHOTO])
    first_ids, tiles = conversation.prompt("What is it?")
    first = conversation.ask("What is it?", max_new_tokens=4)
    ids, again = conversation.prompt("And the colour?")
    assert torch.equal(tiles, again)
    assert ids[: first_ids.shape[0]].tolist() == first_ids.tolist()
    tokens = bot.settings.tokens_per_tile * tiles.shape[0]
    turns = [
        {"from": "human", "value": "<image>\nWhat is it?"},
        {"from": "gpt", "value": first},
        {"from": "human", "value": "And the colour?"},
    ]
    text = render(turns, "internvl2_5", [tokens], add_generation_prompt=True)
    assert ids.tolist() == bot.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_video_is_one_tile_per_frame(bot, tmp_path):
    gif = tmp_path / "clip.gif"
    frames = [Image.new("RGB", (40, 30), (20 * i, 100, 200 - 20 * i)) for i in range(10)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    ids, tiles = Conversation(bot, video=gif, num_frames=4).prompt("What happens?")
    assert tiles.shape == (4, 3, bot.settings.image_size, bot.settings.image_size)
    context = bot.tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    assert int((ids == context).sum()) == 4 * bot.settings.tokens_per_tile
    assert "Frame-1: <img>" in bot.tokenizer.decode(ids) and "Frame-4: <img>" in bot.tokenizer.decode(ids)
    with pytest.raises(ValueError, match="not both"):
        Conversation(bot, [PHOTO], video=gif).prompt("?")


def test_interactive_questions_end_at_empty_line_exit_or_eof():
    assert list(stdin_questions(io.StringIO("a b\n c \n/exit\nlater\n"))) == ["a b", "c"]
    assert list(stdin_questions(io.StringIO("one\n\ntwo\n"))) == ["one"]
    assert list(stdin_questions(io.StringIO("one\ntwo"))) == ["one", "two"]


def test_infer_answers_every_line_in_order(bot, tiny_vlm_dir, tmp_path):
    (tmp_path / "media").mkdir()
    for name in ("image1.jpg", "image2.jpg"):
        (tmp_path / "media" / name).write_bytes((IMAGES / name).read_bytes())
    lines = [
        {"id": "a", "question": "What is shown?", "image": "media/image1.jpg"},
        {"id": "b", "question": "Compare <image> and <image>.", "images": ["media/image1.jpg", "media/image2.jpg"]},
        {"question": "Say hello."},
        {"id": 7, "image": "media/image2.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it."}, {"from": "gpt", "value": "ignored"}]},
    ]  # fmt: skip
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = infer(
        source, tmp_path / "answers.jsonl", tiny_vlm_dir, batch_size=3, max_new_tokens=5, progress=False
    )
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["a", "b", 3, 7]
    assert [a["question"] for a in answers] == [
        "What is shown?",
        lines[1]["question"],
        "Say hello.",
        "<image>\nDescribe it.",
    ]
    media = [
        [IMAGES / "image1.jpg"],
        [IMAGES / "image1.jpg", IMAGES / "image2.jpg"],
        [],
        [IMAGES / "image2.jpg"],
    ]
    alone = [Conversation(bot, m).ask(a["question"], max_new_tokens=5) for a, m in zip(answers, media)]
    assert [a["answer"] for a in answers] == alone  # batched answers are the one-by-one answers


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "must be a JSON object"),
        ('{"id": 1}', "needs a 'question'"),
        ('{"question": "q", "image": "missing.jpg"}', "does not exist"),
        ('{"question": "q", "image": "x.jpg", "video": "x.jpg"}', "not both"),
        ('{"question": "q", "image": 3}', "a path or a list of paths"),
        ('{"conversations": [{"from": "gpt", "value": "a"}]}', "expected 'human'"),
        (
            '{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},'
            ' {"from": "human", "value": "c"}]}',
            "one human turn",
        ),
    ],
)
def test_infer_names_the_bad_line(tmp_path, line, message):
    (tmp_path / "x.jpg").write_bytes(PHOTO.read_bytes())
    source = tmp_path / "questions.jsonl"
    source.write_text('{"question": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"questions.jsonl:2: .*{message}"):
        read_questions(source)


def test_chat_from_a_lightning_checkpoint(tiny_components, tmp_path):
    """A `.ckpt` answers like the model it holds (its tokenizer found from the run's components)."""
    module = make_module(tiny_components, lr=1e-2)
    collate = PackingCollator(image_size=module.model.config.vision_config.image_size[0])
    batch = collate([[make_sample("a", 16, 1, module.model, 1)]])
    trainer = fit_batches(module, [batch])
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    from_ckpt = Conversation(load_chatbot(tmp_path / "last.ckpt"), [PHOTO])
    trained = Chatbot(module.model.eval(), load_tokenizer(tiny_components[1]), from_ckpt.bot.settings)
    assert from_ckpt.bot.settings.max_num == EncodeConfig().max_dynamic_patch  # no record: the default
    question = "What is in the picture?"
    assert from_ckpt.ask(question, max_new_tokens=5) == Conversation(trained, [PHOTO]).ask(
        question, max_new_tokens=5
    )
