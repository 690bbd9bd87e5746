"""The benchmark scripts import against the library as it is (`make bench` is not part of `make test`)."""

from __future__ import annotations

import importlib

import pytest

from tests.helpers import REPO

SCRIPTS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_script_imports(name):
    importlib.import_module(f"benchmarks.{name}")
