"""The LLM's tokenizer as the VLM uses it: loaded from a directory, with InternVL's tokens added.

One module for data/, model/, evaluation/ and export/ alike (owned by none of them), so that a
tokenizer means the same thing to the shard tool, the model builder and the evaluator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from .constants import IM_END, IM_START, VIDEO_PLACEHOLDER, VLM_SPECIAL_TOKENS
from .hub import model_dir

TokenizerSource = str | Path | PreTrainedTokenizerBase


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def tokenizer_code(config: dict) -> list[str]:
    """The classes a tokenizer's own code defines, from its ``tokenizer_config.json`` dict
    (``auto_map``: slow class first, then fast); empty for tokenizers transformers implements."""
    ref = (config.get("auto_map") or {}).get("AutoTokenizer") or []
    return [r for r in ([ref] if isinstance(ref, str) else ref) if r]


def read_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A directory's tokenizer (or a hub id's) as its LLM ships it (no VLM tokens added), with
    errors naming the dir.

    A tokenizer defined by its own code (InternLM2's ``tokenization_internlm2.py``) is read only
    with ``trust_remote_code=True``, and then by its first (slow) class, the one InternVL's
    trainer uses (``use_fast=False``). ``trust_remote_code`` is always decided, never None, so
    transformers never stops to ask.
    """
    d = model_dir(path)
    if not d.exists():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    config = _json(d / "tokenizer_config.json")
    code = tokenizer_code(config)
    if code and not trust_remote_code:
        module = code[0].rsplit(".", 1)[0]
        raise ValueError(
            f"the tokenizer in {d} is defined by its own code ({module}.py, named in "
            "tokenizer_config.json's auto_map); code from a checkpoint runs only when asked: read "
            "that file, then pass trust_remote_code=True (--model.trust_remote_code=true / --trust_remote_code)"
        )
    try:
        if code:
            cls = get_class_from_dynamic_module(code[0], str(d), local_files_only=True)
            return cls.from_pretrained(str(d))
        # A tokenizer that names its class needs no model config (an InternVL dir's config.json
        # describes a model transformers has no config class for, and would only warn).
        extra = {"config": PretrainedConfig()} if config.get("tokenizer_class") else {}
        return AutoTokenizer.from_pretrained(str(d), trust_remote_code=trust_remote_code, **extra)
    except Exception as err:  # transformers raises many types here; name the directory
        raise ValueError(f"could not load a tokenizer from {path}: {err}") from err


def token_id_in_files(path: str | Path, token: str) -> int | None:
    """The id a tokenizer dir's files give an added ``token`` (``tokenizer.json``,
    ``added_tokens.json`` or ``tokenizer_config.json``), read without running any tokenizer code."""
    d = Path(path)
    for added in _json(d / "tokenizer.json").get("added_tokens") or []:
        if added.get("content") == token:
            return int(added["id"])
    if token in (ids := _json(d / "added_tokens.json")):
        return int(ids[token])
    for key, entry in (_json(d / "tokenizer_config.json").get("added_tokens_decoder") or {}).items():
        if entry.get("content") == token:
            return int(key)
    return None


def load_tokenizer(source: TokenizerSource, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer the VLM reads: ``source`` (a directory, or a tokenizer object, changed in
    place) with InternVL's 9 tokens added in InternVL's order (a no-op where they already are)."""
    tok = source if isinstance(source, PreTrainedTokenizerBase) else read_tokenizer(source, trust_remote_code)
    add_vlm_tokens(tok)
    return tok


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


def tokenizer_info(tokenizer: PreTrainedTokenizerBase) -> dict:
    """Name (last path part), length and a hash of the vocabulary, added tokens included, except
    ``<video>``: HF-native exports (and so stage outputs) declare it for transformers' processor,
    but the encoder never emits it (a ``<video>`` placeholder becomes frame lines), so a stage
    output's tokenizer counts the same tokens as the LLM's it came from."""
    items = sorted((t, i) for t, i in tokenizer.get_vocab().items() if t != VIDEO_PLACEHOLDER)
    vocab = json.dumps(items, ensure_ascii=False)
    name = Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name
    return {
        "name": name,
        "vocab_size": len(tokenizer),
        "sha256": hashlib.sha256(vocab.encode()).hexdigest()[:16],
    }
