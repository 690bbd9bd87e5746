"""One spec per model family: what the library knows about each kind of LLM and vision encoder.

A spec names the family's checkpoints (``architectures`` in their config.json), what transformers
runs them as, how their own checkpoint layout converts to transformers' and back (identity for
transformers-native families), which tokenizer style a stand-in tokenizer takes, and what the
original InternVL layout calls them. Loading (``load.py``), the original layout (``layout.py``),
presets and the stand-in components all ask here.

To add an LLM family, add one :class:`LLMFamily` to ``LLM_FAMILIES`` below. A family that
transformers knows (its ``model_type`` is in ``transformers.CONFIG_MAPPING``) needs nothing else;
one with its own layout passes the converters (as InternLM2 does, see ``convert.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from transformers import CONFIG_MAPPING, InternVLVisionConfig, PretrainedConfig

from . import convert
from .convert import Tensors

# Keys of a config.json that describe the file, not the model.
_FILE_KEYS = ("architectures", "model_type", "auto_map", "transformers_version", "_name_or_path")


@dataclass(frozen=True)
class LLMFamily:
    """A decoder-only LLM family.

    Attributes:
        name: the family's name in presets and on the command line (``qwen2``, ``internlm2``, ...).
        architecture: ``architectures[0]`` of its checkpoints' config.json; also what the original
            InternVL layout writes in ``llm_config``.
        model_type: ``model_type`` of its checkpoints' config.json.
        hf_model_type: the transformers model it runs as (InternLM2 runs as ``llama``).
        tokenizer_style: ``qwen2`` (no BOS, ``<|endoftext|>`` pads) or ``internlm2`` (``<s>`` BOS
            on every encode); the stand-in tokenizers of ``components.py`` follow it.
        config_to_hf, config_from_hf: its own config.json dict <-> transformers config (None:
            transformers reads the dict as it is).
        weights_to_hf, weights_from_hf: its own state dict <-> transformers' (None: the same keys).
        auto_map: for a family transformers runs from the checkpoint's own code, the config.json
            ``auto_map`` its released checkpoints carry (which module holds which class).
    """

    name: str
    architecture: str
    model_type: str
    hf_model_type: str
    tokenizer_style: str = "qwen2"
    config_to_hf: Callable[[dict], PretrainedConfig] | None = None
    config_from_hf: Callable[[PretrainedConfig], dict] | None = None
    weights_to_hf: Callable[[Tensors, PretrainedConfig], Tensors] | None = None
    weights_from_hf: Callable[[Tensors, PretrainedConfig], Tensors] | None = None
    auto_map: Mapping[str, str] | None = None

    @property
    def native(self) -> bool:
        """Whether its checkpoints are in transformers' own layout."""
        return self.weights_to_hf is None

    def hf_config(self, raw: Mapping[str, Any]) -> PretrainedConfig:
        """A config.json dict of this family -> the transformers config it runs with."""
        if self.config_to_hf is not None:
            return self.config_to_hf(dict(raw))
        values = {k: v for k, v in raw.items() if k not in _FILE_KEYS}
        return CONFIG_MAPPING[self.hf_model_type].from_dict(values)

    def own_config(self, cfg: PretrainedConfig) -> dict:
        """A transformers config -> this family's config.json dict, in the form its released
        checkpoints carry (what transformers 4.x reads too, see :func:`released_form`)."""
        values = self.config_from_hf(cfg) if self.config_from_hf is not None else released_form(cfg.to_dict())
        names = {"architectures": [self.architecture], "model_type": self.model_type}
        return values | names | ({"auto_map": dict(self.auto_map)} if self.auto_map else {})

    def to_hf(self, sd: Tensors, cfg: PretrainedConfig) -> Tensors:
        """A state dict in this family's layout -> transformers' keys (``model.*``, ``lm_head.weight``)."""
        return sd if self.weights_to_hf is None else self.weights_to_hf(sd, cfg)

    def from_hf(self, sd: Tensors, cfg: PretrainedConfig) -> Tensors:
        """Inverse of :meth:`to_hf`."""
        return sd if self.weights_from_hf is None else self.weights_from_hf(sd, cfg)


# RoPE kinds whose transformers 4.x form is exactly {"type", "factor"} (older versions refuse more).
_TWO_FIELD_ROPE = ("linear", "dynamic")


def released_form(values: Mapping[str, Any]) -> dict:
    """A transformers 5 config dict -> the form of released checkpoints' config.json.

    transformers 5 groups RoPE into ``rope_parameters`` and calls the dtype ``dtype``; released
    checkpoints, and the transformers 4.x versions InternVL's own code runs on, carry
    ``rope_theta`` / ``rope_scaling`` and ``torch_dtype`` (a 4.x reader that finds no
    ``rope_theta`` silently uses 10000). ``layer_types`` goes when every layer is full attention
    (older readers derive it from ``use_sliding_window``). transformers 5 reads both forms.
    """
    out = dict(values)
    rope = dict(out.pop("rope_parameters", None) or {})
    if rope or "rope_theta" not in out:
        out["rope_theta"] = float(rope.pop("rope_theta", out.get("rope_theta", 10000.0)))
        kind = rope.pop("rope_type", rope.pop("type", "default"))
        if kind == "default":
            out["rope_scaling"] = None
        elif kind in _TWO_FIELD_ROPE and set(rope) == {"factor"}:
            out["rope_scaling"] = {"type": kind, "factor": rope["factor"]}
        else:
            out["rope_scaling"] = {"rope_type": kind, **rope}
    if "dtype" in out:
        out["torch_dtype"] = out.pop("dtype")
    if all(t == "full_attention" for t in out.get("layer_types") or ["?"]):
        out.pop("layer_types", None)
    return out


