"""An export's tokenizer files, in the form every transformers / tokenizers version reads.

transformers 5 writes ``tokenizer.json`` with BPE merges as pairs, which tokenizers before 0.20
(transformers 4.37's) cannot parse, and calls a tokenizer it converted ``TokenizersBackend``, a
class transformers 4.x lacks. An export writes merges as ``"a b"`` strings (the form every
version parses) and a class name 4.x knows. Where the tokenizer came from a directory with the
LLM's own files (``vocab.json`` + ``merges.txt``, ``tokenizer.model``, ``tokenization_*.py``),
those are copied as they are, with the VLM tokens added where the LLM's own reader looks for
added tokens (``added_tokens.json`` and ``tokenizer_config.json``'s ``added_tokens_decoder``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Files an LLM ships its tokenizer in, besides tokenizer.json / tokenizer_config.json.
_OWN_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "special_tokens_map.json")
_OWN_CODE = "tokenization_*.py"
# Class names transformers 5 writes that transformers 4.x does not know.
_NEW_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Loader state transformers 5 writes into tokenizer_config.json; not facts of the tokenizer.
_LOADER_KEYS = ("backend", "is_local", "local_files_only")


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def legacy_merges(path: Path) -> bool:
    """Rewrite a tokenizer.json's BPE merges as ``"a b"`` strings; False when it cannot (no BPE
    model, or a merge part holding a space, which only the pair form can express)."""
    data = _read(path)
    merges = (data.get("model") or {}).get("merges")
    if not merges or isinstance(merges[0], str):
        return merges is not None
    if any(" " in part for pair in merges for part in pair):
        return False
    data["model"]["merges"] = [" ".join(pair) for pair in merges]
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return True


def own_tokenizer_files(directory: Path) -> list[Path]:
    """The LLM's own tokenizer files in ``directory`` (empty: it has only tokenizer.json)."""
    found = [directory / name for name in _OWN_FILES if (directory / name).is_file()]
    return found + sorted(directory.glob(_OWN_CODE))


def _added_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[int, Any]:
    return dict(sorted(tokenizer.added_tokens_decoder.items()))


def _entry(token: Any) -> dict[str, Any]:
    return {
        "content": str(token),
        "lstrip": bool(getattr(token, "lstrip", False)),
        "normalized": bool(getattr(token, "normalized", False)),
        "rstrip": bool(getattr(token, "rstrip", False)),
        "single_word": bool(getattr(token, "single_word", False)),
        "special": bool(getattr(token, "special", True)),
    }


def save_tokenizer(
    tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, template_file: bool = False
) -> list[str]:
    """Write ``tokenizer`` into ``out_dir`` for old and new readers alike; return the file names.

    The chat template goes into ``tokenizer_config.json`` (where transformers 4.x reads it);
    ``template_file`` keeps transformers 5's ``chat_template.jinja`` beside it as well.
    """
    out = Path(out_dir)
    tokenizer.save_pretrained(out)
    source = Path(str(tokenizer.name_or_path or ""))
    own = own_tokenizer_files(source) if source.is_dir() and source.resolve() != out.resolve() else []
    config = _read(out / "tokenizer_config.json")
    if own:
        for path in own:
            shutil.copyfile(path, out / path.name)
        added = _added_tokens(tokenizer)
        base = _read(source / "tokenizer_config.json")
        decoder = dict(base.get("added_tokens_decoder") or {})
        decoder.update({str(i): _entry(t) for i, t in added.items() if str(i) not in decoder})
        config = base | {"added_tokens_decoder": decoder}
        first_added = tokenizer.vocab_size  # the base vocabulary; ids from here on are added
        extra = _read(source / "added_tokens.json") | {
            str(t): i for i, t in added.items() if i >= first_added
        }
        if extra:
            _write(out / "added_tokens.json", extra)
        if not (source / "tokenizer.json").is_file():  # the LLM reads its own files only
            (out / "tokenizer.json").unlink(missing_ok=True)
    else:
        config["tokenizer_class"] = _NEW_CLASSES.get(
            config.get("tokenizer_class"), config.get("tokenizer_class")
        )
        for key in _LOADER_KEYS:
            config.pop(key, None)
    if tokenizer.chat_template and "chat_template" not in config:  # transformers 4.x reads it here
        config["chat_template"] = tokenizer.chat_template
    if not template_file:
        (out / "chat_template.jinja").unlink(missing_ok=True)
    _write(out / "tokenizer_config.json", config)
    if (out / "tokenizer.json").is_file() and not legacy_merges(out / "tokenizer.json"):
        log.warning(
            "%s: its BPE merges stay in the pair form (a merge part holds a space, or there are no "
            "merges); tokenizers before 0.20 (transformers 4.37's) cannot read this tokenizer.json",
            out / "tokenizer.json",
        )
    return sorted(
        p.name for p in out.iterdir() if p.name.startswith(("tokeni", "vocab", "merges", "added", "special"))
    )
