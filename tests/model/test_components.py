"""Component writer: directory contents, determinism, CLI."""

import json

from safetensors.torch import load_file

from internvl_lightning.cli import main
from internvl_lightning.model import write_components


def test_directories_look_downloaded(tiny_components, tiny_components_original):
    vision_dir, llm_dir = tiny_components
    assert json.loads((vision_dir / "config.json").read_text())["architectures"] == ["InternVLVisionModel"]
    llm_cfg = json.loads((llm_dir / "config.json").read_text())
    assert llm_cfg["architectures"] == ["Qwen2ForCausalLM"] and llm_cfg["tie_word_embeddings"] is False
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= {
        p.name for p in llm_dir.iterdir()
    }
    v_orig, l_orig = tiny_components_original
    v_cfg = json.loads((v_orig / "config.json").read_text())
    assert v_cfg["architectures"] == ["InternVisionModel"]
    assert {"hidden_size", "num_hidden_layers", "qkv_bias", "qk_normalization", "norm_type"} <= set(v_cfg)
    assert "encoder.layers.0.attn.qkv.weight" in load_file(v_orig / "model.safetensors")
    assert json.loads((l_orig / "config.json").read_text())["architectures"] == ["InternLM2ForCausalLM"]
    assert json.loads((l_orig / "tokenizer_config.json").read_text())["bos_token"] == "<s>"


def test_deterministic_and_cli(tiny_components, tmp_path, capsys):
    assert main(["components", "--preset", "tiny", "--out_dir", str(tmp_path / "cli")]) == 0
    vision_dir, llm_dir = tmp_path / "cli" / "vision", tmp_path / "cli" / "llm"
    assert "vision:" in capsys.readouterr().out
    for ours, theirs in ((vision_dir, tiny_components[0]), (llm_dir, tiny_components[1])):
        a, b = load_file(ours / "model.safetensors"), load_file(theirs / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    seed0 = load_file(tiny_components[0] / "model.safetensors")
    seed1 = load_file(write_components("tiny", tmp_path / "s1", seed=1)[0] / "model.safetensors")
    assert not (seed1["embeddings.cls_token"] == seed0["embeddings.cls_token"]).all()
