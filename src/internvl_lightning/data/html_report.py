"""``inspect --html OUT``: one self-contained HTML page to check samples by eye, plus PNG histograms.

The page has one card per sample (pictures with their tile grid, video frames as a strip, the
rendered conversation with trained spans highlighted, token and tile counts) and, per dataset,
histograms of tokens and tiles per sample from the shard index. Images are embedded as data URIs;
the page needs no script and names no outside address. All text is HTML-escaped. The histograms
are also written as PNG files beside ``OUT`` (``<stem>-<k>-<dataset>-tokens.png`` / ``-tiles.png``).
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..constants import IGNORE_INDEX, IMG_CONTEXT_TOKEN
from .histogram import Histogram, draw, histogram, png_bytes, sample_counts
from .packing import EncodedSample
from .sample_view import Layout, frame_strip, image_views
from .sources import DatasetSource
from .templates import label_runs

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #f6f6f6; }
.card, .dataset { background: #fff; border: 1px solid #ccc; border-radius: 6px; padding: 12px 16px; margin: 0 0 18px; }
.card h2, .dataset h2 { font-size: 16px; margin: 0 0 6px; }
.counts { color: #555; margin: 0 0 10px; }
img { max-width: 100%; }
figure.histogram img { width: 540px; }
figure { display: inline-block; margin: 0 16px 10px 0; vertical-align: top; }
figcaption { color: #555; font-size: 12px; }
pre.text { white-space: pre-wrap; word-break: break-word; background: #fafafa; border: 1px solid #eee; padding: 8px; }
.trained { background: #c8f0c8; border-bottom: 2px solid #3a3; }
.img { background: #e6dcff; color: #538; border-radius: 3px; padding: 0 3px; font-size: 12px; }
.legend span { margin-right: 12px; }
table.bins { border-collapse: collapse; font-size: 12px; }
table.bins td, table.bins th { border: 1px solid #ddd; padding: 1px 6px; text-align: right; }
"""


def data_uri(img: Image.Image, fmt: str = "PNG") -> str:
    """``img`` as a ``data:`` URI (PNG for drawings, JPEG for photos)."""
    raw = png_bytes(img) if fmt == "PNG" else _jpeg(img)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(raw).decode("ascii")


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, subsampling=0)  # no chroma blur: grid lines stay sharp
    return buf.getvalue()


def _figure(src: str, caption: str, attrs: str = "") -> str:
    cap = html.escape(caption)
    return f'<figure{attrs}><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def text_html(sample: EncodedSample, tokenizer) -> str:
    """The sample's tokens decoded, trained runs in ``<span class="trained">``, image runs compact."""
    out = []
    for run in label_runs(sample.input_ids, sample.labels, tokenizer):
        if run.image_tokens:
            text = f"{IMG_CONTEXT_TOKEN} ×{run.image_tokens}"
            out.append(f'<span class="img" data-tokens="{run.image_tokens}">{html.escape(text)}</span>')
        else:
            out.append(html.escape(run.text))
        if run.trained:
            out[-1] = f'<span class="trained">{out[-1]}</span>'
    return '<pre class="text">' + "".join(out) + "</pre>"


def media_html(sample: EncodedSample, layout: Layout) -> str:
    """Figures of the sample's images (tile grid drawn, thumbnail beside) or of its video frames."""
    if layout.kind == "video":
        strip = frame_strip(sample.pixel_values.numpy())
        return _figure(
            data_uri(strip, "JPEG"),
            f"{layout.frames} frames",
            f' class="video" data-frames="{layout.frames}"',
        )
    out = []
    for i, view in enumerate(image_views(sample, layout)):
        g = view.grid
        extra = " + thumbnail" if g.thumbnail else ""
        caption = f"image {i + 1}: {g.cols} x {g.rows} tiles{extra} = {g.tiles}"
        attrs = f' class="image" data-cols="{g.cols}" data-rows="{g.rows}" data-tiles="{g.tiles}"'
        out.append(_figure(data_uri(view.picture, "JPEG"), caption, attrs))
        if view.thumbnail is not None:
            out.append(
                _figure(
                    data_uri(view.thumbnail, "JPEG"), f"image {i + 1}: thumbnail tile", ' class="thumbnail"'
                )
            )
    return "".join(out)


