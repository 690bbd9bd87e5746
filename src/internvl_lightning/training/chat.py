"""Talk to a trained model: the `chat` command, one question or a conversation read from stdin.

Prompts are built the way training builds samples: the checkpoint's chat template, tile budget,
minimum tiles and normalisation (from its training record, `evaluation.generate.read_settings`),
several images sharing the tile budget, and a video as one tile per frame behind InternVL's
``Frame-i: <image>`` lines. The images or the video belong to the first question, as in training's
multi-turn samples; later questions see the whole history. Answers are greedy (no sampling) and
are streamed token by token while they are generated.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import GenerationConfig, TextStreamer

from ..constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, VIDEO_PLACEHOLDER
from ..data.encode import EncodeConfig, video_conversations
from ..data.templates import tokenize
from ..data.video import read_video
from ..evaluation.generate import EvalSettings, Request, encode_request, read_settings, stop_ids
from .checkpoint import load_checkpoint
from .commands import DTYPES
from .self_contained import training_record

VIDEO_FRAMES = 8  # frames sampled from a video ("middle" of equal intervals: the same every time)
END_OF_CHAT = ("", "/exit")  # an empty line or /exit ends an interactive chat


@dataclass
class Chatbot:
    """A model placed for answering, its tokenizer, and the prompt settings it was trained with."""

    model: Any
    tokenizer: Any
    settings: EvalSettings


def load_chatbot(
    source: str | Path,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    dtype: DTYPES | None = None,
    max_num: int | None = None,
    trust_remote_code: bool = False,
) -> Chatbot:
    """Load any checkpoint kind for answering; ``max_num`` defaults to the trained tile budget."""
    cuda = torch.cuda.is_available() and device in (None, "cuda")
    where = "cuda" if cuda else (device or "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if cuda else torch.float32)
    model, tok = load_checkpoint(source, tokenizer, trust_remote_code)
    model = model.to(device=where, dtype=torch_dtype).eval()
    record = training_record(source)
    if max_num is None:
        max_num = int(record.get("max_dynamic_patch") or EncodeConfig.max_dynamic_patch)
    return Chatbot(model, tok, read_settings(record, model, max_num=max_num))


def media_request(
    text: str,
    settings: EvalSettings,
    images: Sequence[str | Path] = (),
    video: str | Path | None = None,
    num_frames: int = VIDEO_FRAMES,
) -> tuple[Request, EvalSettings]:
    """A question about images or a video, and the settings it is encoded with.

    Images without an ``<image>`` placeholder in ``text`` go first, one per line. A video's
    ``<video>`` placeholder (or, without one, the start of the text) becomes the frame lines,
    and each frame is one tile without a thumbnail, as training encodes videos.
    """
    if video is None:
        return Request(text, [(str(p), str(p)) for p in images]), settings
    if images:
        raise ValueError("ask about images or about a video, not both (training samples have one kind)")
    frames = read_video(
        str(video), (num_frames, num_frames), "middle", rng=random.Random(0), where=str(video)
    )
    if len(frames) != num_frames:
        raise ValueError(f"{video}: gave {len(frames)} frames, expected {num_frames}")
    if VIDEO_PLACEHOLDER not in text:
        text = f"{VIDEO_PLACEHOLDER}\n{text}"
    turn = video_conversations([{"from": "human", "value": text}], num_frames)[0]
    return Request(turn["value"], list(frames)), replace(settings, max_num=num_frames, min_num=1)


def last_answer_start(labels: torch.Tensor) -> int:
    """Where the last trained span (the open answer) begins in a tokenized conversation."""
    trained = (labels != IGNORE_INDEX).tolist()
    starts = [i for i, t in enumerate(trained) if t and (i == 0 or not trained[i - 1])]
    if not starts:
        raise ValueError("the conversation has no answer turn to continue")
    return starts[-1]


@dataclass
class Conversation:
    """A chat about the media of its first question; ``ask`` answers and remembers each turn."""

    bot: Chatbot
    images: Sequence[str | Path] = ()
    video: str | Path | None = None
    num_frames: int = VIDEO_FRAMES
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer) so far
    # the first question's text with placeholders, tokens per image and tiles, computed once
    _first: tuple[str, list[int], torch.Tensor | None] | None = field(default=None, init=False, repr=False)

    def _media(self, question: str) -> tuple[str, list[int], torch.Tensor | None]:
        """The first question's text with its placeholders, image-token counts and tiles (once)."""
        if self._first is None:
            request, settings = media_request(
                question, self.bot.settings, self.images, self.video, self.num_frames
            )
            ids, tiles = encode_request(request, self.bot.tokenizer, settings)
            context = self.bot.tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
            counts = [len(list(run)) for token, run in groupby(ids.tolist()) if token == context]
            missing = len(request.images) - request.text.count(IMAGE_PLACEHOLDER)
            self._first = (f"{IMAGE_PLACEHOLDER}\n" * missing + request.text, counts, tiles)
        return self._first

    def prompt(self, question: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompt ids (the history, then ``question``, then the open answer) and the media tiles."""
        first = self.turns[0][0] if self.turns else question
        text, counts, tiles = self._media(first)
        conversation = []
        for asked, answered in [*self.turns, (question, "")]:
            value = text if not conversation else asked
            conversation += [{"from": "human", "value": value}, {"from": "gpt", "value": answered}]
        s = self.bot.settings
        ids, labels = tokenize(
            conversation, self.bot.tokenizer, s.template, counts, system_message=s.system_message
        )
        return ids[: last_answer_start(labels)], tiles

    def ask(self, question: str, streamer: Any = None, max_new_tokens: int = 512) -> str:
        """The greedy answer to ``question`` (streamed to ``streamer`` as it is generated)."""
        ids, tiles = self.prompt(question)
        answer = generate_answer(self.bot, ids, tiles, max_new_tokens, streamer)
        self.turns.append((question, answer))
        return answer


@torch.inference_mode()
def generate_answer(
    bot: Chatbot, ids: torch.Tensor, tiles: torch.Tensor | None, max_new_tokens: int, streamer: Any = None
) -> str:
    """Greedy continuation of one prompt, cut at the template's end of turn (decoded, stripped)."""
    model, tok = bot.model, bot.tokenizer
    stops = stop_ids(tok, bot.settings.template)
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0],
        use_cache=True,
    )
    kwargs: dict[str, Any] = {}
    if tiles is not None:
        kwargs["pixel_values"] = tiles.to(device=model.device, dtype=model.dtype)
    out = model.generate(
        input_ids=ids[None].to(model.device),
        attention_mask=torch.ones_like(ids)[None].to(model.device),
        generation_config=config,
        streamer=streamer,
        **kwargs,
    )
    new = out[0, ids.shape[0] :].tolist()
    cut = next((k for k, t in enumerate(new) if t in stops), len(new))
    return tok.decode(new[:cut], skip_special_tokens=True).strip()


