"""Turn whatever the user points an export at into (model, tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase

from ..model.build import load_pretrained_vlm, load_tokenizer
from ..model.convert import is_vlm_dir


def _tokenizer(tokenizer, fallback_dir: str | Path | None) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    source = tokenizer or fallback_dir
    if source is None:
        raise ValueError("no tokenizer: pass tokenizer=<LLM dir or tokenizer object>")
    return load_tokenizer(source)


def load_lightning_checkpoint(path: str | Path) -> tuple[InternVLForConditionalGeneration, str | None]:
    """Rebuild the model of an `InternVLChat` Lightning checkpoint; returns it and its tokenizer dir."""
    from ..training.module import InternVLChat

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    module = InternVLChat(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    module.configure_model()
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    # Keys absent from the checkpoint keep the weights configure_model() loaded from the run's
    # components: checkpoints saved with exclude_frozen_parameters hold only what trained.
    _, unexpected = module.model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint {path} has keys the model lacks: {unexpected[:10]}")
    return module.model.eval(), hparams.get("init_from") or hparams.get("llm")


def resolve_model(source, tokenizer=None) -> tuple[InternVLForConditionalGeneration, PreTrainedTokenizerBase]:
    """A model object, a stage output dir, an original-layout dir, or a Lightning `.ckpt` file."""
    from .original import is_original_dir, load_original

    if isinstance(source, InternVLForConditionalGeneration):
        return source, _tokenizer(tokenizer, None)
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt":
        model, tok_dir = load_lightning_checkpoint(path)
        return model, _tokenizer(tokenizer, tok_dir)
    if path.is_dir() and is_vlm_dir(path):
        return load_pretrained_vlm(path), _tokenizer(tokenizer, path)
    if path.is_dir() and is_original_dir(path):
        return load_original(path), _tokenizer(tokenizer, path)
    raise ValueError(
        f"cannot export {source}: expected a model, a Lightning .ckpt file, an HF-native InternVL "
        "directory or an original-layout InternVL directory"
    )
