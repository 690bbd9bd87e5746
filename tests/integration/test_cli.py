"""The stage recipes through the real CLI (LightningCLI) on tiny components."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
import torch
import yaml

from internvl_lightning.cli import main
from internvl_lightning.model.load import load_pretrained_vlm
from internvl_lightning.training.checkpoint import load_lightning_checkpoint
from tests.helpers.recipes import CONF, cpu_recipe


def test_stage1_then_stage2_through_the_cli(tiny_components, shards, tmp_path, monkeypatch, recwarn):
    """(g) fit writes a checkpoint that reloads, the resolved config, and the stage output for the next stage."""
    vision, llm = tiny_components
    monkeypatch.setattr(sys, "argv", ["internvl_lightning", "fit", "--config", "stage1.yaml"])  # as typed
    main(["fit", "--config", str(cpu_recipe("stage1", tmp_path, max_steps=4)),
          f"--model.vision={vision}", f"--model.llm={llm}", f"--data.shards={shards}", "--model.lr=1e-3"])  # fmt: skip
    run = tmp_path / "stage1"
    assert not [w for w in recwarn if "args parameter" in str(w.message)]  # LightningCLI's warning
    ckpts = sorted(run.rglob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in ckpts), ckpts
    saved = list(run.rglob("config.yaml"))
    assert saved, "LightningCLI saves the resolved config beside the checkpoints"
    resolved = yaml.safe_load(saved[0].read_text())
    assert resolved["model"]["lr"] == pytest.approx(1e-3)
    # data.image_size / tokens_per_tile / tokenizer are linked from the model (not in the saved
    # file); the run could only succeed with 16 tokens per 64-px tile (checked in the forward).

    model, tok_dir = load_lightning_checkpoint(next(p for p in ckpts if p.name == "last.ckpt"))
    stage1 = load_pretrained_vlm(run / "hf")
    assert (run / "hf" / "stage_complete.json").exists()
    for (name, a), (_, b) in zip(model.state_dict().items(), stage1.state_dict().items()):
        assert torch.equal(a, b), name
    # the export command reads the Lightning checkpoint too (training/ reads .ckpt; export/ only writes)
    last = str(next(p for p in ckpts if p.name == "last.ckpt"))
    assert main(["export", "--checkpoint", last, "--out_dir", str(tmp_path / "from_ckpt")]) == 0
    exported = load_pretrained_vlm(tmp_path / "from_ckpt")
    assert all(
        torch.equal(a, b) for a, b in zip(exported.state_dict().values(), stage1.state_dict().values())
    )
    start = load_pretrained_vlm(run / "hf")
    main(["fit", "--config", str(cpu_recipe("stage2", tmp_path, max_steps=2)),
          f"--model.init_from={run / 'hf'}", f"--data.shards={shards}"])  # fmt: skip
    stage2 = load_pretrained_vlm(tmp_path / "stage2" / "hf")
    changed = [
        n
        for (n, a), (_, b) in zip(start.state_dict().items(), stage2.state_dict().items())
        if not torch.equal(a, b)
    ]
    assert any(n.startswith("model.language_model") for n in changed), "stage 2 trains the LLM"
    assert any(n.startswith("model.vision_tower") for n in changed), "stage 2 trains the ViT"


def test_recipe_without_components_says_what_to_pass(tmp_path, capsys):
    with pytest.raises((SystemExit, ValueError)) as err:
        main(["fit", "--config", str(CONF / "stage1.yaml"), "--trainer.accelerator=cpu"])
    text = str(err.value) + capsys.readouterr().err
    assert "--model.vision" in text


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "components", "shard", "inspect"):
        assert command in out


def test_fit_offers_no_optimizer_it_would_not_use(capsys):
    """The module's AdamW groups and schedule are the optimizer: no --optimizer flag to crash on."""
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "--model.lr" in out and "--optimizer" not in out and "--lr_scheduler" not in out


@dataclass(frozen=True)
class Greeting:
    """How to greet."""

    word: str = "hello"
    """The greeting word."""
    times: int = 1
    """How often to say it."""


def greet(name: str, greeting: Greeting = Greeting(), shout: bool = False, end_mark: str = "") -> str:
    """Greet someone (a command of the tests).

    Args:
        name: who to greet.
        greeting: how.
        shout: in capitals.
        end_mark: text after the name.
    """
    if not name:
        raise ValueError("greet needs a name")
    text = " ".join([greeting.word] * greeting.times) + f", {name}{end_mark}"
    return text.upper() if shout else text


def test_a_new_command_is_one_entry(monkeypatch, tmp_path, capsys):
    """docs/ARCHITECTURE.md, "add a command": one line in cli.COMMANDS naming a typed function; its
    docstring is the help, and the same arguments work from the command line, a YAML file and Python."""
    from internvl_lightning import cli

    monkeypatch.setitem(cli.COMMANDS, "greet", f"{__name__}:greet")
    assert main(["--help"]) == 0
    assert "greet       Greet someone (a command of the tests)." in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["greet", "--help"])
    out = capsys.readouterr().out
    assert "who to greet" in out and "--greeting.times" in out and "How often to say it" in out
    assert main(["greet", "--name", "Ada", "--greeting.times", "2", "--shout"]) == 0  # bare bool flag
    assert capsys.readouterr().out == "HELLO HELLO, ADA\n"
    args = tmp_path / "args.yaml"
    args.write_text("name: Ada\ngreeting: {word: hi}\n")
    assert (
        main(["greet", "--config", str(args), "--greeting.times=3", "--end-mark=!"]) == 0
    )  # YAML + overrides
    assert capsys.readouterr().out == "hi hi hi, Ada!\n"
    assert main(["greet", "--name", "Ada", "--json"]) == 0
    assert capsys.readouterr().out == '"hello, Ada"\n'
    assert main(["greet", "--name", ""]) == 2
    assert "error: greet needs a name" in capsys.readouterr().err
    assert greet("Ada", Greeting(times=2)) == "hello hello, Ada"  # the same function from Python


def test_pipeline_spec_file_through_the_command(tiny_components, shards, tmp_path, capsys):
    """`pipeline --config spec.yaml`: the spec is the command's arguments; a rerun skips finished stages."""
    vision, llm = tiny_components
    spec = {
        "run_dir": str(tmp_path / "run"),
        "stages": [
            {
                "name": "stage1",
                "config": str(cpu_recipe("stage1", tmp_path, max_steps=2)),
                "set": {"model.vision": str(vision), "model.llm": str(llm), "data.shards": str(shards)},
            },
            {
                "name": "stage2",
                "config": str(cpu_recipe("stage2", tmp_path, max_steps=1)),
                "set": {"data.shards": str(shards)},
            },
        ],
        "export": {"hf": True},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", "--config", str(path), "--json"]) == 0
    printed = capsys.readouterr().out
    out = json.loads(printed[printed.rindex("\n{\n") :])  # the result, printed last as JSON
    assert out == json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert out["final"] == str(tmp_path / "run" / "stage2" / "hf")
    assert (tmp_path / "run" / "export" / "hf" / "config.json").is_file()
    assert load_pretrained_vlm(out["final"]).config.text_config.vocab_size > 0
    assert main(["pipeline", "--config", str(path)]) == 0
    assert capsys.readouterr().out.count("already complete, skipping") == 2
