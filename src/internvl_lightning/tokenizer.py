"""The LLM's tokenizer as the VLM uses it: loaded from a directory, with InternVL's tokens added.

One module for data/, model/, evaluation/ and export/ alike (owned by none of them), so that a
tokenizer means the same thing to the shard tool, the model builder and the evaluator.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .constants import IM_END, IM_START, VLM_SPECIAL_TOKENS

TokenizerSource = str | Path | PreTrainedTokenizerBase


def read_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A directory's tokenizer as its LLM ships it (no VLM tokens added), with errors naming the dir.

    ``trust_remote_code`` is always decided (never None), so transformers never stops to ask.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as err:  # transformers raises many types here; name the directory
        raise ValueError(f"could not load a tokenizer from {path}: {err}") from err


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
    """Name (last path part), length and a hash of the full vocabulary, added tokens included."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    name = Path(str(getattr(tokenizer, "name_or_path", "") or "tokenizer")).name
    return {
        "name": name,
        "vocab_size": len(tokenizer),
        "sha256": hashlib.sha256(vocab.encode()).hexdigest()[:16],
    }
