"""Run stage 1 -> 1.5 -> 2 -> evaluate -> export from one spec, skipping what is already done.

A pipeline spec (YAML or a dict) names each stage's recipe and the few values a user fills in:

    run_dir: runs/internvl-8b
    stages:
      - name: stage1
        config: conf/stage1.yaml
        set: {model.vision: /ckpt/InternViT-300M-448px, model.llm: /ckpt/internlm2_5-7b-chat,
              data.shards: /data/stage1_shards}
      - name: stage1_5
        config: conf/stage1_5.yaml
        set: {data.shards: /data/stage1_5_shards}
      - name: stage2
        config: conf/stage2.yaml
        set: {data.shards: /data/stage2_shards}
    evaluate:
      - {benchmark: mmbench, data: /data/mmbench_dev_en.tsv}
    export: {original: true}

Each stage runs in `run_dir/<name>` (checkpoints, logs, resolved config) and ends with an
HF-native output in `run_dir/<name>/hf`, which becomes the next stage's `model.init_from`. A stage
whose output holds `stage_complete.json` is skipped; an interrupted one resumes from its last
checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class StageSpec:
    """One stage of a pipeline."""

    name: str
    """Directory name of the stage inside ``run_dir``."""
    config: str
    """The stage's recipe (a ``fit`` YAML, e.g. conf/stage1.yaml)."""
    set: dict[str, Any] = field(default_factory=dict)
    """Values to fill in, by dotted key (``model.vision``, ``data.shards``, ``trainer.max_steps``)."""


def _set(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _callback(cfg: dict, suffix: str) -> dict | None:
    for cb in cfg.get("trainer", {}).get("callbacks") or []:
        if isinstance(cb, dict) and cb.get("class_path", "").endswith(suffix):
            return cb.setdefault("init_args", {})
    return None


def stage_config(spec: StageSpec, stage_dir: Path, init_from: Path | None) -> dict:
    """The stage's recipe with the user's values, this run's directories and the hand-off applied."""
    cfg = yaml.safe_load(Path(spec.config).read_text())
    for key, value in spec.set.items():
        _set(cfg, key, value)
    _set(cfg, "trainer.default_root_dir", str(stage_dir))
    if init_from is not None:
        _set(cfg, "model.init_from", str(init_from))
        for key in ("vision", "llm", "mlp"):
            cfg.get("model", {}).pop(key, None)
    out = _callback(cfg, "StageOutput")
    if out is None:
        cfg["trainer"].setdefault("callbacks", []).append(
            {"class_path": "internvl_lightning.training.stage_output.StageOutput", "init_args": {}}
        )
        out = _callback(cfg, "StageOutput")
    out["dirpath"] = str(stage_dir / "hf")
    ckpt = _callback(cfg, "ModelCheckpoint")
    if ckpt is not None:
        ckpt["dirpath"] = str(stage_dir / "checkpoints")
    return cfg


def is_complete(stage_dir: Path) -> bool:
    return (stage_dir / "hf" / "stage_complete.json").is_file()


def run_stage(spec: StageSpec, stage_dir: Path, init_from: Path | None) -> Path:
    """Fit one stage through the CLI (so it runs exactly like `fit --config`); returns its output dir."""
    from .fit import run_lightning

    stage_dir.mkdir(parents=True, exist_ok=True)
    config = stage_dir / "stage.yaml"
    config.write_text(yaml.safe_dump(stage_config(spec, stage_dir, init_from), sort_keys=False))
    args = ["fit", "--config", str(config)]
    checkpoints = stage_dir / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        # "last": the newest intact checkpoint, or a clear error; never step 0 over a broken last.ckpt
        args.append("--ckpt_path=last")
    run_lightning(args)
    if not is_complete(stage_dir):
        raise RuntimeError(f"stage {spec.name} ended without writing its output in {stage_dir / 'hf'}")
    return stage_dir / "hf"


def run_pipeline(
    run_dir: str | Path,
    stages: list[StageSpec],
    evaluate: list[dict[str, Any]] | None = None,
    export: dict[str, bool] | None = None,
    init_from: str | Path | None = None,
    on_stage_end: Callable[[str, Path], None] | None = None,
) -> dict[str, Any]:
    """Run stage 1 -> 1.5 -> 2 -> evaluate -> export from one spec, skipping finished stages.

    Each stage runs in ``run_dir/<name>`` and ends with an HF-native output in
    ``run_dir/<name>/hf``, the next stage's ``model.init_from``; an interrupted stage resumes from
    its last checkpoint. The spec is these arguments in a YAML file (``pipeline --config FILE``).

    Args:
        run_dir: where every stage, the evaluations and the export go.
        stages: the stages in order (name, recipe, values to set).
        evaluate: evaluations of the final model: ``{benchmark, data, ...}`` (options of ``evaluate``).
        export: ``{hf: true, original: false}``: the exports of the final model.
        init_from: a model dir the first stage starts from (instead of its recipe's components).
        on_stage_end: called with (stage name, output dir) after each stage (Python only).
    """
    run_dir = Path(run_dir)
    specs = [s if isinstance(s, StageSpec) else StageSpec(**s) for s in stages]
    outputs: dict[str, Any] = {"stages": {}}
    start = Path(init_from) if init_from else None
    for spec in specs:
        stage_dir = run_dir / spec.name
        if is_complete(stage_dir):
            print(f"[pipeline] {spec.name}: already complete, skipping")
        else:
            print(f"[pipeline] {spec.name}: training ({spec.config})")
            run_stage(spec, stage_dir, start)
        start = stage_dir / "hf"
        outputs["stages"][spec.name] = str(start)
        if on_stage_end is not None:
            on_stage_end(spec.name, start)
    if start is None:
        raise ValueError("the pipeline has no stages")
    outputs["final"] = str(start)
    outputs["evaluate"] = [evaluate_output(start, run_dir / "eval", **e) for e in evaluate or []]
    if export:
        outputs["export"] = export_output(start, run_dir / "export", **export)
    (run_dir / "pipeline.json").write_text(json.dumps(outputs, indent=2) + "\n")
    return outputs


def run_pipeline_file(path: str | Path, **overrides: Any) -> dict[str, Any]:
    """:func:`run_pipeline` with the arguments of a YAML spec file."""
    spec: Mapping[str, Any] = yaml.safe_load(Path(path).read_text())
    return run_pipeline(**(dict(spec) | overrides))


def evaluate_output(
    model_dir: Path, out_dir: Path, benchmark: str, data: str, **kwargs: Any
) -> dict[str, Any]:
    """Evaluate a stage output on one benchmark; the report lands in `out_dir`."""
    from ..evaluation.runner import evaluate

    result = evaluate(str(model_dir), benchmark, data, out_dir=str(out_dir), **kwargs)
    return {"benchmark": benchmark, "score": result.score, "samples": len(result.predictions)}


def export_output(model_dir: Path, out_dir: Path, hf: bool = True, original: bool = False) -> dict[str, str]:
    """Copy the final model out as an HF-native directory and, optionally, in the original layout."""
    from .commands import export_checkpoint

    done = {}
    if hf:
        done["hf"] = str(export_checkpoint(model_dir, out_dir / "hf"))
    if original:
        done["original"] = str(export_checkpoint(model_dir, out_dir / "original", layout="original"))
    return done