def card_html(sample: EncodedSample, layout: Layout, tokenizer) -> str:
    """One sample: where it came from, its counts, its media and its text."""
    trained = int((sample.labels != IGNORE_INDEX).sum())
    title = f"{layout.where} · id {layout.record_id} · {layout.kind}"
    if "#" in sample.id:  # a repeat (repeat_time > 1): the stream tags its id with pass.copy
        title += f" · repeat {sample.id.partition('#')[2]}"
    counts = f"{sample.num_tokens} tokens ({trained} trained) · {sample.num_tiles} tiles"
    return (
        f'<section class="card" data-dataset="{html.escape(sample.dataset, quote=True)}" '
        f'data-tokens="{sample.num_tokens}" data-trained="{trained}" data-tiles="{sample.num_tiles}">'
        f'<h2>{html.escape(title)}</h2><p class="counts">{html.escape(counts)}</p>'
        f"{media_html(sample, layout)}{text_html(sample, tokenizer)}</section>"
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "dataset"


@dataclass(frozen=True)
class DatasetHistograms:
    """The two histograms of one dataset and the PNG files they were written to."""

    name: str
    tokens: Histogram
    tiles: Histogram
    files: tuple[Path, Path]


def indexed(source: DatasetSource) -> bool:
    """Whether an index lists the per-sample counts of every shard of ``source``."""
    return all(s.samples is not None for s in source.shards)


def write_histograms(sources: list[DatasetSource], out: Path) -> list[DatasetHistograms]:
    """Per dataset with an index, draw tokens and tiles per sample and write them beside ``out`` as PNG."""
    result = []
    for k, src in enumerate(sources):
        if not indexed(src):
            continue
        tokens, tiles = sample_counts(src)
        hists = (
            histogram(tokens, f"{src.name}: tokens per sample"),
            histogram(tiles, f"{src.name}: tiles per sample"),
        )
        files = tuple(
            out.with_name(f"{out.stem}-{k}-{_slug(src.name)}-{what}.png") for what in ("tokens", "tiles")
        )
        for hist, path in zip(hists, files, strict=True):
            path.write_bytes(png_bytes(draw(hist)))
        result.append(DatasetHistograms(src.name, *hists, files))  # type: ignore[arg-type]
    return result


def _bins_table(hist: Histogram) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(hist.bin_label(k))}</td><td>{c}</td></tr>" for k, c in enumerate(hist.counts)
    )
    return f'<table class="bins"><tr><th>value</th><th>samples</th></tr>{rows}</table>'


def dataset_html(ds: DatasetHistograms) -> str:
    """The histograms of one dataset, embedded, with their bin counts under a fold."""
    figures, tables = [], []
    for hist, path, what in zip((ds.tokens, ds.tiles), ds.files, ("tokens", "tiles"), strict=True):
        src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        attrs = f' class="histogram" data-what="{what}" data-file="{html.escape(path.name, quote=True)}"'
        figures.append(_figure(src, path.name, attrs))
        tables.append(
            f'<details data-what="{what}"><summary>{what}: bins</summary>{_bins_table(hist)}</details>'
        )
    parts = figures + tables
    title = f"{ds.name}: {ds.tokens.total} samples in the index (before repeat_time)"
    name = html.escape(ds.name, quote=True)
    return f'<section class="dataset" data-dataset="{name}"><h2>{html.escape(title)}</h2>{"".join(parts)}</section>'


def page_html(cards: list[str], datasets: list[DatasetHistograms], title: str, unindexed: list[str]) -> str:
    """The whole page: legend, cards, then the per-dataset histograms (``unindexed``: datasets without)."""
    legend = (
        '<p class="legend"><span class="trained">trained tokens (labels kept)</span>'
        f'<span class="img">{html.escape(IMG_CONTEXT_TOKEN)} ×N</span> an image run of N context tokens; '
        "pink lines: tile boundaries. Histogram counts come from the shard index "
        "(videos counted at max_num_frames).</p>"
    )
    body = "".join(cards) + "<h1>Datasets</h1>" + "".join(dataset_html(d) for d in datasets)
    if unindexed:
        names = html.escape(", ".join(unindexed))
        body += f"<p>No shard index, so no histograms, for: {names}.</p>"
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{legend}{body}</body></html>\n"
    )
