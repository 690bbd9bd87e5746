"""Bad inputs fail with one clear error naming what and where."""

import json
import shutil

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from internvl_lightning.cli import main
from internvl_lightning.model import build_model, write_components
from tests.helpers.recipes import CONF


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_missing_component_directory(tiny_components, tmp_path):
    vision_dir, llm_dir = tiny_components
    with pytest.raises(FileNotFoundError, match=f"vision directory {tmp_path / 'nope'} does not exist"):
        build_model(tmp_path / "nope", llm_dir)
    with pytest.raises(FileNotFoundError, match=f"LLM directory {tmp_path / 'gone'} does not exist"):
        build_model(vision_dir, tmp_path / "gone")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_model(empty, llm_dir)
    with pytest.raises(ValueError, match="needs vision and llm directories"):
        build_model(vision_dir)


def test_init_from_and_components_are_not_both_taken(tiny_components, tmp_path, capsys):
    vision_dir, llm_dir = tiny_components
    with pytest.raises(ValueError, match=r"init_from=.* and vision=.*, llm=.* were both given"):
        build_model(vision_dir, llm_dir, init_from=tmp_path / "stage1" / "hf")
    # the CLI refuses it while parsing, before any weight is read
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(CONF / "stage2.yaml"), f"--model.init_from={tmp_path}", f"--model.llm={llm_dir}",
              "--data.shards=none", "--trainer.accelerator=cpu"])  # fmt: skip
    assert f"llm={llm_dir} (components) were both given" in capsys.readouterr().err


def test_config_weights_shape_mismatch(tiny_components, tiny_components_original, tmp_path):
    vision_dir, llm_dir = tiny_components
    bad = _copy(vision_dir, tmp_path / "vision")
    _edit_config(bad, intermediate_size=96)
    with pytest.raises(
        ValueError, match=rf"(?s)weights in {bad} .*shape mismatches \(6\): encoder.layer.0.mlp.fc1.bias"
    ):
        build_model(bad, llm_dir)
    bad_llm = _copy(tiny_components_original[1], tmp_path / "llm")
    _edit_config(bad_llm, num_hidden_layers=3)
    with pytest.raises(ValueError, match=rf"(?s)weights in {bad_llm} .*missing keys \(9\): layers.2"):
        build_model(tiny_components_original[0], bad_llm)
    no_weights = _copy(vision_dir, tmp_path / "noweights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"no weights .* in {no_weights}"):
        build_model(no_weights, llm_dir)


def test_tokenizer_without_chat_tokens(tiny_components, tmp_path):
    vision_dir, llm_dir = tiny_components
    bad = _copy(llm_dir, tmp_path / "llm")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["plain text only"], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tok.save(str(bad / "tokenizer.json"))
    (bad / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(
        ValueError, match=rf"tokenizer in {bad} does not know the chat token '<\|im_start\|>'"
    ):
        build_model(vision_dir, bad)


def test_unsupported_architectures(tiny_components, tmp_path):
    vision_dir, llm_dir = tiny_components
    bad = _copy(llm_dir, tmp_path / "llm")
    _edit_config(bad, architectures=["MambaForCausalLM"])
    with pytest.raises(
        ValueError,
        match=rf"unsupported LLM architecture 'MambaForCausalLM' in {bad}.*supported: Qwen2ForCausalLM",
    ):
        build_model(vision_dir, bad)
    bad_v = _copy(vision_dir, tmp_path / "vision")
    _edit_config(bad_v, architectures=["SiglipVisionModel"])
    with pytest.raises(
        ValueError, match="unsupported vision architecture 'SiglipVisionModel'.*InternVisionModel"
    ):
        build_model(bad_v, llm_dir)


def test_bad_layout_requests(tmp_path):
    with pytest.raises(ValueError, match="(?i)cannot be written in the internlm2 layout"):
        write_components("tiny", tmp_path, llm_layout="internlm2")
    with pytest.raises(SystemExit):
        main(["components", "--out_dir", str(tmp_path), "--vision_layout", "nope"])