def stdin_questions(stream: TextIO, prompt: TextIO | None = None) -> Iterator[str]:
    """Questions read line by line until the end of input, an empty line or ``/exit``."""
    while True:
        if prompt is not None:
            print("> ", end="", file=prompt, flush=True)
        line = stream.readline()
        if line.strip() in END_OF_CHAT:
            return
        yield line.strip()


def chat(
    model: str | Path,
    question: str | None = None,
    image: list[str] | None = None,
    video: str | None = None,
    num_frames: int = VIDEO_FRAMES,
    max_new_tokens: int = 512,
    max_num: int | None = None,
    tokenizer: str | Path | None = None,
    device: str | None = None,
    dtype: DTYPES | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Ask a trained model about images or a video; the answer is printed as it is generated.

    ``python -m internvl_lightning chat --model DIR --image photo.jpg "What is in the picture?"``
    answers one question. Without a question, the questions are read from standard input, one
    per line, until the end of input, an empty line or ``/exit``; each answer sees the earlier
    turns. The images or the video go with the first question. Prompts use the template, tiling
    and normalisation the model was trained with (its training record); answers are greedy.

    Args:
        model: stage output, HF-native export, original-layout InternVL dir or Lightning .ckpt.
        question: the question (may also be given bare, after the options); none: read stdin.
        image: an image file; repeat ``--image`` for several (they share the tile budget).
        video: a video file, .gif or folder of frames (instead of images).
        num_frames: frames taken from the video (one tile each).
        max_new_tokens: longest answer in tokens.
        max_num: tiles per image (default: the tile budget the model was trained with).
        tokenizer: tokenizer dir (default: the one that goes with the checkpoint).
        device: default cuda when available, else cpu.
        dtype: default bfloat16 on a GPU, float32 on the CPU.
        trust_remote_code: let a tokenizer defined by its own code (``tokenization_*.py``) run it.
    """
    bot = load_chatbot(model, tokenizer, device, dtype, max_num, trust_remote_code)
    conversation = Conversation(bot, image or [], video, num_frames)
    if question is not None:
        questions: Iterator[str] = iter([question])
    else:
        questions = stdin_questions(sys.stdin, sys.stderr if sys.stdin.isatty() else None)
    for q in questions:
        streamer = TextStreamer(bot.tokenizer, skip_prompt=True, skip_special_tokens=True)
        conversation.ask(q, streamer, max_new_tokens)
