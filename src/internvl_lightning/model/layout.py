"""The original InternVL checkpoint layout (``InternVLChatModel``), both ways.

InternVL's own code (its trainer, evaluation scripts, ``model.chat()``, LMDeploy's InternVL path)
reads ``vision_model.*`` (InternViT keys), ``mlp1.*`` and ``language_model.*`` (the LLM family's
own keys), described by one ``config.json`` with ``vision_config`` and ``llm_config``. This module
holds every fact of that layout; ``load.py`` reads it and ``export/original.py`` writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import InternVLConfig

from .config import internvl_config, vision_geometry
from .convert import Tensors, projector_from_hf, projector_to_hf
from .families import LLMFamily, llm_family_of, vision_family

ARCHITECTURE = "InternVLChatModel"
MODEL_TYPE = "internvl_chat"
# What InternVL's original trainer assumes when a config leaves ps_version out; InternVL2+ scripts
# always write v2.
DEFAULT_PS_VERSION = "v1"
# InternVL's config class unties the LLM's embeddings whatever its llm_config says, so an
# original-layout checkpoint always carries its output head (a tied one written out).
TIED_EMBEDDINGS = False
_EMBED = "model.embed_tokens.weight"
# Where transformers finds the layout's classes under trust_remote_code (modules beside config.json).
AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}


def is_original_config(raw: Mapping[str, Any]) -> bool:
    """Whether a config.json dict describes an original-layout InternVL checkpoint."""
    return ARCHITECTURE in (raw.get("architectures") or [])


def _split(sd: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def original_to_hf(sd: Tensors, llm: LLMFamily, text_config) -> Tensors:
    """Original InternVL keys -> ``InternVLForConditionalGeneration`` keys; the LLM's keys go
    through its family's converter (``text_config``: the transformers config it converts to)."""
    vit = vision_family()
    out = {"model.vision_tower." + k: v for k, v in vit.weights_to_hf(_split(sd, "vision_model.")).items()}
    out |= {"model.multi_modal_projector." + k: v for k, v in projector_to_hf(_split(sd, "mlp1.")).items()}
    for key, t in llm.to_hf(_split(sd, "language_model."), text_config).items():
        out[
            "lm_head.weight"
            if key == "lm_head.weight"
            else "model.language_model." + key.removeprefix("model.")
        ] = t
    known = ("vision_model.", "language_model.", "mlp1.")
    out.update({k: v for k, v in sd.items() if not k.startswith(known)})  # surfaced as unexpected
    return out


def hf_to_original(sd: Tensors, llm: LLMFamily, text_config) -> Tensors:
    """Inverse of :func:`original_to_hf`, with the LLM written in ``llm``'s layout."""
    vit = vision_family()
    out = {"vision_model." + k: v for k, v in vit.weights_from_hf(_split(sd, "model.vision_tower.")).items()}
    out |= projector_from_hf(_split(sd, "model.multi_modal_projector."))
    lm = {"model." + k: v for k, v in _split(sd, "model.language_model.").items()}
    head = sd.get("lm_head.weight", lm.get(_EMBED))  # a tied head is the embedding
    if head is not None:
        lm["lm_head.weight"] = head
    out |= {"language_model." + k: v for k, v in llm.from_hf(lm, text_config).items()}
    return out


@dataclass(frozen=True)
class OriginalConfig:
    """What an original-layout config.json says: the composite config and the options kept beside it."""

    config: InternVLConfig
    llm: LLMFamily
    ps_version: str
    drop_path_rate: float


def read_original_config(raw: Mapping[str, Any], image_token_id: int, where: str) -> OriginalConfig:
    """An original-layout config.json dict -> our composite config (the LLM as transformers runs it)."""
    for key in ("llm_config", "vision_config"):
        if not isinstance(raw.get(key), Mapping):
            raise ValueError(f"{where} has no {key} (an original-layout InternVL config.json has both)")
    llm_raw = dict(raw["llm_config"])
    llm = llm_family_of(llm_raw, f"{where} (llm_config)")
    text = llm.hf_config(llm_raw)
    vision_raw = raw["vision_config"]
    vision = vision_family().hf_config(vision_raw, "original", f"{where} (vision_config)")
    config = internvl_config(
        vision,
        text,
        image_token_id,
        downsample_ratio=raw.get("downsample_ratio", 0.5),
        select_layer=raw.get("select_layer", -1),
        tie_word_embeddings=raw.get("tie_word_embeddings", text.tie_word_embeddings),
    )
    return OriginalConfig(
        config, llm, raw.get("ps_version", DEFAULT_PS_VERSION), vision_raw.get("drop_path_rate", 0.0)
    )


def original_config(
    config: InternVLConfig,
    llm: LLMFamily,
    *,
    template: str,
    max_dynamic_patch: int,
    min_dynamic_patch: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """The config.json of an original-layout export of a model with ``config``, its LLM in ``llm``'s layout."""
    text = config.text_config
    return {
        "architectures": [ARCHITECTURE],
        "auto_map": dict(AUTO_MAP),
        "model_type": MODEL_TYPE,
        "vision_config": vision_family().own_config(config.vision_config),
        "llm_config": llm.own_config(text) | {"tie_word_embeddings": TIED_EMBEDDINGS},
        "downsample_ratio": config.downsample_ratio,
        "ps_version": getattr(config, "ps_version", "v2"),
        "select_layer": config.vision_feature_layer,
        "force_image_size": vision_geometry(config.vision_config)[0],
        "template": template,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": min_dynamic_patch,
        "max_dynamic_patch": max_dynamic_patch,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": TIED_EMBEDDINGS,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
