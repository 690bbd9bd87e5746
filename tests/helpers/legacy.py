"""transformers 4.37.2 with tokenizers 0.15.2: the versions InternVL's own code pins, run in a subprocess.

They live beside the venv in ``.venv/legacy/`` (installed with ``pip --no-deps --target``, so the
venv's transformers 5 is untouched). ``make test`` installs them first (``python -m
tests.helpers.legacy``); a test that finds them missing installs them itself, and skips, saying
why, only when the package registry cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("transformers==4.37.2", "tokenizers==0.15.2", "huggingface_hub==0.23.5")
# What transformers 4.37 imports that transformers 5 no longer brings along.
DEPENDENCIES = ("requests",)
TARGET = REPO / ".venv" / "legacy" / "transformers-4.37.2"
_STAMP = TARGET / ".installed"


class LegacyUnavailable(RuntimeError):
    """The legacy packages are not installed and could not be installed."""


def install() -> Path:
    """Install the legacy packages into ``TARGET`` once; return it."""
    if _STAMP.exists():
        return TARGET
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"]
    for extra, packages in ((["--no-deps"], PACKAGES), ([], DEPENDENCIES)):
        done = subprocess.run(
            [*pip, str(TARGET), *extra, *packages], capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise LegacyUnavailable(f"pip could not install {' '.join(packages)}: {done.stderr[-2000:]}")
    _STAMP.write_text(" ".join(PACKAGES) + "\n")
    return TARGET


def run_legacy(script: str, *args: str | Path) -> dict:
    """Run ``script`` (Python source) under the legacy packages with ``sys.argv[1:] = args``; it
    prints one JSON object as its last line of output, which is returned."""
    env = dict(os.environ, PYTHONPATH=str(install()), TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    if done.returncode != 0:
        raise AssertionError(f"the legacy-transformers script failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(f"legacy transformers in {install()}")
