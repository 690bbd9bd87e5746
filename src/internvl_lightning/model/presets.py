"""Shapes of the published components (InternViT, Qwen2.5, InternLM2.5), the InternVL2.5 pairings,
and tiny debug variants; plus config builders and a meta-device model for planning.

Published VLMs untie the output layer and resize the vocabulary to len(tokenizer) + 9 special
tokens; with that, ``meta_model(name)`` reproduces the published parameter counts exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CONFIG_MAPPING, InternVLConfig, InternVLForConditionalGeneration, PretrainedConfig

from ..constants import IMG_CONTEXT_TOKEN, VLM_SPECIAL_TOKENS
from .config import internvl_config
from .families import llm_family, vision_family
from .parts import vlm_parts


@dataclass(frozen=True)
class VisionPreset:
    """InternViT shapes (original config names in comments)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    qkv_bias: bool
    qk_norm: bool  # qk_normalization
    norm_type: str  # "layer_norm" | "rms_norm"
    image_size: int = 448
    patch_size: int = 14
    layer_scale_init: float = 0.1  # initializer_factor
    layer_norm_eps: float = 1e-6


@dataclass(frozen=True)
class LLMPreset:
    """Decoder-only LLM shapes. ``vocab_size`` is the config's (embedding rows, often padded);
    ``tokenizer_vocab`` is len(tokenizer) (None: whatever the locally built tokenizer has)."""

    name: str
    arch: str  # an LLM family of families.py: "qwen2", "llama", "internlm2", ...
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tokenizer_vocab: int | None
    rope_theta: float
    tie_word_embeddings: bool
    rms_norm_eps: float
    max_position_embeddings: int
    head_dim: int | None = None  # None: hidden_size / num_heads (Qwen3 sets its own)

    @property
    def tokenizer_style(self) -> str:
        return llm_family(self.arch).tokenizer_style


@dataclass(frozen=True)
class VLMPreset:
    name: str
    vision: VisionPreset
    llm: LLMPreset
    downsample_ratio: float = 0.5


VISION_PRESETS = {
    p.name: p
    for p in (
        VisionPreset(
            "InternViT-300M-448px", 1024, 24, 16, 4096, qkv_bias=True, qk_norm=False, norm_type="layer_norm"
        ),
        VisionPreset(
            "InternViT-6B-448px", 3200, 45, 25, 12800, qkv_bias=False, qk_norm=True, norm_type="rms_norm"
        ),
        # 64px / 8px patches -> 8x8 grid -> 16 tokens per tile after pixel shuffle.
        VisionPreset(
            "tiny",
            64,
            2,
            4,
            128,
            qkv_bias=True,
            qk_norm=False,
            norm_type="layer_norm",
            image_size=64,
            patch_size=8,
        ),
    )
}

_QWEN_TOK = 151665  # len() of every Qwen2.5 tokenizer
_INTERNLM2_TOK = 92544
_QWEN3_TOK = 151669  # len() of the Qwen3 tokenizers


def _qwen(name: str, h: int, n: int, heads: int, kv: int, inter: int, vocab: int, tie: bool) -> LLMPreset:
    return LLMPreset(name, "qwen2", h, n, heads, kv, inter, vocab, _QWEN_TOK, 1e6, tie, 1e-6, 32768)


def _qwen3(name: str, h: int, n: int, heads: int, inter: int, tie: bool) -> LLMPreset:
    return LLMPreset(name, "qwen3", h, n, heads, 8, inter, 151936, _QWEN3_TOK, 1e6, tie, 1e-6, 40960, 128)


def _internlm2(name: str, h: int, n: int, heads: int, kv: int, inter: int) -> LLMPreset:
    return LLMPreset(
        name, "internlm2", h, n, heads, kv, inter, 92544, _INTERNLM2_TOK, 1e6, False, 1e-5, 32768
    )


