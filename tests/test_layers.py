"""The package's imports run one way: cli -> demo -> training -> (evaluation, export) -> (data, model)
-> tokenizer -> (constants, hub, logs), as docs/ARCHITECTURE.md draws it. Read from the source (every import,
function-level ones too), so a shortcut cannot slip in unseen."""

from __future__ import annotations

import ast
from pathlib import Path

import internvl_lightning

PACKAGE = Path(internvl_lightning.__file__).resolve().parent
# Units of the same layer must not import each other either (data and model are peers).
LAYERS = {
    "constants": 0,
    "hub": 0,
    "logs": 0,
    "tokenizer": 1,
    "data": 2,
    "model": 2,
    "evaluation": 3,
    "export": 3,
    "training": 4,
    "demo": 5,
    "cli": 6,
    "__main__": 7,
}


def unit_of(module: str) -> str:
    """``internvl_lightning.model.load`` -> ``model``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement of a file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [a.name for a in node.names], node.lineno))
    return found


def violations() -> tuple[list[str], list[str]]:
    backward, private = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        here = unit_of(source)
        for target, names, line in imports(path):
            if not target.startswith("internvl_lightning"):
                continue
            there = unit_of(target)
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if here != there and here != "__init__" and there != "__init__":
                if LAYERS[there] >= LAYERS[here]:
                    backward.append(where)
            if target != source and any(n.startswith("_") and not n.startswith("__") for n in names):
                private.append(f"{where} ({', '.join(names)})")
    return backward, private


def test_every_unit_has_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units <= set(LAYERS), f"units without a layer: {sorted(units - set(LAYERS))}"


def test_imports_run_one_way():
    backward, _ = violations()
    assert not backward, "imports against the layer order:\n" + "\n".join(backward)


def test_no_private_names_cross_modules():
    _, private = violations()
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_the_checker_sees_a_backward_import(tmp_path, monkeypatch):
    """The check itself can fail: a data/ module importing model/ is caught."""
    fake = tmp_path / "internvl_lightning"
    (fake / "data").mkdir(parents=True)
    (fake / "model").mkdir()
    for f in ("__init__.py", "data/__init__.py", "model/__init__.py", "model/build.py"):
        (fake / f).write_text("")
    (fake / "data" / "shard.py").write_text("def f():\n    from ..model.build import _x\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    backward, private = violations()
    assert backward == ["internvl_lightning/data/shard.py:2 imports internvl_lightning.model.build"]
    assert private and "_x" in private[0]
