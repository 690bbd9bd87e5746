"""The data processes' allocator setting: applied once, only where asked."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from internvl_lightning.data import memory
from internvl_lightning.data.sources import ShardInfo


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_thresholds_take_effect_in_a_fresh_process():
    # A fresh interpreter: the setting is process-wide, so it is checked away from the test runner.
    code = (
        "from internvl_lightning.data.memory import reuse_freed_memory as r\n"
        "assert r() is True and r() is True\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_stream_applies_it_only_when_asked(monkeypatch, tmp_path):
    from internvl_lightning.data import stream as stream_mod

    calls = []
    monkeypatch.setattr(stream_mod, "reuse_freed_memory", lambda: calls.append(1))
    src = stream_mod.DatasetSource("d", [ShardInfo(str(tmp_path / "unread.tar"), 1)])
    for flag, expected in ((False, 0), (True, 1)):
        calls.clear()
        s = stream_mod.PackedStream([src], lambda *a: None, lambda packs: {}, reuse_freed_memory=flag)
        monkeypatch.setattr(s, "worker", lambda *a, **k: type("W", (), {"run": lambda self: iter(())})())
        assert list(s) == [] and len(calls) == expected


def test_refused_or_missing_mallopt_is_not_an_error(monkeypatch):
    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.reuse_freed_memory() is False
