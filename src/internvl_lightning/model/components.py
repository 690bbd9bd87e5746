"""Write random-weight component checkpoints that look exactly like downloaded ones.

Two separate directories: a vision encoder (HF ``InternVLVisionModel`` or original InternViT layout)
and an LLM (transformers causal LM, or InternLM2 layout) with a locally built tokenizer. Tests and
the demo assemble VLMs from them with ``build_model`` like users do from real checkpoints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, InternVLVisionModel, PreTrainedModel

from .convert import (
    internlm2_config_from_llama,
    llama_to_internlm2,
    vision_config_to_original,
    vision_hf_to_original,
)
from .presets import LLMPreset, VisionPreset, VLMPreset, get_preset, text_config, vision_config
from .tokenizer import build_tokenizer

VISION_LAYOUTS = ("hf", "original")
LLM_LAYOUTS = ("hf", "internlm2")


def _randomize(model: PreTrainedModel, seed: int, scale: float = 0.02) -> None:
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
    _randomize(model, seed + 1)
    if layout == "hf":
        model.save_pretrained(str(out))
    else:
        _write(out, vision_hf_to_original(model.state_dict()), vision_config_to_original(cfg))
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
    if layout == "internlm2" and p.arch not in ("internlm2", "llama"):
        raise ValueError(f"LLM preset {p.name!r} ({p.arch}) cannot be written in the InternLM2 layout")
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
    _randomize(model, seed + 1)
    if layout == "hf":
        model.save_pretrained(str(out))
    else:
        sd = llama_to_internlm2(model.state_dict(), cfg.num_attention_heads, cfg.num_key_value_heads)
        _write(out, sd, internlm2_config_from_llama(cfg))
    return out


def write_components(
    preset: str | VLMPreset = "tiny",
    out_dir: str | Path = "components",
    corpus: list[str] | None = None,
    seed: int = 0,
    vision_layout: str = "hf",
    llm_layout: str = "hf",
) -> tuple[Path, Path]:
    """Write ``out_dir/vision`` and ``out_dir/llm`` for a preset; return both paths.

    Same preset + seed gives the same weights in every layout (layouts are converted from one
    HF-native draw), so an original-layout pair has an exact HF-layout twin.
    """
    p = get_preset(preset)
    out = Path(out_dir)
    vision_dir = write_vision(p.vision, out / "vision", seed=seed, layout=vision_layout)
    llm_dir = write_llm(p.llm, out / "llm", corpus=corpus, seed=seed + 100, layout=llm_layout)
    return vision_dir, llm_dir


def add_components_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``python -m internvl_lightning components``."""
    parser.add_argument("--preset", default="tiny", help="preset name (tiny, tiny-internlm2, 1b, ...)")
    parser.add_argument("--out", required=True, help="output directory (gets vision/ and llm/)")
    parser.add_argument("--vision-layout", choices=VISION_LAYOUTS, default="hf")
    parser.add_argument("--llm-layout", choices=LLM_LAYOUTS, default="hf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", default=None, help="text file, one line per sample, for the tokenizer")
    return parser


def run_components(args: argparse.Namespace) -> int:
    """Run the ``components`` command; return the exit status."""
    corpus = Path(args.corpus).read_text().splitlines() if args.corpus else None
    vision_dir, llm_dir = write_components(
        args.preset,
        args.out,
        corpus=corpus,
        seed=args.seed,
        vision_layout=args.vision_layout,
        llm_layout=args.llm_layout,
    )
    print(f"vision: {vision_dir}\nllm: {llm_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="internvl_lightning components", description=__doc__.splitlines()[0]
    )
    return run_components(add_components_args(parser).parse_args(argv))
