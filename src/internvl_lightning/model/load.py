"""Reading every checkpoint kind a user can hand us (a Lightning ``.ckpt``: ``training/checkpoint.py``).

* component dirs: a vision encoder (transformers' or the original InternViT layout) and an LLM
  (any family of ``families.py``, in its own layout), read into transformers' configs and keys;
* a projector file (``mlp1`` or transformers names);
* full VLM dirs: HF-native InternVL (``save_pretrained`` output, e.g. a stage output or an
  export) and the original InternVL layout (``InternVLChatModel``).

Errors name the directory and what is wrong with it. Weights come from safetensors, or from torch
files with ``weights_only=True`` only (no pickle code execution).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration, PretrainedConfig, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from ..constants import IMG_CONTEXT_TOKEN
from ..hub import model_dir
from ..tokenizer import TokenizerSource, load_tokenizer, token_id_in_files
from .convert import Tensors, projector_to_hf
from .families import LLMFamily, VisionFamily, llm_family_of, vision_family_of
from .layout import ARCHITECTURE as ORIGINAL_ARCHITECTURE
from .layout import is_original_config, original_to_hf, read_original_config
from .options import apply_options
from .zero3 import full_shapes

PathLike = str | Path
VLM_ARCHITECTURE = "InternVLForConditionalGeneration"  # HF-native InternVL dirs


# ---------------------------------------------------------------- files


def read_config(directory: PathLike, what: str = "component") -> dict:
    """config.json of a checkpoint directory, with errors that name the directory."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{what} directory {d} does not exist")
    path = d / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{what} directory {d} has no config.json")
    return json.loads(path.read_text())


def _indexed_shards(d: Path, index_name: str) -> list[Path]:
    """The shard files a weight index names, each checked to be there (empty: no index)."""
    index = d / index_name
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index} is not a weight index (a JSON object with weight_map): {err}") from err
    files = sorted({d / str(name) for name in weight_map.values()})
    for f in files:
        if f.parent != d:
            raise ValueError(f"{index} names a shard outside its directory: {f.name!r}")
        if not f.is_file():
            keys = [k for k, v in weight_map.items() if d / str(v) == f]
            raise FileNotFoundError(
                f"{index} names the shard {f.name}, which is missing (it holds {keys[0]} and {len(keys) - 1} more)"
            )
    return files


def read_weights(directory: PathLike) -> Tensors:
    """All tensors of a checkpoint directory: ``*.safetensors`` (sharded or not); torch ``.bin``
    files only as a fallback, and then with ``weights_only=True`` (no pickle code execution)."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory {d} does not exist")
    files = _indexed_shards(d, "model.safetensors.index.json") or sorted(d.glob("*.safetensors"))
    if files:
        sd: Tensors = {}
        for f in files:
            sd.update(load_file(str(f)))
        return sd
    files = sorted(d.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no weights (*.safetensors or pytorch_model*.bin) in {d}")
    sd = {}
    for f in files:
        sd.update(torch.load(f, map_location="cpu", weights_only=True))
    return sd


def check_state_dict(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor | tuple[int, ...]],
    where: str,
    ignore: tuple[str, ...] = (),
) -> None:
    """Raise one readable error if ``sd`` (tensors, or their shapes) does not fit ``module``
    (missing/unexpected keys, shapes; ZeRO-3 partitioned parameters count with their full shape)."""
    expected = {k: v for k, v in full_shapes(module).items() if k not in ignore}
    got = {k: tuple(v if isinstance(v, tuple) else v.shape) for k, v in sd.items() if k not in ignore}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: checkpoint {got[k]} vs model {expected[k]}"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    problems = [
        (name, items)
        for name, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        lines = [f"weights in {where} do not match the model its config describes:"]
        for name, items in problems:
            shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  {name} ({len(items)}): {shown}")
        raise ValueError("\n".join(lines))


# ---------------------------------------------------------------- components


def _vision_kind(vision_dir: PathLike) -> tuple[VisionFamily, str, dict]:
    raw = read_config(vision_dir, "vision")
    family, layout = vision_family_of(raw, str(Path(vision_dir) / "config.json"))
    return family, layout, raw


def vision_layout(vision_dir: PathLike) -> str:
    """``hf`` or ``original`` (InternViT), from config.json's architectures."""
    return _vision_kind(vision_dir)[1]


