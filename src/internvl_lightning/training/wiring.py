"""Settings the data side must take from the model: one source of truth, linked in the CLI.

The tokenizer is the LLM's (or the previous stage's), and the tile size and the number of
`<IMG_CONTEXT>` tokens per tile follow from the vision encoder's config. Linking them means a
stage YAML names each component once, and the saved config shows the values that were used.
"""

from __future__ import annotations

from typing import Any

from ..hub import model_dir
from ..model.build import check_sources
from ..model.config import tokens_per_tile as tile_tokens
from ..model.config import vision_geometry
from ..model.load import load_vision_config, read_config
from ..model.presets import get_preset


def _vision(vision: str | None, init_from: str | None, preset: str | None) -> tuple[Any, float | None]:
    """The vision encoder a run will build (a config, a config dict or a preset) and the stored
    downsample ratio, if any."""
    check_sources(vision, None, None, init_from)  # parse time: before any weight is read
    if init_from:
        raw = read_config(model_dir(init_from), "init_from")
        return raw.get("vision_config", raw), raw.get("downsample_ratio")
    if vision:
        return load_vision_config(model_dir(vision)), None
    if preset:
        p = get_preset(preset)
        return p.vision, p.downsample_ratio
    raise ValueError("pass --model.vision=DIR (stage 1) or --model.init_from=DIR (a previous stage's output)")


def tokenizer_dir(llm: str | None, init_from: str | None) -> str | None:
    """The tokenizer goes with the weights: a previous stage's dir, else the LLM dir (a hub id:
    its local snapshot)."""
    check_sources(None, llm, None, init_from)
    source = init_from or llm
    return None if source is None else str(model_dir(source))


def image_size(vision: str | None, init_from: str | None, preset: str | None) -> int:
    return vision_geometry(_vision(vision, init_from, preset)[0])[0]


def tokens_per_tile(
    vision: str | None, init_from: str | None, preset: str | None, downsample_ratio: float | None
) -> int:
    """(image_size / patch_size)^2 x downsample_ratio^2: 256 for InternViT at 448 px."""
    config, stored = _vision(vision, init_from, preset)
    return tile_tokens(config, downsample_ratio or stored or 0.5)


def link_model_to_data(parser) -> None:
    """Add the model -> data links to a LightningCLI parser."""
    m = "model."
    parser.link_arguments((m + "llm", m + "init_from"), "data.tokenizer", compute_fn=tokenizer_dir)
    parser.link_arguments(m + "trust_remote_code", "data.trust_remote_code")
    parser.link_arguments(
        (m + "vision", m + "init_from", m + "preset"), "data.image_size", compute_fn=image_size
    )
    parser.link_arguments(
        (m + "vision", m + "init_from", m + "preset", m + "downsample_ratio"),
        "data.tokens_per_tile",
        compute_fn=tokens_per_tile,
    )
