"""Chat templates: exact rendered strings, exact label masks, BOS rules, image splicing, errors."""

from __future__ import annotations

import pytest
import torch

from internvl_lightning.constants import IGNORE_INDEX, IMG_CONTEXT_TOKEN
from internvl_lightning.data.schema import InvalidSample, SampleError, SampleTooLong
from internvl_lightning.data.templates import (
    TEMPLATES,
    expand_video,
    image_string,
    render,
    render_with_labels,
    tokenize,
)
from internvl_lightning.model.components import build_tokenizer
from internvl_lightning.tokenizer import add_vlm_tokens

SYS_VL = TEMPLATES["internvl2_5"].system_message
SYS_LM = TEMPLATES["Hermes-2"].system_message
PHI3_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


def _tok(tmp_path_factory, style: str, extra: list[str] | None = None):
    tok = build_tokenizer(tmp_path_factory.mktemp(style), style=style)
    add_vlm_tokens(tok)
    if extra:
        tok.add_tokens(extra, special_tokens=True)
    return tok


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return _tok(tmp_path_factory, "qwen2", PHI3_MARKERS)  # phi3 markers too, so one tokenizer serves all


@pytest.fixture(scope="module")
def internlm(tmp_path_factory):
    return _tok(tmp_path_factory, "internlm2", PHI3_MARKERS)


