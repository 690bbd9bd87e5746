"""The library's console lines (prefix, once, rank 0) and the third-party messages a run drops."""

from __future__ import annotations

import logging
import warnings

from internvl_lightning.logs import setup_logging


def test_library_lines_are_prefixed_and_said_once(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    setup_logging()
    log = logging.getLogger("internvl_lightning.data.example")
    for _ in range(3):
        log.warning("shards were written with image_size=%d, this run uses %d", 448, 224)
    log.info("global batch %d packs", 512)
    err = capsys.readouterr().err.splitlines()
    assert err.count("WARNING: shards were written with image_size=448, this run uses 224") == 1
    assert "global batch 512 packs" in err
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    log.info("only rank 0 says this")
    log.warning("a shard is missing")
    err = capsys.readouterr().err.splitlines()
    assert err == ["[rank 3] WARNING: a shard is missing"]


def test_third_party_noise_is_dropped(capsys):
    setup_logging()
    logging.getLogger("DeepSpeed").warning("Setting accelerator to CPU. If you have GPU ...")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging ...")
    with warnings.catch_warnings(record=True) as caught:
        setup_logging()  # filters are installed again inside catch_warnings' fresh filter list
        warnings.warn(
            "Total length of `list` across ranks is zero. Please make sure", UserWarning, stacklevel=1
        )
        warnings.warn(
            "Precision bf16-mixed is not supported by the model summary. ", UserWarning, stacklevel=1
        )
        warnings.warn("a real warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real warning"]
    out = capsys.readouterr()
    assert "Setting accelerator" not in out.err + out.out and "Tip" not in out.err + out.out
    from transformers.utils import logging as hf_logging

    assert not hf_logging.is_progress_bar_enabled()


def test_run_events_are_printed_every_time_by_rank_zero_only(capsys, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    from internvl_lightning import logs

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    for step in (10, 10, 20):
        logs.info(f"stopped by SIGTERM (step {step})")
    logs.warning("no checksum file: resuming unverified")
    assert capsys.readouterr().err.splitlines() == [
        "stopped by SIGTERM (step 10)",
        "stopped by SIGTERM (step 10)",
        "stopped by SIGTERM (step 20)",
        "WARNING: no checksum file: resuming unverified",
    ]
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logs.info("rank 1 is silent")
    logs.warning("rank 1 is silent")
    assert capsys.readouterr().err == ""
