"""The package as users get it: a non-editable install (no repository beside it) runs the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.helpers import REPO


def test_installed_package_runs_the_quick_demo_from_anywhere(tmp_path):
    """`pip install .` (here into a --target dir, dependencies from this environment), then
    `python -m internvl_lightning demo --quick` from an unrelated directory: the recipes and the data
    generator come with the package, not from the repository's conf/."""
    source = tmp_path / "source"  # a copy: building leaves build/ and egg-info behind
    source.mkdir()
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*pip, str(target), str(source)], check=True, cwd=tmp_path, timeout=300)
    assert not (target / "internvl_lightning" / "__init__.py").is_symlink()
    assert sorted(p.name for p in (target / "internvl_lightning" / "demo" / "recipes").iterdir()) == [
        "stage1.yaml",
        "stage1_5.yaml",
        "stage2.yaml",
    ]
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    where = subprocess.run(
        [sys.executable, "-c", "import internvl_lightning; print(internvl_lightning.__file__)"],
        env=env, cwd=elsewhere, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(target)), where.stdout  # the installed copy, not src/
    run = subprocess.run(
        [sys.executable, "-m", "internvl_lightning", "demo", "--quick", "--out", "demo-out"],
        env=env, cwd=elsewhere, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((elsewhere / "demo-out" / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"stage1", "stage2"}
    assert (elsewhere / "demo-out" / "run" / "export" / "hf" / "config.json").is_file()
