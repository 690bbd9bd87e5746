"""Write component checkpoints that look exactly like downloaded ones (random weights, a tokenizer
trained here), and HF-layout copies of original-layout component dirs.

Two separate directories: a vision encoder (HF ``InternVLVisionModel`` or original InternViT layout)
and an LLM (a transformers causal LM, or the own layout of a family such as InternLM2) with a
locally built tokenizer that behaves like the family's (byte-level BPE, chat markers as single
special tokens), trained offline in a second. Tests and the demo assemble VLMs from them with
``build_model`` as users do from real checkpoints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    InternVLVisionModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..constants import ENDOFTEXT, IM_END, IM_START
from ..tokenizer import read_tokenizer
from .families import LLM_FAMILIES, llm_family, llm_family_running, vision_family
from .load import load_llm, load_vision
from .presets import LLMPreset, VisionPreset, VLMPreset, get_preset, text_config, vision_config

VISION_LAYOUTS = ("hf", "original")
# "hf", or the own layout of a family that runs as another (InternLM2 runs as Llama).
LLM_LAYOUTS = ("hf", *(name for name, f in LLM_FAMILIES.items() if not f.native))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")

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
    ``tokenizer_config.json``; the ``qwen2`` style also ``vocab.json`` + ``merges.txt``, as
    Qwen2.5 ships them) and is read back as any LLM's is. ``extra_tokens`` are added as single
    special tokens after the BPE vocabulary.
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
    if style == "qwen2":
        tok.model.save(str(out))  # vocab.json + merges.txt
    config = dict(spec["config"], model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return read_tokenizer(out)


def randomize_weights(model: PreTrainedModel, seed: int, scale: float = 0.02) -> None:
    """Perturb every parameter (after the model's own init) so that nothing is exactly 0 or 1:
    zero-initialised position embeddings or unit norms would hide conversion mistakes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _write(out: Path, sd: dict[str, torch.Tensor], config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_vision(p: VisionPreset, out_dir: str | Path, seed: int = 0, layout: str = "hf") -> Path:
    """A vision encoder directory: config.json + model.safetensors."""
    if layout not in VISION_LAYOUTS:
        raise ValueError(f"unknown vision layout {layout!r}; choose one of {VISION_LAYOUTS}")
    out = Path(out_dir)
    cfg = vision_config(p)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InternVLVisionModel(cfg)
    randomize_weights(model, seed + 1)
    if layout == "hf":
        model.save_pretrained(str(out))
    else:
        family = vision_family()
        _write(out, family.weights_from_hf(model.state_dict()), family.own_config(cfg))
    return out


def write_llm(
    p: LLMPreset,
    out_dir: str | Path,
    corpus: list[str] | None = None,
    seed: int = 0,
    layout: str = "hf",
    extra_tokens: tuple[str, ...] = (),
) -> Path:
    """An LLM directory: config.json + model.safetensors + tokenizer (built locally, with
    ``extra_tokens`` as single special tokens)."""
    if layout not in LLM_LAYOUTS:
        raise ValueError(f"unknown LLM layout {layout!r}; choose one of {LLM_LAYOUTS}")
    own = None if layout == "hf" else llm_family(layout)
    if own is not None and own.hf_model_type != llm_family(p.arch).hf_model_type:
        raise ValueError(f"LLM preset {p.name!r} ({p.arch}) cannot be written in the {layout} layout")
    out = Path(out_dir)
    tok = build_tokenizer(out, style=p.tokenizer_style, corpus=corpus, extra_tokens=extra_tokens)
    vocab = len(tok) if p.tokenizer_vocab is None else p.vocab_size
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    cfg = text_config(p, vocab_size=vocab, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    randomize_weights(model, seed + 1)
    if own is None:
        model.save_pretrained(str(out))
    else:
        _write(out, own.from_hf(model.state_dict(), cfg), own.own_config(cfg))
    return out


class Components(NamedTuple):
    """The two directories of :func:`write_components`."""

    vision: Path
    llm: Path

    def __str__(self) -> str:
        return f"vision: {self.vision}\nllm: {self.llm}"


def write_components(
    preset: str | VLMPreset = "tiny",
    out_dir: str | Path = "components",
    corpus: list[str] | Path | None = None,
    seed: int = 0,
    vision_layout: Literal["hf", "original"] = "hf",
    llm_layout: str = "hf",
) -> Components:
    """Write a vision encoder dir and an LLM dir (config, safetensors, tokenizer) from a preset.

    Same preset + seed gives the same weights in every layout (layouts are converted from one
    HF-native draw), so an original-layout pair has an exact HF-layout twin.

    Args:
        preset: a preset name of ``presets.py`` (tiny, tiny-internlm2, 1b, ...).
        out_dir: gets ``vision/`` and ``llm/``.
        corpus: text for the tokenizer: lines, or a text file with one sample per line.
        seed: weights and tokenizer are a function of preset and seed.
        vision_layout: ``hf`` (transformers' InternVLVisionModel) or ``original`` (InternViT).
        llm_layout: ``hf`` or a family's own layout (``internlm2``).

    Returns:
        The vision and LLM directories.
    """
    p = get_preset(preset)
    if isinstance(corpus, str | Path):
        corpus = Path(corpus).read_text().splitlines()
    out = Path(out_dir)
    vision_dir = write_vision(p.vision, out / "vision", seed=seed, layout=vision_layout)
    llm_dir = write_llm(p.llm, out / "llm", corpus=corpus, seed=seed + 100, layout=llm_layout)
    return Components(vision_dir, llm_dir)


def convert_vision_dir(src: str | Path, dst: str | Path) -> Path:
    """Write an HF-layout (``InternVLVisionModel``) copy of a vision encoder dir."""
    cfg, sd = load_vision(src)
    _write(Path(dst), sd, cfg.to_dict() | {"architectures": [vision_family().hf_architecture]})
    return Path(dst)


def convert_llm_dir(src: str | Path, dst: str | Path) -> Path:
    """Write a transformers-layout copy (weights, config, tokenizer files) of an LLM dir in its
    family's own layout (InternLM2 becomes ``LlamaForCausalLM``)."""
    cfg, sd = load_llm(src)
    out = Path(dst)
    _write(out, sd, llm_family_running(cfg).own_config(cfg))
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy(Path(src) / name, out / name)
    return out
