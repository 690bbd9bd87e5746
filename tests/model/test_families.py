"""Model families (``model/families.py``): every LLM family builds, exports in the original layout
under its own name, and loads back with the same logits; a new family is one registry entry."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from internvl_lightning.export import export_original
from internvl_lightning.model.build import build_model
from internvl_lightning.model.components import write_llm
from internvl_lightning.model.families import LLM_FAMILIES, LLMFamily, llm_family, llm_family_of
from internvl_lightning.model.load import llm_family_of_dir, load_original
from internvl_lightning.model.presets import LLM_PRESETS
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers.batches import model_logits, vlm_inputs


def family_round_trip(vision_dir, llm_dir, tmp_path) -> dict:
    """Build from components, export in the original layout, read back; returns its llm_config."""
    model = build_model(vision_dir, llm_dir)
    out = export_original(model, tmp_path / "original", load_tokenizer(llm_dir))
    back = load_original(out)
    ids, pixels = vlm_inputs(model)
    torch.testing.assert_close(
        model_logits(back, ids, pixels), model_logits(model, ids, pixels), atol=1e-5, rtol=0
    )
    return json.loads((out / "config.json").read_text())["llm_config"]


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "llama"])
def test_each_native_family_keeps_its_name_in_the_original_layout(name, tiny_components, tmp_path):
    """The original layout names the LLM by its own family (a Qwen3 LLM is not written as Llama)."""
    preset = dataclasses.replace(LLM_PRESETS["tiny"], name=f"tiny-{name}", arch=name)
    llm_dir = write_llm(preset, tmp_path / "llm", seed=100)
    assert llm_family_of_dir(llm_dir).name == name
    llm_config = family_round_trip(tiny_components[0], llm_dir, tmp_path)
    assert llm_config["architectures"] == [llm_family(name).architecture]
    assert llm_config["model_type"] == name


def test_internlm2_round_trips_in_its_own_layout(tiny_components_original, tmp_path):
    vision_dir, llm_dir = tiny_components_original
    model = build_model(vision_dir, llm_dir)
    assert model.config.text_config.model_type == "llama"  # runs as Llama
    out = export_original(model, tmp_path / "o", load_tokenizer(llm_dir), llm_arch="internlm2")
    llm_config = json.loads((out / "config.json").read_text())["llm_config"]
    assert llm_config["architectures"] == ["InternLM2ForCausalLM"] and "bias" in llm_config
    ids, pixels = vlm_inputs(model)
    torch.testing.assert_close(
        model_logits(load_original(out), ids, pixels), model_logits(model, ids, pixels), atol=1e-5, rtol=0
    )


def test_a_new_family_is_one_registry_entry(tiny_components, tmp_path, monkeypatch):
    """docs/ARCHITECTURE.md, "add an LLM family": a family transformers knows (Mistral) needs only
    its entry in LLM_FAMILIES; components, the builder, the original layout and loading follow."""
    with pytest.raises(ValueError, match="unsupported LLM architecture 'MistralForCausalLM'"):
        llm_family_of({"architectures": ["MistralForCausalLM"]}, "config.json")
    monkeypatch.setitem(
        LLM_FAMILIES, "mistral", LLMFamily("mistral", "MistralForCausalLM", "mistral", "mistral")
    )
    preset = dataclasses.replace(LLM_PRESETS["tiny"], name="tiny-mistral", arch="mistral")
    llm_dir = write_llm(preset, tmp_path / "llm", seed=100)
    assert json.loads((llm_dir / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
    llm_config = family_round_trip(tiny_components[0], llm_dir, tmp_path)
    assert llm_config["architectures"] == ["MistralForCausalLM"]


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown LLM family 'gpt2'.*qwen2"):
        llm_family("gpt2")
    assert llm_family("Qwen2ForCausalLM") is LLM_FAMILIES["qwen2"]