def conv(*values: str, system: str | None = None) -> list[dict]:
    turns = [{"from": "system", "value": system}] if system is not None else []
    return turns + [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


ONE = conv("<image>\nWhat is this?", "A cat.")
TWO = conv("<image>\nWhat is this?", "A cat.", "What colour?", "red")
CTX3 = IMG_CONTEXT_TOKEN * 3

# Exact renderings of ONE with 3 context tokens, per template (InternVL's internvl_chat/internvl/conversation.py).
RENDERED_ONE = {
    "internvl2_5": f"<|im_start|>system\n{SYS_VL}<|im_end|>\n<|im_start|>user\n<img>{CTX3}</img>\nWhat is this?"
    "<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n",
    "Hermes-2": f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\n<img>{CTX3}</img>\nWhat is this?"
    "<|im_end|><|im_start|>assistant\nA cat.<|im_end|>",
    "internlm2-chat": f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\n<img>{CTX3}</img>\nWhat is this?"
    "<|im_end|><|im_start|>assistant\nA cat.<|im_end|>",
    "phi3-chat": f"<|system|>\n{SYS_LM}<|end|><|user|>\n<img>{CTX3}</img>\nWhat is this?<|end|><|assistant|>\nA cat.<|end|>",
}

# Exact label masks of TWO with 3 context tokens: trained spans in [[...]] (render_with_labels).
MASKED_TWO = {
    "internvl2_5": f"<|im_start|>system\n{SYS_VL}<|im_end|>\n<|im_start|>user\n<img><IMG_CONTEXT>×3</img>\nWhat is this?"
    "<|im_end|>\n<|im_start|>assistant\n[[A cat.<|im_end|>]]\n<|im_start|>user\nWhat colour?<|im_end|>\n"
    "<|im_start|>assistant\n[[red<|im_end|>]]\n",
    "Hermes-2": f"<|im_start|>system\n{SYS_LM}<|im_end|><|im_start|>user\n<img><IMG_CONTEXT>×3</img>\nWhat is this?"
    "<|im_end|><|im_start|>assistant\n[[A cat.<|im_end|>]]<|im_start|>user\nWhat colour?<|im_end|>"
    "<|im_start|>assistant\n[[red<|im_end|>]]",
    "phi3-chat": f"<|system|>\n{SYS_LM}<|end|><|user|>\n<img><IMG_CONTEXT>×3</img>\nWhat is this?<|end|>"
    "<|assistant|>\n[[A cat.<|end|>]]<|user|>\nWhat colour?<|end|><|assistant|>\n[[red<|end|>]]",
}
MASKED_TWO["internlm2-chat"] = MASKED_TWO["Hermes-2"]


def whole(tok, text: str) -> list[int]:
    """Encode the whole rendered string at once (auto-BOS included, as a chat tokenizer would)."""
    return tok(text, add_special_tokens=True)["input_ids"]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_render_exact(template):
    assert render(ONE, template, [3]) == RENDERED_ONE[template]


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_label_mask_exact_multi_turn(qwen, template):
    ids, labels = tokenize(TWO, qwen, template, [3], 4096)
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    assert render_with_labels(ids, labels, qwen) == MASKED_TWO[template]
    assert ids.tolist() == whole(qwen, render(TWO, template, [3]))  # turn-wise == whole string
    trained = labels != IGNORE_INDEX
    assert torch.equal(labels[trained], ids[trained])
    end = TEMPLATES[template].end
    assert qwen.decode(ids[trained]) == f"A cat.{end}red{end}"


def test_internvl2_5_mask_positions(qwen):
    """Numeric check: prefix and trailing newline untrained, answer + <|im_end|> trained, nothing else."""
    ids, labels = tokenize(ONE, qwen, "internvl2_5", [3], 4096)
    answer = qwen.encode("A cat.<|im_end|>", add_special_tokens=False)
    n = len(ids)
    assert labels[: n - len(answer) - 1].eq(IGNORE_INDEX).all()
    assert labels[n - len(answer) - 1 : n - 1].tolist() == answer
    assert labels[-1] == IGNORE_INDEX and qwen.decode(ids[-1:]) == "\n"
    prefix = qwen.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert ids[n - len(answer) - 1 - len(prefix) : n - len(answer) - 1].tolist() == prefix


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_internlm2_tokenizer_one_bos(internlm, qwen, template):
    ids, labels = tokenize(TWO, internlm, template, [3], 4096)
    bos = internlm.bos_token_id
    assert ids[0] == bos and int((ids == bos).sum()) == 1 and labels[0] == IGNORE_INDEX
    assert ids.tolist() == whole(internlm, render(TWO, template, [3]))
    assert render_with_labels(ids, labels, internlm) == "<s>" + MASKED_TWO[template]
    q_ids, _ = tokenize(TWO, qwen, template, [3], 4096)  # Qwen style: no BOS at all
    assert q_ids[0] == qwen.convert_tokens_to_ids(TEMPLATES[template].markers[0])


def test_multi_image_different_counts(qwen):
    c = conv("Image-1: <image>\nImage-2: <image>\nCompare them.", "The second is larger.")
    text = render(c, "internvl2_5", [2, 5])
    assert f"Image-1: {image_string(2)}\nImage-2: {image_string(5)}\nCompare them." in text
    ids, labels = tokenize(c, qwen, "internvl2_5", [2, 5], 4096)
    assert ids.tolist() == whole(qwen, text)
    shown = render_with_labels(ids, labels, qwen)
    assert "Image-1: <img><IMG_CONTEXT>×2</img>\nImage-2: <img><IMG_CONTEXT>×5</img>\nCompare" in shown
    assert shown.endswith("<|im_start|>assistant\n[[The second is larger.<|im_end|>]]\n")


def test_images_in_later_turns_keep_order(qwen):
    c = conv("<image>\nFirst?", "one", "And <image>?", "two")
    ids, labels = tokenize(c, qwen, "internvl2_5", [1, 4], 4096)
    shown = render_with_labels(ids, labels, qwen)
    assert (
        shown.index("<IMG_CONTEXT>×1")
        < shown.index("[[one")
        < shown.index("<IMG_CONTEXT>×4")
        < shown.index("[[two")
    )


def test_system_override(qwen):
    c = conv("Hi", "Hello.", system="You are terse.")
    assert render(c, "internvl2_5").startswith(
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi"
    )
    # a leading system turn beats the system_message argument, which beats the template default
    assert render(c, "internvl2_5", system_message="X").startswith(
        "<|im_start|>system\nYou are terse.<|im_end|>"
    )
    assert render(conv("Hi", "Hello."), "phi3-chat", system_message="X").startswith(
        "<|system|>\nX<|end|><|user|>"
    )
    assert render(conv("Hi", "Ok", system=""), "Hermes-2").startswith(
        "<|im_start|>system\n<|im_end|><|im_start|>user"
    )
    ids, labels = tokenize(c, qwen, "internvl2_5", None, 4096)
    assert render_with_labels(ids, labels, qwen) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n[[Hello.<|im_end|>]]\n"
    )


def test_pure_text(qwen, internlm):
    c = conv("Describe the picture in detail.", "There are three objects.")
    for tok in (qwen, internlm):
        ids, labels = tokenize(c, tok, "internvl2_5", [], 4096)
        assert IMG_CONTEXT_TOKEN not in tok.decode(ids)
        assert ids.tolist() == whole(tok, render(c, "internvl2_5"))
        assert tok.decode(ids[labels != IGNORE_INDEX]) == "There are three objects.<|im_end|>"