def _heads(cfg: PretrainedConfig) -> tuple[int, int]:
    return cfg.num_attention_heads, cfg.num_key_value_heads


LLM_FAMILIES: dict[str, LLMFamily] = {
    f.name: f
    for f in (
        LLMFamily("qwen2", "Qwen2ForCausalLM", "qwen2", "qwen2"),
        LLMFamily("qwen3", "Qwen3ForCausalLM", "qwen3", "qwen3"),
        LLMFamily("llama", "LlamaForCausalLM", "llama", "llama"),
        LLMFamily(
            "internlm2",
            "InternLM2ForCausalLM",
            "internlm2",
            "llama",
            tokenizer_style="internlm2",
            config_to_hf=convert.llama_config_from_internlm2,
            config_from_hf=convert.internlm2_config_from_llama,
            weights_to_hf=lambda sd, cfg: convert.internlm2_to_llama(sd, *_heads(cfg)),
            weights_from_hf=lambda sd, cfg: convert.llama_to_internlm2(sd, *_heads(cfg)),
            auto_map={
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            },
        ),
    )
}


@dataclass(frozen=True)
class VisionFamily:
    """A vision encoder family, in transformers' layout and in its original one.

    Attributes:
        name: the family's name.
        hf_architecture: ``architectures[0]`` of its transformers-layout checkpoints.
        architecture, model_type: what its original-layout checkpoints (and the original InternVL
            layout's ``vision_config``) call it.
        config_to_hf, config_from_hf: original config dict <-> transformers config.
        weights_to_hf, weights_from_hf: original state dict <-> transformers'.
        hf_config_class: the transformers config of its transformers layout.
    """

    name: str
    hf_architecture: str
    architecture: str
    model_type: str
    config_to_hf: Callable[[dict], PretrainedConfig]
    config_from_hf: Callable[[PretrainedConfig], dict]
    weights_to_hf: Callable[[Tensors], Tensors]
    weights_from_hf: Callable[[Tensors], Tensors]
    hf_config_class: type[PretrainedConfig] = InternVLVisionConfig

    def hf_config(
        self, raw: Mapping[str, Any], layout: str, where: str = "the vision config"
    ) -> PretrainedConfig:
        """A config.json dict in ``layout`` (``hf`` or ``original``) -> the transformers config;
        errors name ``where`` (the file and key the dict came from)."""
        try:
            if layout == "original":
                return self.config_to_hf(dict(raw))
            return self.hf_config_class.from_dict({k: v for k, v in raw.items() if k not in _FILE_KEYS})
        except KeyError as err:
            raise ValueError(f"{where} lacks the field {err.args[0]!r}") from err
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err

    def to_hf(self, sd: Tensors, layout: str) -> Tensors:
        """A state dict in ``layout`` -> transformers' keys."""
        return self.weights_to_hf(sd) if layout == "original" else sd

    def own_config(self, cfg: PretrainedConfig) -> dict:
        """A transformers config -> the original layout's config.json dict."""
        return self.config_from_hf(cfg) | {
            "architectures": [self.architecture],
            "model_type": self.model_type,
        }


VISION_FAMILIES: dict[str, VisionFamily] = {
    f.name: f
    for f in (
        VisionFamily(
            "internvit",
            "InternVLVisionModel",
            "InternVisionModel",
            "intern_vit_6b",
            config_to_hf=convert.vision_config_from_original,
            config_from_hf=convert.vision_config_to_original,
            weights_to_hf=convert.vision_original_to_hf,
            weights_from_hf=convert.vision_hf_to_original,
        ),
    )
}


def _architecture(raw: Mapping[str, Any]) -> str | None:
    return (raw.get("architectures") or [None])[0]


def llm_family(name: str) -> LLMFamily:
    """A family by name (``qwen2``) or by checkpoint architecture (``Qwen2ForCausalLM``)."""
    if name in LLM_FAMILIES:
        return LLM_FAMILIES[name]
    for family in LLM_FAMILIES.values():
        if family.architecture == name:
            return family
    raise ValueError(f"unknown LLM family {name!r}; known: {', '.join(LLM_FAMILIES)}")


def llm_family_of(raw: Mapping[str, Any], where: str) -> LLMFamily:
    """The family of an LLM config.json dict, from its ``architectures``."""
    arch = _architecture(raw)
    for family in LLM_FAMILIES.values():
        if family.architecture == arch:
            return family
    known = ", ".join(f.architecture for f in LLM_FAMILIES.values())
    raise ValueError(f"unsupported LLM architecture {arch!r} in {where}; supported: {known}")


def llm_family_running(cfg: PretrainedConfig) -> LLMFamily:
    """The transformers-native family of a loaded LLM config (what a model in memory is)."""
    for family in LLM_FAMILIES.values():
        if family.native and family.hf_model_type == cfg.model_type:
            return family
    raise ValueError(f"no LLM family runs as transformers model_type {cfg.model_type!r}")


def vision_family_of(raw: Mapping[str, Any], where: str) -> tuple[VisionFamily, str]:
    """(family, layout) of a vision config.json dict; layout is ``hf`` or ``original``."""
    arch = _architecture(raw)
    for family in VISION_FAMILIES.values():
        if arch == family.hf_architecture:
            return family, "hf"
        if arch == family.architecture:
            return family, "original"
    known = ", ".join(a for f in VISION_FAMILIES.values() for a in (f.hf_architecture, f.architecture))
    raise ValueError(f"unsupported vision architecture {arch!r} in {where}; supported: {known}")


def vision_family(name: str = "internvit") -> VisionFamily:
    """A vision family by name."""
    if name not in VISION_FAMILIES:
        raise ValueError(f"unknown vision family {name!r}; known: {', '.join(VISION_FAMILIES)}")
    return VISION_FAMILIES[name]
