"""Settings the data side must take from the model: one source of truth, linked in the CLI.

The tokenizer is the LLM's (or the previous stage's), and the tile size and the number of
`<IMG_CONTEXT>` tokens per tile follow from the vision encoder's config. Linking them means a
stage YAML names each component once, and the saved config shows the values that were used.
"""

from __future__ import annotations

import json
from pathlib import Path


def _vision_config(vision: str | None, init_from: str | None, preset: str | None) -> tuple[int, int]:
    """(image_size, patch_size) of the vision encoder a run will build."""
    if init_from:
        cfg = json.loads((Path(init_from) / "config.json").read_text())
        cfg = cfg.get("vision_config", cfg)
    elif vision:
        path = Path(vision) / "config.json"
        if not path.is_file():
            raise ValueError(f"vision encoder directory {vision} has no config.json")
        cfg = json.loads(path.read_text())
    elif preset:
        from ..model.presets import get_preset

        p = get_preset(preset).vision
        return p.image_size, p.patch_size
    else:
        raise ValueError(
            "pass --model.vision=DIR (stage 1) or --model.init_from=DIR (a previous stage's output)"
        )
    size, patch = cfg.get("image_size", 448), cfg.get("patch_size", 14)
    size = size[0] if isinstance(size, list) else size
    patch = patch[0] if isinstance(patch, list) else patch
    return int(size), int(patch)


def tokenizer_dir(llm: str | None, init_from: str | None) -> str | None:
    """The tokenizer goes with the weights: a previous stage's dir, else the LLM dir."""
    return init_from or llm


def image_size(vision: str | None, init_from: str | None, preset: str | None) -> int:
    return _vision_config(vision, init_from, preset)[0]


def tokens_per_tile(
    vision: str | None, init_from: str | None, preset: str | None, downsample_ratio: float | None
) -> int:
    """(image_size / patch_size)^2 x downsample_ratio^2: 256 for InternViT at 448 px."""
    size, patch = _vision_config(vision, init_from, preset)
    ratio = downsample_ratio
    if ratio is None and init_from:
        ratio = json.loads((Path(init_from) / "config.json").read_text()).get("downsample_ratio")
    return int((size // patch) ** 2 * (ratio or 0.5) ** 2)


def link_model_to_data(parser) -> None:
    """Add the model -> data links to a LightningCLI parser."""
    m = "model."
    parser.link_arguments((m + "llm", m + "init_from"), "data.tokenizer", compute_fn=tokenizer_dir)
    parser.link_arguments(
        (m + "vision", m + "init_from", m + "preset"), "data.image_size", compute_fn=image_size
    )
    parser.link_arguments(
        (m + "vision", m + "init_from", m + "preset", m + "downsample_ratio"),
        "data.tokens_per_tile",
        compute_fn=tokens_per_tile,
    )
