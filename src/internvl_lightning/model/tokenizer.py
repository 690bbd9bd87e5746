"""Tokenizers: build a tiny real one locally, and add the VLM special tokens to any.

Real runs load the LLM's own tokenizer from its directory. Tests and the demo need one that
behaves the same way (byte-level BPE, chat markers as single special tokens) but is trained
here, offline, in a second.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ..constants import ENDOFTEXT, IM_END, IM_START, VLM_SPECIAL_TOKENS

# A small English corpus so that common words become single tokens; any other text still
# tokenizes (byte-level alphabet), just into more pieces.
_BASE_CORPUS = [
    "The image shows a red circle, a blue square and a green triangle on a white background.",
    "Question: how many objects are there? Answer: there are three objects in the picture.",
    "Describe the picture in detail. What colour is the shape on the left of the image?",
    "A photo of a cat sitting on a wooden table next to a cup of coffee in the morning light.",
    "Frame-1: the ball is at the top. Frame-2: the ball moves down to the bottom of the frame.",
    "Answer with the option's letter from the given choices directly. A. yes B. no C. maybe D. none",
    "You are a helpful assistant. Please answer the question using a single word or phrase.",
    "Image-1 and Image-2 show different scenes; compare them and list what has changed.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 one two three four five six seven eight nine ten",
    "red green blue yellow purple orange black white gray circle square triangle star left right top bottom",
]

# Styles of tokenizer we can build: what the chat templates and BOS rules need to see.
#  - "qwen2": no BOS, <|endoftext|> pads, <|im_end|> ends a turn (Qwen2.5 family).
#  - "internlm2": a literal <s> BOS added at the start of every encode (add_bos_token=True),
#    </s> eos, <|im_start|>/<|im_end|> as chat markers (InternLM2.5 family).
_STYLES = {
    "qwen2": {
        "specials": [ENDOFTEXT, IM_START, IM_END],
        "config": {
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": None,
            "eos_token": IM_END,
            "pad_token": ENDOFTEXT,
            "unk_token": None,
            "add_bos_token": False,
        },
    },
    "internlm2": {
        "specials": ["<unk>", "<s>", "</s>", IM_START, IM_END],
        "config": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "</s>",
            "unk_token": "<unk>",
            "add_bos_token": True,
        },
    },
}


def build_tokenizer(
    out_dir: str | Path,
    style: str = "qwen2",
    corpus: list[str] | None = None,
    vocab_size: int = 1024,
    model_max_length: int = 16384,
    extra_tokens: tuple[str, ...] = (),
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer on ``corpus`` (plus a small base corpus) and save it.

    The directory then looks like a downloaded LLM's tokenizer (``tokenizer.json`` +
    ``tokenizer_config.json``) and is loaded back with ``AutoTokenizer``. ``extra_tokens`` are
    added as single special tokens after the BPE vocabulary.
    """
    if style not in _STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; choose one of {sorted(_STYLES)}")
    spec = _STYLES[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_BASE_CORPUS) + list(corpus or []), trainer)
    if extra_tokens:
        tok.add_special_tokens(list(extra_tokens))
    if spec["config"]["add_bos_token"]:
        bos = spec["config"]["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = dict(spec["config"], model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return AutoTokenizer.from_pretrained(str(out))


def load_with_vlm_tokens(
    path: str | Path, trust_remote_code: bool = False, check_chat: bool = True
) -> tuple[PreTrainedTokenizerBase, int]:
    """An LLM directory's tokenizer with InternVL's tokens added, and its length before them.

    ``check_chat``: fail unless the chat markers are single tokens (what the model builder needs;
    the shard tool leaves that to the template it renders with).
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types here; name the directory
        raise ValueError(f"could not load a tokenizer from {path}: {err}") from err
    before = len(tok)
    add_vlm_tokens(tok)
    if check_chat:
        check_chat_tokens(tok, where=str(path))
    return tok, before


def add_vlm_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ... (in InternVL's order); return how many were new."""
    return tokenizer.add_tokens(list(VLM_SPECIAL_TOKENS), special_tokens=True)


def check_chat_tokens(
    tokenizer: PreTrainedTokenizerBase, where: str, tokens: tuple[str, ...] = (IM_START, IM_END)
) -> None:
    """Fail clearly when a chat-template marker would be split into several tokens."""
    for token in tokens:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"tokenizer in {where} does not know the chat token {token!r} "
                f"(it encodes to {len(ids)} pieces); use the LLM's chat tokenizer or add it as a special token"
            )
