"""Presets: published parameter counts on the meta device, tokens per tile, tiny shapes."""

import pytest

from internvl_lightning.model import (
    VLM_PRESETS,
    build_model,
    get_preset,
    meta_model,
    parameter_counts,
    tokens_per_tile,
)

PUBLISHED = {"1b": 938_193_024, "4b": 3_712_637_952, "8b": 8_075_365_376, "26b": 25_514_186_112}


def test_published_parameter_counts():
    rows = []
    for name in ("1b", "2b", "4b", "8b", "26b", "38b", "78b"):
        counts = parameter_counts(meta_model(name))
        rows.append(
            f"{name:>4} {counts['vision']:>14,} {counts['mlp']:>12,} {counts['llm']:>16,} {counts['total']:>16,}"
        )
        if name in PUBLISHED:
            assert counts["total"] == PUBLISHED[name], name
        assert counts["total"] == counts["vision"] + counts["mlp"] + counts["llm"]
    print("\npreset         vision    projector              LLM            total\n" + "\n".join(rows))


def test_build_model_meta_for_planning():
    model = build_model(preset="8b", device="meta")
    assert model.lm_head.weight.device.type == "meta"
    assert parameter_counts(model)["total"] == PUBLISHED["8b"]
    assert model.config.tie_word_embeddings is False


def test_tokens_per_tile():
    assert tokens_per_tile(get_preset("1b").vision) == 256
    assert tokens_per_tile(get_preset("26b").vision) == 256
    assert tokens_per_tile(get_preset("tiny").vision) == 16
    assert tokens_per_tile(get_preset("tiny").vision, downsample_ratio=0.25) == 4


def test_pairings_and_tiny_shapes():
    assert get_preset("1b").llm.name == "Qwen2.5-0.5B" and get_preset("78b").llm.name == "Qwen2.5-72B"
    assert get_preset("8b").llm.arch == "internlm2" and get_preset("26b").vision.name == "InternViT-6B-448px"
    tiny = get_preset("tiny")
    assert (
        tiny.vision.image_size,
        tiny.vision.patch_size,
        tiny.vision.hidden_size,
        tiny.vision.num_layers,
    ) == (64, 8, 64, 2)
    assert (tiny.llm.hidden_size, tiny.llm.num_layers, tiny.llm.num_heads, tiny.llm.num_kv_heads) == (
        64,
        2,
        4,
        2,
    )
    assert get_preset("tiny-internlm2").llm.arch == "internlm2"
    assert set(VLM_PRESETS) >= {"1b", "2b", "4b", "8b", "26b", "38b", "78b", "tiny", "tiny-internlm2"}
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")


# Total parameters in billions, as the model cards' tables give them (huggingface.co/OpenGVLab/
# InternVL3-{1B,2B} and InternVL3_5-{1B,2B,4B,8B}, "Model Card" / "#Total Param"; InternVL3-8B:
# its checkpoint page's model size). The LLM head is untied, as InternVL's config class makes it.
PUBLISHED_ROUNDED = {
    "internvl3-1b": 0.9,
    "internvl3-2b": 2.1,
    "internvl3-8b": 7.9,
    "internvl3.5-1b": 1.1,
    "internvl3.5-2b": 2.3,
    "internvl3.5-4b": 4.7,
    "internvl3.5-8b": 8.5,
}


@pytest.mark.parametrize("name", list(PUBLISHED_ROUNDED))
def test_internvl3_and_35_presets_match_their_cards(name):
    counts = parameter_counts(meta_model(name))
    assert round(counts["total"] / 1e9, 1) == PUBLISHED_ROUNDED[name]
    family = get_preset(name).llm.arch
    assert family == ("qwen3" if name.startswith("internvl3.5") else "qwen2")
    if family == "qwen3":  # Qwen3 keeps a head_dim of 128 whatever the width
        assert meta_model(name).config.text_config.head_dim == 128
