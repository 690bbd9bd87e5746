"""The shipped recipes (conf/*.yaml) made to run on one CPU, with nothing else changed."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import REPO

CONF = REPO / "conf"


def cpu_recipe(name: str, tmp: Path, max_steps: int = 3) -> Path:
    """The shipped recipe with only the hardware and the run length changed for one CPU."""
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    t = cfg["trainer"]
    t.update(
        accelerator="cpu", devices=1, num_nodes=1, precision="32-true", strategy="auto", max_steps=max_steps
    )
    t.update(default_root_dir=str(tmp / name), enable_progress_bar=False, gradient_clip_val=1.0)
    for cb in t["callbacks"]:
        args = cb.get("init_args", {})
        if cb["class_path"].endswith("ModelCheckpoint"):
            args["every_n_train_steps"] = 2
        if cb["class_path"].endswith("StageOutput"):
            args["dirpath"] = str(tmp / name / "hf")
    cfg["model"]["attn_implementation"] = "sdpa"
    if "packs_per_step" in cfg["model"]:
        cfg["model"]["packs_per_step"] = None  # one pack per step on one CPU (not the recipe's 512)
    cfg["data"].update(num_workers=0, max_dynamic_patch=4)
    cfg["data"]["packing"].update(max_packed_tokens=1024, num_images_expected=16)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