def load_vision_config(vision_dir: PathLike) -> PretrainedConfig:
    """The transformers config of a vision encoder dir (either layout)."""
    family, layout, raw = _vision_kind(vision_dir)
    return family.hf_config(raw, layout, str(Path(vision_dir) / "config.json"))


def load_vision(vision_dir: PathLike) -> tuple[PretrainedConfig, Tensors]:
    """Config + transformers state dict of a vision encoder dir (either layout)."""
    family, layout, raw = _vision_kind(vision_dir)
    config = family.hf_config(raw, layout, str(Path(vision_dir) / "config.json"))
    return config, family.to_hf(read_weights(vision_dir), layout)


def llm_family_of_dir(llm_dir: PathLike) -> LLMFamily:
    """The family of an LLM dir, from config.json's architectures."""
    return llm_family_of(read_config(llm_dir, "LLM"), str(Path(llm_dir) / "config.json"))


def load_llm_config(llm_dir: PathLike) -> PretrainedConfig:
    """The transformers config of an LLM dir (InternLM2 becomes Llama)."""
    raw = read_config(llm_dir, "LLM")
    return llm_family_of(raw, str(Path(llm_dir) / "config.json")).hf_config(raw)


def load_llm(llm_dir: PathLike) -> tuple[PretrainedConfig, Tensors]:
    """Config + transformers state dict (``model.*``, ``lm_head.weight``) of an LLM dir."""
    family = llm_family_of_dir(llm_dir)
    cfg = load_llm_config(llm_dir)
    sd = {k: v for k, v in read_weights(llm_dir).items() if not k.endswith("rotary_emb.inv_freq")}
    return cfg, family.to_hf(sd, cfg)


def load_projector(path: PathLike) -> Tensors:
    """Projector weights from a file (safetensors, or torch with weights_only=True), with original
    (``mlp1.0/1/3`` or ``0/1/3``) or transformers (``layer_norm/linear_1/linear_2``) names."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"projector file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw = load_file(str(p))
    else:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    return projector_to_hf(raw)


# ---------------------------------------------------------------- full VLM dirs


def vlm_layout(directory: PathLike) -> str | None:
    """``hf`` (HF-native InternVL), ``original`` (InternVL's own layout) or None (not a VLM dir)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    if VLM_ARCHITECTURE in (raw.get("architectures") or []):
        return "hf"
    return "original" if is_original_config(raw) else None


def is_vlm_dir(directory: PathLike) -> bool:
    """True for an HF-native full InternVL directory (e.g. a stage output)."""
    return vlm_layout(directory) == "hf"


def load_pretrained_vlm(
    directory: PathLike,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    drop_path_rate: float | None = None,
    select_layer: int | None = None,
    ps_version: str | None = None,
    downsample_ratio: float | None = None,
) -> InternVLForConditionalGeneration:
    """Load an HF-native InternVL dir (``save_pretrained`` output, e.g. a previous stage).
    ``ps_version`` / ``drop_path_rate`` / ``select_layer`` default to what its config stores;
    ``downsample_ratio`` is fixed by the projector's shape and only checked."""
    d = Path(directory)
    if not is_vlm_dir(d):
        arch = read_config(d, "VLM").get("architectures")
        raise ValueError(f"{d} is not an {VLM_ARCHITECTURE} directory (architectures: {arch})")
    model, info = InternVLForConditionalGeneration.from_pretrained(
        str(d),
        dtype=dtype,
        attn_implementation=attn_implementation,
        use_safetensors=True,
        output_loading_info=True,
    )
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        raise ValueError(f"weights in {d} do not match its config.json: {bad}")
    cfg = model.config
    _check_downsample_ratio(d, cfg.downsample_ratio, downsample_ratio)
    if device is not None:
        model = model.to(device)
    stored = (getattr(cfg, "drop_path_rate", None) or 0.0, getattr(cfg, "ps_version", None) or "v2")
    return _with_options(model, *stored, drop_path_rate, ps_version, select_layer)


def _check_downsample_ratio(where: Path, stored: float, given: float | None) -> None:
    """``downsample_ratio`` is fixed by the projector's shape: a different one can only be refused."""
    if given is not None and given != stored:
        raise ValueError(f"{where} was trained with downsample_ratio {stored}, not {given}")


def _with_options(
    model: InternVLForConditionalGeneration,
    stored_drop_path_rate: float,
    stored_ps_version: str,
    drop_path_rate: float | None,
    ps_version: str | None,
    select_layer: int | None,
) -> InternVLForConditionalGeneration:
    """A loaded VLM with the options given, None keeping what its directory stored (the feature
    layer is in its config)."""
    cfg = model.config
    return apply_options(
        model.eval(),
        stored_drop_path_rate if drop_path_rate is None else drop_path_rate,
        stored_ps_version if ps_version is None else ps_version,
        cfg.vision_feature_layer if select_layer is None else select_layer,
    )


def _image_token_id(directory: Path) -> int:
    token_id = token_id_in_files(directory, IMG_CONTEXT_TOKEN)
    if token_id is None:
        raise ValueError(
            f"the tokenizer files in {directory} (tokenizer.json, added_tokens.json, "
            f"tokenizer_config.json) have no {IMG_CONTEXT_TOKEN} token"
        )
    return token_id


def load_original(
    directory: PathLike,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    drop_path_rate: float | None = None,
    select_layer: int | None = None,
    ps_version: str | None = None,
    downsample_ratio: float | None = None,
) -> InternVLForConditionalGeneration:
    """Read an original-layout InternVL directory into our HF-native model (InternLM2 becomes
    Llama); options as :func:`load_pretrained_vlm` (None keeps what its config.json says)."""
    d = Path(directory)
    spec = read_original_config(read_config(d, "VLM"), _image_token_id(d), str(d / "config.json"))
    config = spec.config
    _check_downsample_ratio(d, config.downsample_ratio, downsample_ratio)
    sd = original_to_hf(read_weights(d), spec.llm, config.text_config)
    with torch.device(device or "cpu"), no_init_weights():
        model = InternVLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation=attn_implementation
        )
    tie = config.tie_word_embeddings
    if tie:
        model.tie_weights()
        sd.pop("lm_head.weight", None)
    check_state_dict(model, sd, where=str(d), ignore=("lm_head.weight",) if tie else ())
    model.load_state_dict(sd, strict=not tie)
    stored = (spec.drop_path_rate, spec.ps_version)
    return _with_options(model, *stored, drop_path_rate, ps_version, select_layer)


