"""The SLURM launchers: valid bash, the 64 x 8 layout, and an srun line the `fit` CLI accepts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from internvl_lightning.cli import main
from tests.helpers import REPO

ROOT = REPO
SLURM = ROOT / "examples" / "slurm"
# The srun arguments go to main() as `args` while pytest owns sys.argv; Lightning warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
STAGES = {"stage1": "conf/stage1.yaml", "stage1_5": "conf/stage1_5.yaml", "stage2": "conf/stage2.yaml"}


def srun_args(script: Path, values: dict[str, str]) -> list[str]:
    """Arguments after `-m internvl_lightning` of the script's srun line, shell variables filled in."""
    text = script.read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.lstrip().startswith("srun "))
    line = re.sub(r'"\$\{\w+\[@\]\}"', "", line)  # "${RESUME[@]}" "${EXTRA[@]}": empty arrays here
    line = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], line)
    words = shlex.split(line)
    return words[words.index("internvl_lightning") + 1 :]


@pytest.mark.parametrize("stage", STAGES)
def test_script_layout(stage):
    script = SLURM / f"{stage}.sbatch"
    text = script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
    for opt in (
        "--nodes=64",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=16",
        "--signal=SIGUSR1@90",
    ):
        assert f"#SBATCH {opt}" in text, opt
    assert 'source "$REPO/examples/slurm/env.sh"' in text and (SLURM / "env.sh").is_file()
    assert f'--config "$REPO/{STAGES[stage]}"' in text and (ROOT / STAGES[stage]).is_file()


def test_srun_lines_parse_with_the_fit_cli(tmp_path, capsys):
    """Each srun line, with dummy-but-existing component dirs, passes LightningCLI's parser."""
    vision, prev = tmp_path / "vision", tmp_path / "prev"
    for d in (vision, prev):
        d.mkdir()
    (vision / "config.json").write_text(json.dumps({"image_size": 448, "patch_size": 14}))
    (prev / "config.json").write_text(json.dumps({"vision_config": {"image_size": 448, "patch_size": 14}}))
    values = dict(PYTHON="python", REPO=str(ROOT), SLURM_NNODES="64", VISION=str(vision), LLM=str(tmp_path),
                  INIT_FROM=str(prev), SHARDS=str(tmp_path))  # fmt: skip
    # The size overrides conf/README.md documents (26B stage 2) ride along on the last script.
    extra = {
        "stage2": ["--model.lr=2e-5", "--model.drop_path_rate=0.4", "--trainer.strategy.init_args.stage=3"]
    }
    for stage in STAGES:
        args = srun_args(SLURM / f"{stage}.sbatch", values)
        assert args[0] == "fit" and "--trainer.num_nodes=64" in args and "--trainer.devices=8" in args
        with pytest.raises(SystemExit) as done:
            main([*args, *extra.get(stage, []), "--ckpt_path=last", "--print_config"])
        assert done.value.code in (0, None)
        out = capsys.readouterr().out  # DeepSpeed logs its accelerator choice to stdout once: skip it
        cfg = yaml.safe_load("\n".join(ln for ln in out.splitlines() if not ln.startswith("[")))
        assert cfg["trainer"]["num_nodes"] == 64 and str(cfg["trainer"]["devices"]) == "8"
        assert cfg["data"]["shards"] == str(tmp_path)
    assert cfg["model"]["lr"] == 2e-5 and cfg["model"]["drop_path_rate"] == 0.4
    assert cfg["trainer"]["strategy"]["init_args"]["stage"] == 3


def test_lora_finetune_config_parses(tmp_path, capsys):
    """conf/README.md's LoRA fine-tune: stage2.yaml with a frozen backbone and an LLM rank."""
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "config.json").write_text(json.dumps({"vision_config": {"image_size": 448, "patch_size": 14}}))
    cfg = yaml.safe_load((ROOT / STAGES["stage2"]).read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("FreezeSchedule"):
            cb["init_args"]["freeze_backbone"] = True
    path = tmp_path / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(path), f"--model.init_from={prev}", "--model.llm_lora_rank=16",
              f"--data.shards={tmp_path}", "--print_config"])  # fmt: skip
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    parsed = yaml.safe_load("\n".join(ln for ln in out.splitlines() if not ln.startswith("[")))
    assert parsed["model"]["llm_lora_rank"] == 16 and parsed["model"]["vit_lora_rank"] == 0
    assert parsed["model"]["lora_alpha"] is None and parsed["model"]["lora_dropout"] == 0.05
