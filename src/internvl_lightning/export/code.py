"""The modeling code an original-layout export needs for ``AutoModel.from_pretrained(trust_remote_code=True)``.

InternVL's modeling files (``modeling_internvl_chat.py`` and the modules it imports) are not
ours to ship. Released InternVL checkpoints carry them, so an export copies them from a
directory the user has (``--code_from``, e.g. any downloaded InternVL checkpoint): the modules
the config's ``auto_map`` entries name (the model's, its ``llm_config``'s, the tokenizer's) and,
following their relative imports, every module those import in turn.
"""

from __future__ import annotations

import ast
import json
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def auto_map_modules(config: Mapping[str, Any]) -> list[str]:
    """Module names (``modeling_internvl_chat``) that ``auto_map`` entries of a config dict name,
    its nested ``llm_config`` / ``vision_config`` included."""
    names: list[str] = []
    for part in (config, config.get("llm_config") or {}, config.get("vision_config") or {}):
        for ref in (part.get("auto_map") or {}).values():
            for one in [ref] if isinstance(ref, str) else ref:  # tokenizers map to [slow, fast]
                if one and "--" not in one:  # "repo--module.Class" points elsewhere
                    names.append(one.rsplit(".", 1)[0])
    return list(dict.fromkeys(names))


def _relative_imports(path: Path) -> list[str]:
    """Modules a file imports relatively and flatly (``from .modeling_intern_vit import ...``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.append(node.module)
    return found


def model_code_files(code_dirs: list[Path], modules: Iterable[str]) -> list[Path]:
    """The files of ``modules`` and of everything they import relatively, each from the first of
    ``code_dirs`` that has it.

    Raises:
        FileNotFoundError: naming the missing file and who needs it.
    """
    todo = [(m, "the auto_map of config.json / tokenizer_config.json") for m in modules]
    files: dict[str, Path] = {}
    while todo:
        module, needed_by = todo.pop()
        if module in files:
            continue
        name = f"{module.replace('.', '/')}.py"
        path = next((d / name for d in code_dirs if (d / name).is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"{code_dirs[-1]} has no {name} (needed by {needed_by}); --code_from must be a "
                "directory with InternVL's modeling files, e.g. a downloaded InternVL checkpoint"
            )
        files[module] = path
        todo += [(m, path.name) for m in _relative_imports(path)]
    return sorted(files.values())


def _modules(out_dir: Path) -> list[str]:
    names = auto_map_modules(json.loads((out_dir / "config.json").read_text()))
    tok_config = out_dir / "tokenizer_config.json"
    if tok_config.is_file():
        names += auto_map_modules(json.loads(tok_config.read_text()))
    return list(dict.fromkeys(names))


def missing_model_code(out_dir: Path) -> list[str]:
    """File names the ``auto_map`` entries of ``out_dir``'s configs name that are not in ``out_dir``."""
    return [f"{m}.py" for m in _modules(out_dir) if not (out_dir / f"{m}.py").is_file()]


def copy_model_code(code_from: str | Path, out_dir: Path) -> list[Path]:
    """Copy into ``out_dir`` the modeling code its configs name, and what that imports, from
    ``code_from`` (files ``out_dir`` already has are kept)."""
    code_dir = Path(code_from)
    if not code_dir.is_dir():
        raise FileNotFoundError(f"--code_from directory not found: {code_dir}")
    copied = []
    for path in model_code_files([out_dir, code_dir], _modules(out_dir)):
        if path.parent != out_dir:
            copied.append(Path(shutil.copyfile(path, out_dir / path.name)))
    return copied