def load_vlm(
    directory: PathLike, device: str | torch.device | None = None, **options
) -> InternVLForConditionalGeneration:
    """Any full VLM dir, HF-native or original layout, or a hub id naming one (``options`` as
    :func:`load_pretrained_vlm`)."""
    directory = model_dir(directory)
    layout = vlm_layout(directory)
    if layout == "hf":
        return load_pretrained_vlm(directory, device, **options)
    if layout == "original":
        return load_original(directory, device, **options)
    arch = read_config(directory, "model").get("architectures")
    raise ValueError(
        f"{directory} is neither an HF-native InternVL directory ({VLM_ARCHITECTURE}) nor an "
        f"original-layout one ({ORIGINAL_ARCHITECTURE}); its config.json says architectures {arch}"
    )


def load_vlm_and_tokenizer(
    source: InternVLForConditionalGeneration | PathLike,
    tokenizer: TokenizerSource | None = None,
    trust_remote_code: bool = False,
    **options,
) -> tuple[InternVLForConditionalGeneration, PreTrainedTokenizerBase]:
    """A model object or a full VLM dir, and its tokenizer: ``tokenizer`` (a dir or an object)
    when given, else the dir's own (``trust_remote_code``: see ``tokenizer.read_tokenizer``).
    ``options`` as :func:`load_vlm`."""
    if isinstance(source, InternVLForConditionalGeneration):
        if tokenizer is None:
            raise ValueError("no tokenizer: pass tokenizer=<LLM dir or tokenizer object> with a model object")
        return source, load_tokenizer(tokenizer, trust_remote_code)
    path = model_dir(source)
    if path.is_file() and path.suffix == ".ckpt":
        raise ValueError(
            f"{path} is a Lightning checkpoint: read it with "
            "internvl_lightning.training.checkpoint.load_checkpoint (the evaluate and export commands do)"
        )
    tok = load_tokenizer(tokenizer if tokenizer is not None else path, trust_remote_code)
    return load_vlm(path, **options), tok
