"""Text previews of what training sees: decoded samples with their trained spans, and one packed batch.

``python -m internvl_lightning inspect --shards DIR --tokenizer LLM_DIR`` prints :func:`preview`;
with ``--html OUT`` it writes the page of :mod:`.html_report` instead.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from ..constants import IGNORE_INDEX
from ..tokenizer import TokenizerSource
from .datamodule import InternVLDataModule, PackingConfig
from .html_report import card_html, indexed, page_html, write_histograms
from .sample_view import LayoutRecorder
from .sources import load_index
from .stream import STATE_KEY
from .templates import render_with_labels

_ENCODE_ARGS = (
    "template",
    "image_size",
    "tokens_per_tile",
    "min_dynamic_patch",
    "max_dynamic_patch",
    "use_thumbnail",
    "normalization",
    "min_num_frames",
    "max_num_frames",
    "video_sampling",
)


def datamodule_for(shards: str | Path, tokenizer: Any, **overrides: Any) -> InternVLDataModule:
    """A single-process DataModule over ``shards`` with the encode settings the shards were written with."""
    header, _ = load_index(str(shards))
    encode = dict(
        header.get("encode", {}),
        **{k: header[k] for k in ("template", "image_size", "tokens_per_tile") if k in header},
    )
    kwargs = {k: v for k, v in encode.items() if k in _ENCODE_ARGS}
    kwargs.update(num_workers=0, **overrides)
    return InternVLDataModule(shards=str(shards), tokenizer=tokenizer, **kwargs)


def _sample_text(s: Any, tokenizer: Any) -> str:
    trained = int((s.labels != IGNORE_INDEX).sum())
    head = f"[{s.dataset}:{s.id}] {s.num_tokens} tokens ({trained} trained), {s.num_tiles} tiles"
    return head + "\n" + render_with_labels(s.input_ids, s.labels, tokenizer)


def _runs(values: list[int], limit: int = 12) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def preview(
    shards: str | Path | InternVLDataModule,
    tokenizer: TokenizerSource | None = None,
    num_samples: int = 1,
    packing: PackingConfig = PackingConfig(),
    batch_size: int = 1,
    seed: int = 0,
    html: str | None = None,
) -> str:
    """Show decoded samples and one packed batch of a shard dir as text, or write them as a web page.

    Samples show their trained spans in ``[[...]]`` and image runs as ``<IMG_CONTEXT>×N``; the batch
    shows its samples, position restarts, cu_seqlens and fills. With ``html``, a page is written
    instead: one card per sample (pictures with their tile grid, video frames, the conversation
    with trained spans highlighted, counts) and per-dataset PNG histograms of tokens and tiles per
    sample from the shard index, written beside the page and shown in it.

    Args:
        shards: shard directory with index.json (the shard tool's output), or a DataModule (then
            the other settings are its own).
        tokenizer: the LLM directory holding its tokenizer (or a tokenizer object).
        num_samples: samples to show, in stream order.
        packing: packer budgets of the batch.
        batch_size: packs per batch.
        seed: stream seed (shuffling).
        html: the page to write (``.html``); the histograms go beside it.
    """
    if isinstance(shards, InternVLDataModule):
        dm = shards
    else:
        dm = datamodule_for(shards, tokenizer, packing=packing, batch_size=batch_size, seed=seed)
    tok = dm.tokenizer_object
    stream = dm.build_stream()
    if html is not None:
        return write_page(dm, stream, Path(html), num_samples)
    n = num_samples
    out = [f"== {n} sample(s), in stream order (trained spans in [[...]])"]
    for i, s in enumerate(itertools.islice(stream.samples(), n)):
        out += [f"-- sample {i + 1}", _sample_text(s, tok)]
    packs = list(itertools.islice(stream.packs(), dm.batch_size))
    batch = stream.collate(packs)
    batch.pop(STATE_KEY, None)
    ids = batch["input_ids"]
    out.append(f"== one batch: {ids.shape[0]} pack(s) x {ids.shape[1]} tokens")
    for k, pack in enumerate(packs):
        names = ", ".join(f"{s.dataset}:{s.id} ({s.num_tokens} tok, {s.num_tiles} tiles)" for s in pack)
        pos = batch["position_ids"][k].tolist()
        starts = [j for j, p in enumerate(pos) if p == 0]
        out += [f"pack {k}: {len(pack)} samples: {names}", f"  position_ids restart at {_runs(starts)}"]
    flags = batch["image_flags"]
    out += [
        f"cu_seqlens: {_runs(batch['cu_seqlens'].tolist(), 24)}  max_seqlen: {batch['max_seqlen']}",
        f"pixel_values: {tuple(batch['pixel_values'].shape)}  image_flags: {int(flags.sum())} real / {flags.numel()}",
        "stats: "
        + ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in batch["stats"].items()
        ),
    ]
    return "\n".join(out)


def write_page(dm: InternVLDataModule, stream: Any, out: Path, num_samples: int) -> str:
    """Write the :mod:`.html_report` page of the first ``num_samples`` samples of ``stream``."""
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--html {out}: give a page name ending in .html")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--html {out}: folder {out.parent} does not exist")
    recorder = LayoutRecorder(stream.encode)
    stream.encode = recorder
    tok = dm.tokenizer_object
    cards = [card_html(s, recorder.layout(s), tok) for s in itertools.islice(stream.samples(), num_samples)]
    datasets = write_histograms(stream.sources, out)
    unindexed = [s.name for s in stream.sources if not indexed(s)]
    title = f"{len(cards)} sample(s) of {dm.shards or ', '.join(s.name for s in stream.sources)}"
    out.write_text(page_html(cards, datasets, title, unindexed), encoding="utf-8")
    files = ", ".join(str(p) for d in datasets for p in d.files)
    return f"wrote {out}: {len(cards)} sample card(s), {len(datasets)} dataset(s); histograms: {files}"
