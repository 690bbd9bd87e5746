"""The original InternVL checkpoint layout (`vision_model.*`, `mlp1.*`, `language_model.*`).

InternVL's own tools (its trainer, evaluation scripts, LMDeploy's InternVL path) read this
layout with `trust_remote_code`. We write it from our HF-native model and read it back, so
users can move between the two worlds; key mapping in `model/convert.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from ..model.build import _apply_options, check_state_dict
from ..model.convert import (
    full_hf_to_original,
    full_original_to_hf,
    internlm2_config_from_llama,
    llama_config_from_internlm2,
    read_weights,
    vision_config_from_original,
    vision_config_to_original,
)
from ..model.lora import merged_state_dict
from ..model.presets import tokens_per_tile

ORIGINAL_ARCH = "InternVLChatModel"


def export_original(
    model: InternVLForConditionalGeneration,
    out_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    llm_arch: str | None = None,
    template: str = "internvl2_5",
    max_dynamic_patch: int = 12,
) -> Path:
    """Write `model` in the original layout. `llm_arch="internlm2"` packs a Llama LLM back into wqkv form."""
    cfg = model.config
    tc = cfg.text_config
    llm_arch = llm_arch or ("qwen2" if tc.model_type == "qwen2" else "llama")
    sd = {k: v.detach().cpu().contiguous() for k, v in merged_state_dict(model).items()}  # LoRA folded in
    if cfg.text_config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    heads = (tc.num_attention_heads, tc.num_key_value_heads)
    original = full_hf_to_original(sd, llm_arch, *heads)
    if llm_arch == "internlm2":
        llm_config = internlm2_config_from_llama(tc)
    else:
        llm_config = tc.to_dict()
        llm_config["architectures"] = [{"qwen2": "Qwen2ForCausalLM"}.get(tc.model_type, "LlamaForCausalLM")]
    vcfg = vision_config_to_original(cfg.vision_config)
    config = {
        "architectures": [ORIGINAL_ARCH],
        "model_type": "internvl_chat",
        "vision_config": vcfg,
        "llm_config": llm_config,
        "downsample_ratio": cfg.downsample_ratio,
        "ps_version": getattr(cfg, "ps_version", "v2"),
        "select_layer": cfg.vision_feature_layer,
        "force_image_size": vcfg["image_size"],
        "template": template,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": max_dynamic_patch,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": bool(tc.tie_word_embeddings),
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(original, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def is_original_dir(directory: str | Path) -> bool:
    """True for a directory in the original InternVL layout."""
    path = Path(directory) / "config.json"
    return path.is_file() and ORIGINAL_ARCH in (json.loads(path.read_text()).get("architectures") or [])


def load_original(
    directory: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> InternVLForConditionalGeneration:
    """Read an original-layout InternVL directory into our HF-native model (InternLM2 becomes Llama)."""
    d = Path(directory)
    raw = json.loads((d / "config.json").read_text())
    llm = dict(raw["llm_config"])
    arch = (llm.get("architectures") or [""])[0]
    if arch == "InternLM2ForCausalLM":
        text_cfg = llama_config_from_internlm2(llm)
        llm_arch = "internlm2"
    else:
        model_type = llm.pop("model_type", None) or {"Qwen2ForCausalLM": "qwen2"}.get(arch, "llama")
        text_cfg = AutoConfig.for_model(model_type, **llm)
        llm_arch = model_type
    tie = bool(raw.get("tie_word_embeddings", text_cfg.tie_word_embeddings))
    text_cfg.tie_word_embeddings = tie
    vision_cfg = vision_config_from_original(raw["vision_config"])
    sd = full_original_to_hf(
        read_weights(d),
        llm_arch,
        text_cfg.num_attention_heads,
        getattr(text_cfg, "num_key_value_heads", None),
    )
    ratio = raw.get("downsample_ratio", 0.5)
    config = InternVLConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_id=_image_token_id(d, sd),
        image_seq_length=tokens_per_tile(vision_cfg, ratio),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=raw.get("select_layer", -1),
        vision_feature_select_strategy="default",
        tie_word_embeddings=tie,
    )
    with no_init_weights():
        model = InternVLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    if tie:
        model.tie_weights()
        sd.pop("lm_head.weight", None)
    check_state_dict(model, sd, where=str(d), ignore=("lm_head.weight",) if tie else ())
    model.load_state_dict(sd, strict=not tie)
    # The config default of the original trainer is v1; InternVL2+ scripts always pass v2.
    return _apply_options(
        model.eval(),
        raw["vision_config"].get("drop_path_rate", 0.0),
        raw.get("ps_version", "v1"),
        config.vision_feature_layer,
    )


def _image_token_id(directory: Path, sd: dict[str, torch.Tensor]) -> int:
    from transformers import AutoTokenizer

    from ..constants import IMG_CONTEXT_TOKEN

    tok = AutoTokenizer.from_pretrained(str(directory))
    token_id = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    if token_id is None or token_id == tok.unk_token_id:
        raise ValueError(f"tokenizer in {directory} has no {IMG_CONTEXT_TOKEN} token")
    return token_id