def test_video_frame_prompt(qwen):
    c = expand_video(conv("<video>\nWhat happens?", "The ball moves down."), 3)
    assert c[0]["value"] == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nWhat happens?"
    ids, labels = tokenize(c, qwen, "internvl2_5", [2, 2, 2], 4096)
    shown = render_with_labels(ids, labels, qwen)
    frames = "".join(f"Frame-{i}: <img><IMG_CONTEXT>×2</img>\n" for i in (1, 2, 3))
    assert f"<|im_start|>user\n{frames}What happens?<|im_end|>" in shown
    assert ids.tolist() == whole(qwen, render(c, "internvl2_5", [2, 2, 2]))
    assert expand_video(conv("<video> Go", "ok"), 2)[0]["value"] == "Frame-1: <image>\nFrame-2: <image> Go"


def test_internlm2_chat_strips_values():
    c = conv("  <image>\nWhat?  ", "\n Yes. \n")
    assert render(c, "internlm2-chat", [1]).endswith(
        f"<|im_start|>user\n{image_string(1)}\nWhat?<|im_end|><|im_start|>assistant\nYes.<|im_end|>"
    )
    assert "  <img>" in render(c, "internvl2_5", [1])  # internvl2_5 keeps values as written


@pytest.mark.parametrize(
    "values",
    [
        ("Describe the picture in detail.", "A photo of a cat sitting on a wooden table."),
        ("one two three", " leading space", "again", "trailing space "),
        ("数一数：几个？", "三个。", "Answer with the option's letter.", "B"),
        ("<image>\n<image>\ncompare", "12 and 3"),
    ],
)
def test_turnwise_equals_whole_string(qwen, internlm, values):
    c = conv(*values)
    counts = [4] * values[0].count("<image>")
    for tok in (qwen, internlm):
        for template in TEMPLATES:
            ids, _ = tokenize(c, tok, template, counts, 8192)
            assert ids.tolist() == whole(tok, render(c, template, counts)), (template, values)


def test_answers_and_end_tokens_are_all_that_is_trained(internlm):
    answers = ["A cat.", "red", "three objects"]
    c = conv("<image>\nWhat is this?", answers[0], "Colour?", answers[1], "How many?", answers[2])
    ids, labels = tokenize(c, internlm, "internvl2_5", [7], 4096)
    assert internlm.decode(ids[labels != IGNORE_INDEX]) == "".join(a + "<|im_end|>" for a in answers)


def test_add_generation_prompt():
    c = conv("<image>\nWhat is this?")
    assert render(c, "internvl2_5", [1], add_generation_prompt=True).endswith(
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(c, "internvl2_5", [1]).endswith("What is this?<|im_end|>\n")
    assert render(c, "internvl2_5").endswith("<image>\nWhat is this?<|im_end|>\n")  # counts None: kept


def test_too_long_raises_not_truncates(qwen):
    ids, _ = tokenize(ONE, qwen, "internvl2_5", [3], 4096)
    assert tokenize(ONE, qwen, "internvl2_5", [3], len(ids))[0].tolist() == ids.tolist()  # exactly fits
    with pytest.raises(SampleTooLong, match=rf"{len(ids)} tokens > max_length {len(ids) - 1}") as e:
        tokenize(ONE, qwen, "internvl2_5", [3], len(ids) - 1, sample_id="s7")
    assert isinstance(e.value, SampleError) and isinstance(e.value, ValueError)
    assert e.value.sample_id == "s7" and "max_length" in e.value.reason
    with pytest.raises(SampleTooLong, match="image tokens alone"):  # rejected before any BPE work
        tokenize(ONE, qwen, "internvl2_5", [100_000], 16384)


def test_image_count_mismatch(qwen):
    with pytest.raises(InvalidSample, match="1 '<image>' placeholder.*2 entries"):
        tokenize(ONE, qwen, "internvl2_5", [3, 3], 4096)
    with pytest.raises(InvalidSample, match="0 entries"):
        tokenize(ONE, qwen, "internvl2_5", None, 4096)
    with pytest.raises(InvalidSample, match="2 entries"):
        render(ONE, "internvl2_5", [3, 3])


def test_reserved_token_in_text(qwen):
    with pytest.raises(InvalidSample, match="reserved token"):
        tokenize(conv("<image> and <IMG_CONTEXT>", "x"), qwen, "internvl2_5", [2], 4096)
    with pytest.raises(InvalidSample, match="reserved token"):
        tokenize(conv("hi", "an <IMG_CONTEXT> here"), qwen, "internvl2_5", [], 4096)


def test_bad_conversation_and_template(qwen):
    with pytest.raises(InvalidSample, match="must end with a 'gpt' answer"):
        tokenize(conv("hi"), qwen, "internvl2_5", None, 4096, sample_id="a1")
    with pytest.raises(InvalidSample, match="expected 'human'"):
        tokenize([{"from": "gpt", "value": "x"}], qwen, "internvl2_5")
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        render(ONE, "vicuna")


def test_tokenizer_without_chat_markers(tmp_path, qwen):
    plain = build_tokenizer(tmp_path / "q", style="qwen2")  # has <|im_*|> but no phi3 markers
    add_vlm_tokens(plain)
    with pytest.raises(ValueError, match=r"does not know the chat token '<\|system\|>'"):
        tokenize(ONE, plain, "phi3-chat", [3], 4096)
    bare = build_tokenizer(tmp_path / "b", style="qwen2")  # chat markers, but no VLM tokens
    with pytest.raises(ValueError, match="add_vlm_tokens"):
        tokenize(ONE, bare, "internvl2_5", [3], 4096)
    tokenize(conv("hi", "ok"), bare, "internvl2_5", None, 4096)  # pure text needs no VLM tokens
    add_vlm_tokens(bare)  # the per-tokenizer cache must notice the new tokens
    ids, _ = tokenize(ONE, bare, "internvl2_5", [3], 4096)
    assert int((ids == bare.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)).sum()) == 3


