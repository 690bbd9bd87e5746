"""The original-layout export as the readers InternVL's own code runs on see it.

InternVL's ``InternVLChatConfig`` builds the LLM's config from ``llm_config`` with the LLM
family's own transformers 4.x config class (``Qwen2Config(**llm_config)``), unties the
embeddings, and loads ``language_model.*`` into that family's 4.x model class. These tests do
exactly that with transformers 4.37.2 (the version the official repository pins) in a
subprocess, and compare the LLM's logits with ours: a missing ``rope_theta`` (4.x falls back to
10000) or a missing head (4.x leaves it random) shows as a logit difference, not as an error.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from internvl_lightning.export import export_original
from tests.helpers.batches import family_vlm
from tests.helpers.legacy import LegacyUnavailable, install, run_legacy

# Under transformers 4.37: the family's LLM as InternVLChatConfig / InternVLChatModel build it.
_LEGACY_LLM = """
import json, sys, torch, transformers
from safetensors.torch import load_file
out, ids, dest = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
llm = json.load(open(out + "/config.json"))["llm_config"]
name = llm["architectures"][0].removesuffix("ForCausalLM")
config = getattr(transformers, name + "Config")(**llm)
config.tie_word_embeddings = False
model = getattr(transformers, name + "ForCausalLM")(config).eval()
weights = {k[len("language_model."):]: v for k, v in load_file(out + "/model.safetensors").items()
           if k.startswith("language_model.")}
missing, unexpected = model.load_state_dict(weights, strict=False)
with torch.no_grad():
    torch.save(model(torch.tensor([ids])).logits, dest)
print(json.dumps({"version": transformers.__version__, "missing": missing, "unexpected": unexpected,
                  "rope_theta": config.rope_theta}))
"""


@pytest.fixture(scope="module")
def legacy():
    try:
        return install()
    except LegacyUnavailable as err:
        pytest.skip(f"transformers 4.37.2 could not be installed (package registry unreachable?): {err}")


def _text_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


@pytest.mark.parametrize(
    ("family", "tie", "rope_theta"),
    [("qwen2", False, 1e6), ("qwen2", True, 1e6), ("llama", False, 5e5), ("llama", True, 1e4)],
    ids=["qwen2", "qwen2-tied", "llama", "llama-tied"],
)
def test_official_llm_classes_read_the_export_exactly(legacy, family, tie, rope_theta, tmp_path):
    model = family_vlm(family, tie=tie, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    out = export_original(model, tmp_path / "orig")
    ids = list(range(3, 40))
    found = run_legacy(_LEGACY_LLM, out, json.dumps(ids), tmp_path / "legacy.pt")
    assert found["version"] == "4.37.2"
    assert found["missing"] == [] and found["unexpected"] == []
    assert found["rope_theta"] == rope_theta
    theirs = torch.load(tmp_path / "legacy.pt")
    assert (theirs - _text_logits(model, ids)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_llm_config_is_in_released_form(family, tmp_path):
    """Fields as released checkpoints (and transformers 4.x) have them; the tied head written out."""
    model = family_vlm(family, tie=True)
    out = export_original(model, tmp_path / "orig")
    config = json.loads((out / "config.json").read_text())
    llm = config["llm_config"]
    assert llm["rope_theta"] == 1e6 and llm["rope_scaling"] is None
    assert "rope_parameters" not in llm and "dtype" not in llm and "layer_types" not in llm
    assert llm["tie_word_embeddings"] is False and config["tie_word_embeddings"] is False
    weights = load_file(str(out / "model.safetensors"))
    head, embed = (
        weights["language_model.lm_head.weight"],
        weights["language_model.model.embed_tokens.weight"],
    )
    assert torch.equal(head, embed)


def test_internlm2_export_writes_its_head_and_rope(tmp_path):
    model = family_vlm("llama", tie=True)
    out = export_original(model, tmp_path / "orig", llm_arch="internlm2")
    llm = json.loads((out / "config.json").read_text())["llm_config"]
    assert llm["architectures"] == ["InternLM2ForCausalLM"] and llm["rope_theta"] == 1e6
    weights = load_file(str(out / "model.safetensors"))
    assert torch.equal(
        weights["language_model.output.weight"], weights["language_model.model.tok_embeddings.weight"]
    )
