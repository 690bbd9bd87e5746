"""`python -m internvl_lightning <command>`: one entry point, one argument system (jsonargparse).

`fit` and `validate` are LightningCLI (`training/fit.py`). Every other command is a plain typed
function of the library: its signature is the command line, its docstring the `--help`, and the
same arguments come from a YAML file (`--config FILE`), the command line, or Python. A command's
result is printed (`--json`: as JSON); a bad argument or input is one `error:` line on stderr and
exit status 2.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# command -> "module:function"; the function's signature and docstring define the command.
COMMANDS = {
    "components": "internvl_lightning.model.components:write_components",
    "shard": "internvl_lightning.data.shard:shard_dataset",
    "inspect": "internvl_lightning.data.preview:preview",
    "evaluate": "internvl_lightning.training.commands:evaluate_checkpoint",
    "chat": "internvl_lightning.training.chat:chat",
    "infer": "internvl_lightning.training.infer:infer",
    "export": "internvl_lightning.training.commands:export_checkpoint",
    "plan": "internvl_lightning.training.plan:plan",
    "pipeline": "internvl_lightning.training.pipeline:run_pipeline",
    "demo": "internvl_lightning.demo.run:demo",
}
LIGHTNING_COMMANDS = ("fit", "validate")  # help lines: training/fit.py COMMANDS
POSITIONAL = {"chat": "question"}  # command -> the argument a bare (option-less) value gives


def command_function(name: str) -> Callable[..., Any]:
    module, _, function = COMMANDS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _source(module: str) -> ast.Module:
    # Help screens read sources instead of importing them (which costs the training stack's imports).
    return ast.parse(Path(importlib.util.find_spec(module).origin).read_text())


def summary(name: str) -> str:
    """First line of a command's docstring."""
    module, _, function = COMMANDS[name].partition(":")
    for node in ast.walk(_source(module)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return (ast.get_docstring(node) or "").splitlines()[0]
    return ""


def lightning_help() -> dict[str, str]:
    """One line per LightningCLI command, from ``training/fit.py``'s ``COMMANDS``."""
    for node in _source("internvl_lightning.training.fit").body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMMANDS":
            return ast.literal_eval(node.value)
    return {}


def usage() -> str:
    lightning = lightning_help()
    lines = [
        "usage: python -m internvl_lightning <command> [options]   (<command> --help for its options)",
        "",
    ]
    lines.append("training (LightningCLI):")
    lines += [f"  {name:<11} {lightning.get(name, '')}" for name in LIGHTNING_COMMANDS]
    lines += ["", "tools:"]
    lines += [f"  {name:<11} {summary(name)}" for name in COMMANDS]
    return "\n".join(lines)


def build_parser(name: str, fn: Callable[..., Any]):
    """The jsonargparse parser of a command: ``--config``, the function's arguments, ``--json``."""
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
    from lightning import LightningDataModule
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    objects = (PreTrainedTokenizerBase, PreTrainedModel, LightningDataModule)
    # Dataclass fields' docstrings become help; an argument typed "a path or an object" (a tokenizer,
    # a model, a DataModule) takes the path on the command line, never an object spec (class_path).
    set_parsing_settings(
        docstring_parse_attribute_docstrings=True,
        subclasses_disabled=[lambda cls: isinstance(cls, type) and issubclass(cls, objects)],
    )
    parser = ArgumentParser(prog=f"python -m internvl_lightning {name}", description=inspect.getdoc(fn))
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of these arguments")
    # Callbacks (a function argument) are for Python callers; a command line cannot give one.
    python_only = {n for n, p in inspect.signature(fn).parameters.items() if "Callable" in str(p.annotation)}
    parser.add_function_arguments(fn, as_group=False, skip=python_only)
    parser.add_argument("--json", type=bool, default=False, help="print the result as JSON")
    return parser


def _options(parser, *types: Any) -> set[str]:
    """The option strings of the parser's arguments typed as one of ``types``."""
    return {
        opt
        for action in parser._actions
        for opt in action.option_strings
        if getattr(action, "_typehint", None) in types
    }


def normalize(argv: list[str], parser, positional: str | None = None) -> list[str]:
    """Accept ``--a-b`` for ``--a_b``, a bare ``--flag`` for ``--flag=true`` (bool arguments), a
    repeated ``--name VALUE`` of a list argument as one more item (``--image a --image b``), and a
    value without an option as ``--<positional>=VALUE`` (``chat --model DIR "question"``)."""
    flags = _options(parser, bool, bool | None)
    lists = _options(parser, list[str], list[str] | None)
    out, takes_value = [], False
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            key = "--" + key[2:].replace("-", "_")
            following = argv[i + 1] if i + 1 < len(argv) else None
            if not eq and key in flags and (following or "-").lower() not in ("true", "false"):
                eq, value = "=", "true"
            if key in lists and not (value if eq else following or "").startswith("["):
                key += "+"  # jsonargparse's append
            arg, takes_value = key + eq + value, not eq
        elif positional is not None and not takes_value and (not arg.startswith("-") or " " in arg):
            arg = f"--{positional}={arg}"
        else:
            takes_value = False
        out.append(arg)
    return out


def as_json(result: Any) -> Any:
    """What ``--json`` prints of a result."""
    for method in ("to_dict", "to_json"):
        if callable(getattr(result, method, None)):
            value = getattr(result, method)()
            return json.loads(value) if isinstance(value, str) else value
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    if callable(getattr(result, "_asdict", None)):  # a NamedTuple
        return {k: as_json(v) for k, v in result._asdict().items()}
    if isinstance(result, list | tuple):
        return [as_json(r) for r in result]
    return str(result) if isinstance(result, Path) else result


def report(result: Any, json_output: bool) -> int:
    """Print a command's result; return the exit status (a command may return one itself)."""
    if isinstance(result, bool) or result is None:
        return 0
    if isinstance(result, int):
        return result
    if json_output:
        print(json.dumps(as_json(result), indent=2, default=str))
    elif type(result) in (list, tuple):
        print("\n".join(str(r) for r in result))
    else:
        print(result)
    return 0


def run_command(name: str, argv: list[str]) -> int:
    fn = command_function(name)
    parser = build_parser(name, fn)
    config = parser.parse_args(normalize(argv, parser, POSITIONAL.get(name)))  # exits 2 on bad arguments
    kwargs = dict(parser.instantiate(config))
    kwargs.pop("config", None)
    json_output = kwargs.pop("json")
    try:
        result = fn(**kwargs)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        code = getattr(err, "exit_code", None)
        if code is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return code
    return report(result, json_output)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    from .logs import setup_logging

    setup_logging()
    if command in LIGHTNING_COMMANDS:
        from .training.fit import run_lightning

        run_lightning(argv)
        return 0
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return run_command(command, rest)


if __name__ == "__main__":
    sys.exit(main())