LLM_PRESETS = {
    p.name: p
    for p in (
        _qwen("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True),
        _qwen("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True),
        _qwen("Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True),
        _qwen("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False),
        _qwen("Qwen2.5-32B", 5120, 64, 40, 8, 27648, 152064, False),
        _qwen("Qwen2.5-72B", 8192, 80, 64, 8, 29568, 152064, False),
        _qwen3("Qwen3-0.6B", 1024, 28, 16, 3072, True),
        _qwen3("Qwen3-1.7B", 2048, 28, 16, 6144, True),
        _qwen3("Qwen3-4B", 2560, 36, 32, 9728, True),
        _qwen3("Qwen3-8B", 4096, 36, 32, 12288, False),
        _internlm2("InternLM2.5-1.8B", 2048, 24, 16, 8, 8192),
        _internlm2("InternLM2.5-7B", 4096, 32, 32, 8, 14336),
        _internlm2("InternLM2.5-20B", 6144, 48, 48, 8, 16384),
        # Tiny debug LLMs; the vocabulary comes from the tokenizer built beside them.
        LLMPreset("tiny", "qwen2", 64, 2, 4, 2, 128, 1024, None, 1e6, False, 1e-6, 4096),
        LLMPreset("tiny-internlm2", "internlm2", 64, 2, 4, 2, 128, 1024, None, 1e6, False, 1e-5, 4096),
        LLMPreset("tiny-qwen3", "qwen3", 64, 2, 4, 2, 128, 1024, None, 1e6, True, 1e-6, 4096, head_dim=32),
    )
}

_V300, _V6B = VISION_PRESETS["InternViT-300M-448px"], VISION_PRESETS["InternViT-6B-448px"]
VLM_PRESETS = {
    p.name: p
    for p in (
        VLMPreset("1b", _V300, LLM_PRESETS["Qwen2.5-0.5B"]),
        VLMPreset("2b", _V300, LLM_PRESETS["InternLM2.5-1.8B"]),
        VLMPreset("4b", _V300, LLM_PRESETS["Qwen2.5-3B"]),
        VLMPreset("8b", _V300, LLM_PRESETS["InternLM2.5-7B"]),
        VLMPreset("26b", _V6B, LLM_PRESETS["InternLM2.5-20B"]),
        VLMPreset("38b", _V6B, LLM_PRESETS["Qwen2.5-32B"]),
        VLMPreset("78b", _V6B, LLM_PRESETS["Qwen2.5-72B"]),
        # InternVL3 (InternViT-300M-448px-V2.5, the same shapes) and InternVL3.5 (Qwen3 LLMs).
        VLMPreset("internvl3-1b", _V300, LLM_PRESETS["Qwen2.5-0.5B"]),
        VLMPreset("internvl3-2b", _V300, LLM_PRESETS["Qwen2.5-1.5B"]),
        VLMPreset("internvl3-8b", _V300, LLM_PRESETS["Qwen2.5-7B"]),
        VLMPreset("internvl3.5-1b", _V300, LLM_PRESETS["Qwen3-0.6B"]),
        VLMPreset("internvl3.5-2b", _V300, LLM_PRESETS["Qwen3-1.7B"]),
        VLMPreset("internvl3.5-4b", _V300, LLM_PRESETS["Qwen3-4B"]),
        VLMPreset("internvl3.5-8b", _V300, LLM_PRESETS["Qwen3-8B"]),
        VLMPreset("tiny", VISION_PRESETS["tiny"], LLM_PRESETS["tiny"]),
        VLMPreset("tiny-internlm2", VISION_PRESETS["tiny"], LLM_PRESETS["tiny-internlm2"]),
        VLMPreset("tiny-qwen3", VISION_PRESETS["tiny"], LLM_PRESETS["tiny-qwen3"]),
    )
}


def get_preset(preset: str | VLMPreset) -> VLMPreset:
    """Look a VLM preset up by name (or pass one through)."""
    if isinstance(preset, VLMPreset):
        return preset
    if preset not in VLM_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(VLM_PRESETS)}")
    return VLM_PRESETS[preset]


def vision_config(p: VisionPreset, **overrides) -> PretrainedConfig:
    """HF-native config of an InternViT preset (no final norm: use_mean_pooling=True)."""
    kwargs = dict(
        hidden_size=p.hidden_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        intermediate_size=p.intermediate_size,
        attention_bias=p.qkv_bias,
        use_qk_norm=p.qk_norm,
        norm_type=p.norm_type,
        image_size=p.image_size,
        patch_size=p.patch_size,
        layer_scale_init_value=p.layer_scale_init,
        layer_norm_eps=p.layer_norm_eps,
        use_mean_pooling=True,
    )
    return vision_family().hf_config_class(**(kwargs | overrides))


def text_config(p: LLMPreset, vocab_size: int | None = None, **overrides) -> PretrainedConfig:
    """transformers-native config of an LLM preset (as its family runs: InternLM2 as ``LlamaConfig``)."""
    kwargs = dict(
        vocab_size=vocab_size or p.vocab_size,
        hidden_size=p.hidden_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_heads,
        num_key_value_heads=p.num_kv_heads,
        intermediate_size=p.intermediate_size,
        rms_norm_eps=p.rms_norm_eps,
        max_position_embeddings=p.max_position_embeddings,
        tie_word_embeddings=p.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta},
    )
    if p.head_dim is not None:
        kwargs["head_dim"] = p.head_dim
    return CONFIG_MAPPING[llm_family(p.arch).hf_model_type](**(kwargs | overrides))


def vlm_vocab(p: LLMPreset) -> int:
    """Vocabulary of the assembled VLM: len(tokenizer) + the 9 InternVL special tokens."""
    return (p.tokenizer_vocab or p.vocab_size) + len(VLM_SPECIAL_TOKENS)


def vlm_config(preset: str | VLMPreset, tie_word_embeddings: bool = False) -> InternVLConfig:
    """Config of the assembled VLM; untied by default, like every published InternVL2.5."""
    p = get_preset(preset)
    base = p.llm.tokenizer_vocab or p.llm.vocab_size
    text = text_config(p.llm, vocab_size=vlm_vocab(p.llm))
    image_token = base + VLM_SPECIAL_TOKENS.index(IMG_CONTEXT_TOKEN)
    return internvl_config(
        vision_config(p.vision), text, image_token, p.downsample_ratio, -1, tie_word_embeddings
    )


def meta_model(
    preset: str | VLMPreset, tie_word_embeddings: bool = False
) -> InternVLForConditionalGeneration:
    """The assembled VLM on the ``meta`` device (shapes only, no memory) for planning."""
    with torch.device("meta"):
        return InternVLForConditionalGeneration(vlm_config(preset, tie_word_embeddings))


def parameter_counts(model: InternVLForConditionalGeneration) -> dict[str, int]:
    """Parameters per part (``vision``, ``mlp``, ``llm`` with its output layer) and in total;
    shared (tied) tensors counted once."""
    counts = {name: sum(p.numel() for p in part.parameters()) for name, part in vlm_parts(model).items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
