"""Starting from InternVL checkpoints in the original layout (as released) and by hub id.

Each original-layout dir is written by the test (our export, checked against transformers 4.37's
readers in ``tests/export/test_original_contract.py``); ``init_from`` of it must give the same
model as ``init_from`` of its HF-native twin, for every LLM family and ViT kind of the released
InternVL2 / 2.5 / 3 / 3.5 models.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file, save_file

from internvl_lightning.constants import IMG_CONTEXT_TOKEN
from internvl_lightning.export import export_hf, export_original
from internvl_lightning.hub import is_hub_id, model_dir
from internvl_lightning.model.build import build_model
from internvl_lightning.model.components import write_components
from internvl_lightning.model.load import load_vlm, load_vlm_and_tokenizer
from internvl_lightning.model.options import apply_options
from internvl_lightning.tokenizer import load_tokenizer
from tests.helpers.batches import family_vlm, model_logits, vlm_inputs

VIT_6B = {"norm_type": "rms_norm", "use_qk_norm": True, "attention_bias": False}
CASES = {
    # name: (family to build, family to write, tie, ViT overrides, ps_version, select_layer)
    "qwen2": ("qwen2", None, False, None, "v2", -1),
    "qwen2-tied": ("qwen2", None, True, None, "v2", -1),  # InternVL2.5-1B / -4B
    "internlm2": ("llama", "internlm2", False, None, "v2", -1),  # InternVL2.5-2B / -8B
    "llama": ("llama", None, False, None, "v1", -1),
    "qwen3": ("qwen3", None, True, None, "v2", -1),  # InternVL3.5
    "vit-6b-select-2": ("qwen2", None, False, VIT_6B, "v2", -2),  # InternVL2.5-26B+ style
    "internlm2-vit-6b-v1": ("llama", "internlm2", False, VIT_6B, "v1", -2),
}


def _model(name: str, tok):
    family, _, tie, vision, ps, layer = CASES[name]
    model = family_vlm(
        family, tie=tie, vocab=len(tok), image_token_id=tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN),
        vision=vision, select_layer=layer,
    )  # fmt: skip
    return apply_options(model, 0.0, ps, layer)


@pytest.mark.parametrize("name", list(CASES))
def test_init_from_original_equals_its_hf_twin(name, vlm_tokenizer, tmp_path):
    model = _model(name, vlm_tokenizer)
    original = export_original(model, tmp_path / "orig", vlm_tokenizer, llm_arch=CASES[name][1])
    twin = export_hf(model, tmp_path / "hf", vlm_tokenizer)
    from_original, from_twin = build_model(init_from=original), build_model(init_from=twin)
    assert from_original.config.ps_version == CASES[name][4]
    assert from_original.config.vision_feature_layer == CASES[name][5]
    ids, pixels = vlm_inputs(model)
    expected = model_logits(model, ids, pixels)
    torch.testing.assert_close(model_logits(from_twin, ids, pixels), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model_logits(from_original, ids, pixels), expected, atol=1e-5, rtol=1e-5)


def test_round_trip_keeps_the_form_that_came_in(vlm_tokenizer, tmp_path):
    """original dir -> load -> export again: the same weight keys, config keys and tokenizer files."""
    model = _model("internlm2", vlm_tokenizer)
    first = export_original(model, tmp_path / "first", vlm_tokenizer, llm_arch="internlm2")
    back, tok = load_vlm_and_tokenizer(first)
    second = export_original(back, tmp_path / "second", tok, llm_arch="internlm2")
    assert set(load_file(str(first / "model.safetensors"))) == set(
        load_file(str(second / "model.safetensors"))
    )
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert set(a) == set(b)
    for part in ("llm_config", "vision_config"):
        assert set(a[part]) == set(b[part]), part
        assert {k: v for k, v in a[part].items() if k != "transformers_version"} == {
            k: v for k, v in b[part].items() if k != "transformers_version"
        }
    files = {p.name for p in first.iterdir()}
    assert files == {p.name for p in second.iterdir()}


@pytest.fixture()
def original_dir(vlm_tokenizer, tmp_path):
    return export_original(_model("qwen2", vlm_tokenizer), tmp_path / "orig", vlm_tokenizer)


def test_missing_shard_is_named(original_dir):
    weights = load_file(str(original_dir / "model.safetensors"))
    keys = sorted(weights)
    half = len(keys) // 2
    save_file({k: weights[k] for k in keys[:half]}, str(original_dir / "model-00001-of-00002.safetensors"))
    index = {k: "model-00001-of-00002.safetensors" for k in keys[:half]}
    index |= {k: "model-00002-of-00002.safetensors" for k in keys[half:]}
    (original_dir / "model.safetensors").unlink()
    (original_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors, which is missing"):
        load_vlm(original_dir)


def _edit_config(directory, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_unknown_llm_architecture_is_named(original_dir):
    _edit_config(original_dir, lambda c: c["llm_config"].update(architectures=["MistralForCausalLM"]))
    with pytest.raises(ValueError, match=r"'MistralForCausalLM' in .*config.json \(llm_config\)"):
        load_vlm(original_dir)


def test_unknown_vision_norm_type_is_named(original_dir):
    _edit_config(original_dir, lambda c: c["vision_config"].update(norm_type="batch_norm"))
    with pytest.raises(ValueError, match=r"config.json \(vision_config\).*norm_type 'batch_norm'"):
        load_vlm(original_dir)


def _custom_code_tokenizer(directory) -> None:
    """Make a dir's tokenizer one defined by its own code, as InternLM2's is."""
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    path.write_text(json.dumps(config))
    (directory / "tokenization_internlm2.py").write_text("raise SystemExit('this code must not run')\n")


def test_custom_code_tokenizer_is_refused_without_a_prompt(original_dir):
    """Weights load (the image token id is read from the files); the tokenizer, whose code would
    run, is refused with what to do, and nothing waits for an answer on stdin."""
    _custom_code_tokenizer(original_dir)
    assert build_model(init_from=original_dir) is not None
    script = (
        "import sys\n"
        "from internvl_lightning.model.load import load_vlm_and_tokenizer\n"
        "try:\n"
        "    load_vlm_and_tokenizer(sys.argv[1])\n"
        "except ValueError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(original_dir)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tokenization_internlm2.py" in done.stdout and "trust_remote_code=True" in done.stdout


def _hub_cache(cache, repo: str, files_from) -> None:
    """The layout huggingface_hub keeps a downloaded repository in."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(files_from, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_hub_id_resolves_to_the_local_cache_offline(original_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _hub_cache(cache, "OpenGVLab/InternVL-tiny", original_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert is_hub_id("OpenGVLab/InternVL-tiny") and not is_hub_id(str(original_dir))
    assert model_dir("OpenGVLab/InternVL-tiny").name == "0123456789abcdef0123456789abcdef01234567"
    model = build_model(init_from="OpenGVLab/InternVL-tiny")
    ids, pixels = vlm_inputs(model)
    torch.testing.assert_close(
        model_logits(model, ids, pixels), model_logits(build_model(init_from=original_dir), ids, pixels)
    )
    with pytest.raises(FileNotFoundError, match="OpenGVLab/absent.*HF_HUB_OFFLINE"):
        model_dir("OpenGVLab/absent")


def test_qwen3_components_to_original_layout_and_back(tmp_path):
    """InternVL3.5's LLM family through every path: components, build, both exports, init_from."""
    vision, llm = write_components("tiny-qwen3", tmp_path / "components", seed=0)
    assert json.loads((llm / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    model, tok = build_model(vision=vision, llm=llm), load_tokenizer(llm)
    assert type(model.model.language_model).__name__ == "Qwen3Model"
    original = export_original(model, tmp_path / "orig", tok)
    assert json.loads((original / "config.json").read_text())["llm_config"]["architectures"] == [
        "Qwen3ForCausalLM"
    ]
    ids, pixels = vlm_inputs(model)
    expected = model_logits(model, ids, pixels)
    for source in (original, export_hf(model, tmp_path / "hf", tok)):
        torch.testing.assert_close(model_logits(build_model(init_from=source), ids, pixels), expected)