class _SpyTokenizer:
    """A slow-path tokenizer (no Rust backend exposed) that records every string it encodes."""

    def __init__(self, tok):
        self._tok, self.seen = tok, []
        self.bos_token_id = tok.bos_token_id

    def encode(self, text, add_special_tokens=True):
        self.seen.append(text)
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def __len__(self):
        return len(self._tok)


def test_context_runs_never_go_through_bpe(qwen):
    spy = _SpyTokenizer(qwen)
    c = conv("<image>\n<image>\nWhat?", "ok")
    ids, _ = tokenize(c, spy, "internvl2_5", [256 * 12, 256], 16384)
    assert not any(IMG_CONTEXT_TOKEN * 2 in s for s in spy.seen)  # each image went in as one marker
    assert sum(len(s) for s in spy.seen) < 1000
    assert int((ids == qwen.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)).sum()) == 256 * 13
    assert ids.tolist() == tokenize(c, qwen, "internvl2_5", [256 * 12, 256], 16384)[0].tolist()


def test_render_with_labels_accepts_lists(qwen):
    ctx = qwen.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    hi = qwen.encode("hi", add_special_tokens=False)
    ids = [ctx] * 4 + hi
    assert render_with_labels(ids, [IGNORE_INDEX] * 4 + hi, qwen) == "<IMG_CONTEXT>×4[[hi]]"


def test_a_new_template_is_one_registry_entry(qwen, monkeypatch, tmp_path):
    """docs/ARCHITECTURE.md, "add a chat template": one ChatTemplate in TEMPLATES; rendering, label
    masks, the shard tool and training read it by name."""
    from internvl_lightning.constants import IM_END, IM_START
    from internvl_lightning.data.encode import EncodeConfig
    from internvl_lightning.data.shard import shard_dataset
    from internvl_lightning.data.templates import ChatTemplate
    from tests.helpers.datagen import write_dataset

    plain = ChatTemplate(
        "plain-im",
        system_prefix=f"{IM_START}system\n",
        system_message="Be brief.",
        user=f"{IM_START}human\n",
        assistant=f"{IM_START}bot\n",
        end=IM_END,
    )
    with pytest.raises(ValueError, match="unknown chat template 'plain-im'"):
        render(ONE, "plain-im", [3])
    monkeypatch.setitem(TEMPLATES, "plain-im", plain)
    assert render(ONE, "plain-im", [3]) == (
        f"<|im_start|>system\nBe brief.<|im_end|><|im_start|>human\n<img>{CTX3}</img>\nWhat is this?"
        "<|im_end|><|im_start|>bot\nA cat.<|im_end|>"
    )
    ids, labels = tokenize(ONE, qwen, "plain-im", [3])
    assert qwen.decode(ids[labels != IGNORE_INDEX]) == "A cat.<|im_end|>"
    data = write_dataset(tmp_path / "raw")
    cfg = EncodeConfig(template="plain-im", image_size=64, tokens_per_tile=16, max_length=1024)
    report = shard_dataset(data.meta, qwen, tmp_path / "shards", cfg, progress=False)
    assert sum(d.kept for d in report.datasets.values()) > 0
