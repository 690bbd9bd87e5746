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
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from internvl_lightning.export import export_original
from internvl_lightning.model.build import build_model
from internvl_lightning.tokenizer import load_tokenizer
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


# Under transformers 4.37: the exported tokenizer, fast (tokenizer.json) and slow (the LLM's own files).
_LEGACY_TOKENIZER = """
import json, sys, transformers
from transformers import AutoTokenizer
out, text = sys.argv[1], sys.argv[2]
found = {"version": transformers.__version__}
for fast in (True, False):
    tok = AutoTokenizer.from_pretrained(out, use_fast=fast)
    found[str(fast)] = {"class": type(tok).__name__, "ids": tok.encode(text), "len": len(tok)}
print(json.dumps(found))
"""
TEXT = "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is in the picture? 12<|im_end|>"


@pytest.mark.parametrize("which", ["qwen2", "internlm2"])
def test_old_readers_tokenize_the_export_as_we_do(
    legacy, which, tiny_components, tiny_components_original, tmp_path
):
    """tokenizers 0.15 parses the merges; the class names are ones transformers 4.37 knows; the
    VLM tokens get the ids training used."""
    vision, llm = tiny_components if which == "qwen2" else tiny_components_original
    model, tok = build_model(vision=vision, llm=llm), load_tokenizer(llm)
    out = export_original(model, tmp_path / "orig", tok, llm_arch=None if which == "qwen2" else "internlm2")
    found = run_legacy(_LEGACY_TOKENIZER, out, TEXT)
    ours = tok.encode(TEXT)
    for fast in ("True", "False"):
        assert found[fast]["ids"] == ours, (fast, found[fast]["class"])
        assert found[fast]["len"] == len(tok)
    llm_config = json.loads((out / "config.json").read_text())["llm_config"]
    assert llm_config["bos_token_id"] is not None  # transformers 4.37's generate from embeddings needs it
    if which == "qwen2":  # the LLM's own vocab.json + merges.txt came along, read by the slow class
        assert found["False"]["class"] == "Qwen2Tokenizer"
        assert {"vocab.json", "merges.txt", "added_tokens.json"} <= {p.name for p in out.iterdir()}


def _stand_in_code(directory: Path, skip: str | None = None) -> Path:
    """Modules named like InternVL's (our own stand-ins, not its code): the config module imports
    the ViT's, as InternVL's does; the modeling module imports the LLM's."""
    directory.mkdir()
    files = {
        "configuration_intern_vit.py": "X = 1\n",
        "configuration_internvl_chat.py": (
            "from transformers import PretrainedConfig\n"
            "from .configuration_intern_vit import X\n\n\n"
            "class InternVLChatConfig(PretrainedConfig):\n"
            "    model_type = 'internvl_chat'\n"
            "    is_composition = True\n\n"
            "    def __init__(self, vision_config=None, llm_config=None, **kwargs):\n"
            "        super().__init__(**kwargs)\n"
            "        self.vision_config, self.llm_config = vision_config, llm_config\n"
        ),
        "modeling_internvl_chat.py": "from .modeling_intern_vit import Y\nfrom .modeling_internlm2 import Z\n",
        "modeling_intern_vit.py": "Y = 1\n",
        "modeling_internlm2.py": "Z = 1\n",
        "configuration_internlm2.py": "W = 1\n",
        "unrelated.py": "raise SystemExit\n",
    }
    for name, text in files.items():
        if name != skip:
            (directory / name).write_text(text)
    return directory


def test_code_from_copies_what_auto_map_names_and_what_that_imports(tmp_path):
    model = family_vlm("llama")
    code = _stand_in_code(tmp_path / "code")
    out = export_original(model, tmp_path / "orig", llm_arch="internlm2", code_from=code)
    names = {p.name for p in out.glob("*.py")}
    assert names == {p.name for p in code.glob("*.py")} - {"unrelated.py"}
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert config["llm_config"]["auto_map"]["AutoConfig"] == "configuration_internlm2.InternLM2Config"
    loaded = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert type(loaded).__name__ == "InternVLChatConfig"
    assert loaded.llm_config["architectures"] == ["InternLM2ForCausalLM"]


def test_code_from_without_a_needed_file_names_it(tmp_path):
    code = _stand_in_code(tmp_path / "code", skip="modeling_intern_vit.py")
    with pytest.raises(
        FileNotFoundError, match=r"no modeling_intern_vit.py \(needed by modeling_internvl_chat.py\)"
    ):
        export_original(family_vlm("qwen2"), tmp_path / "orig", code_from=code)
    with pytest.raises(
        FileNotFoundError, match=r"no (configuration|modeling)_internvl_chat.py \(needed by the auto_map"
    ):
        export_original(family_vlm("qwen2"), tmp_path / "orig2", code_from=tmp_path)


def test_export_without_code_says_what_automodel_needs(tmp_path, caplog):
    export_original(family_vlm("qwen2"), tmp_path / "orig")
    assert "modeling_internvl_chat.py" in caplog.text and "code_from" in caplog.text
