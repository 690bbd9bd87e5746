"""``inspect --html``: the page a person checks samples on, parsed (and rendered when a browser is installed)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from internvl_lightning.cli import main
from internvl_lightning.constants import IGNORE_INDEX, IMG_CONTEXT_TOKEN
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.histogram import BAR_COLOR, BOTTOM, HEIGHT, LEFT, PLOT_HEIGHT, RIGHT, WIDTH
from internvl_lightning.data.image import load_image
from internvl_lightning.data.preview import datamodule_for, preview
from internvl_lightning.data.sample_view import FRAME_SIDE, FRAMES_PER_ROW, GAP, GRID_COLOR
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.data.tiling import tile_grid
from tests.helpers.datagen import write_dataset

SIZE, PER_TILE, MAX_TILES, FRAMES = 64, 16, 6, 4
HOSTILE = {
    "id": "<b>x7</b>",
    "conversations": [
        {"from": "human", "value": "<script>alert('x')</script> & <i>tags</i>"},
        {"from": "gpt", "value": "</pre><h1>not a heading</h1> &amp;"},
    ],
}
VOID = {"img", "meta", "br", "hr", "link", "input"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find(self, tag: str, cls: str | None = None) -> list[Node]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag and (cls is None or cls in (c.attrs.get("class") or "").split()):
                    out.append(c)
                out += c.find(tag, cls)
        return out


class Tree(HTMLParser):
    """A minimal DOM from the standard library's parser (entities decoded, as a browser does)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def decode_image(src: str) -> Image.Image:
    head, _, payload = src.partition(",")
    assert head in ("data:image/png;base64", "data:image/jpeg;base64")
    return Image.open(io.BytesIO(base64.b64decode(payload, validate=True))).convert("RGB")


def near(pixels: np.ndarray, color: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(color)) <= tol).all(-1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, vlm_tokenizer):  # noqa: F811
    root = tmp_path_factory.mktemp("inspect")
    data = write_dataset(root / "raw")
    with (root / "raw" / "text.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(HOSTILE) + "\n")
    meta = json.loads(data.meta.read_text())
    for ds in meta.values():
        ds["data_augment"] = False  # tiles exactly as tiling cuts them, to compare with the originals
    data.meta.write_text(json.dumps(meta))
    cfg = EncodeConfig(
        image_size=SIZE, tokens_per_tile=PER_TILE, max_dynamic_patch=MAX_TILES, min_num_frames=FRAMES,
        max_num_frames=FRAMES,
    )  # fmt: skip
    shard_dataset(data.meta, vlm_tokenizer, root / "shards", cfg, progress=False)
    return root / "shards", data


def _page(shards_dir: Path, llm_dir: Path, out: Path, n: int) -> tuple[str, Tree]:
    argv = ["inspect", "--shards", str(shards_dir), "--tokenizer", str(llm_dir), "--num_samples", str(n)]
    assert main([*argv, "--html", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    return page, Tree(page)


def _trained_texts(ids: list[int], labels: list[int], tok) -> list[str]:
    """Decoded runs of consecutive trained tokens, in order."""
    runs = itertools.groupby(zip(ids, labels, strict=True), key=lambda p: p[1] != IGNORE_INDEX)
    return [tok.decode([i for i, _ in run], skip_special_tokens=False) for trained, run in runs if trained]


def _originals(raw: Path, where: str) -> tuple[list[Image.Image], int]:
    """The original images of the JSONL line ``dataset:LINE`` (not the shards) and their tile budget."""
    dataset, _, line = where.partition(":")
    record = json.loads((raw / f"{dataset}.jsonl").read_text().splitlines()[int(line) - 1])
    paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
    budget = max(1, MAX_TILES // len(paths)) if isinstance(record["image"], list) else MAX_TILES
    return [load_image((raw / dataset / p).read_bytes()) for p in paths], budget


def _off_grid(shape: tuple[int, ...], side: int) -> np.ndarray:
    """Pixels at least 3 away from a tile boundary."""
    rows, cols = (np.arange(n) % side for n in shape[:2])
    return ((rows >= 3) & (rows <= side - 4))[:, None] & ((cols >= 3) & (cols <= side - 4))[None, :]


def test_page_shows_each_sample_as_training_sees_it(shards, llm_dir, vlm_tokenizer, tmp_path, capsys):
    shards_dir, data = shards
    index = json.loads((shards_dir / "index.json").read_text())
    epoch = sum(
        s["num_samples"] * int(d["repeat_time"]) for d in index["datasets"].values() for s in d["shards"]
    )
    out = tmp_path / "page.html"
    page, tree = _page(shards_dir, llm_dir, out, epoch)
    assert f"wrote {out}: {epoch} sample card(s)" in capsys.readouterr().out
    # Self-contained and inert: no script, no outside address, every image inline.
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    assert not tree.root.find("script") and not tree.root.find("link")
    assert all(img.attrs["src"].startswith("data:image/") for img in tree.root.find("img"))

    # The same samples, straight from the stream the page was made from (same seed, same order).
    stream = datamodule_for(shards_dir, vlm_tokenizer).build_stream()
    samples = list(itertools.islice(stream.samples(), epoch))
    cards = tree.root.find("section", "card")
    assert len(cards) == epoch
    ctx = vlm_tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    seen_kinds, grids_checked = Counter(), 0
    for card, s in zip(cards, samples, strict=True):
        ids, labels = s.input_ids.tolist(), s.labels.tolist()
        trained = sum(lab != IGNORE_INDEX for lab in labels)
        assert (card.attrs["data-dataset"], card.attrs["data-tokens"]) == (s.dataset, str(s.num_tokens))
        assert (card.attrs["data-trained"], card.attrs["data-tiles"]) == (str(trained), str(s.num_tiles))
        (pre,) = card.find("pre", "text")
        assert [t.text() for t in pre.find("span", "trained")] == _trained_texts(ids, labels, vlm_tokenizer)
        runs = [len(list(g)) for is_ctx, g in itertools.groupby(ids, key=lambda i: i == ctx) if is_ctx]
        shown = pre.find("span", "img")
        assert [int(sp.attrs["data-tokens"]) for sp in shown] == runs
        assert all(sp.text() == f"{IMG_CONTEXT_TOKEN} ×{n}" for sp, n in zip(shown, runs, strict=True))
        assert IMG_CONTEXT_TOKEN * 2 not in pre.text()  # runs are never spelled out
        where = card.find("h2")[0].text().split(" · ")[0]
        seen_kinds[s.dataset] += 1
        if s.dataset == "video":
            (fig,) = card.find("figure", "video")
            strip = decode_image(fig.find("img")[0].attrs["src"])
            cols, rows = min(s.num_tiles, FRAMES_PER_ROW), -(-s.num_tiles // FRAMES_PER_ROW)
            assert fig.attrs["data-frames"] == str(s.num_tiles) == str(FRAMES)
            assert strip.size == (cols * (FRAME_SIDE + GAP) - GAP, rows * (FRAME_SIDE + GAP) - GAP)
        elif s.dataset in ("single", "multi"):
            figs = card.find("figure", "image")
            originals, budget = _originals(data.root, where)
            expected = [tile_grid(*im.size, 1, budget, SIZE, True) for im in originals]
            assert [
                tuple(int(f.attrs[k]) for k in ("data-cols", "data-rows", "data-tiles")) for f in figs
            ] == expected
            assert len(card.find("figure", "thumbnail")) == sum(c * r != n for c, r, n in expected)
            for fig, (cols, rows, _), original in zip(figs, expected, originals, strict=True):
                pic = np.asarray(decode_image(fig.find("img")[0].attrs["src"]))
                side = pic.shape[1] // cols
                assert pic.shape[:2] == (rows * side, cols * side)
                # the tiles sit where they were cut from: the picture is the original as tiling resized it
                tiled = original.resize((cols * SIZE, rows * SIZE))
                whole = np.asarray(tiled.resize((cols * side, rows * side), Image.Resampling.BILINEAR))
                assert (
                    np.abs(pic.astype(int) - whole)[_off_grid(pic.shape, side)].mean() < 8
                )  # a misplaced tile: > 25
                for c in range(1, cols):  # a boundary column is the grid colour top to bottom ...
                    assert near(pic[:, c * side], GRID_COLOR).mean() > 0.95
                    grids_checked += 1
                for c in range(cols):  # ... the middle of a tile is not
                    assert near(pic[:, c * side + side // 2], GRID_COLOR).mean() < 0.2
                for r in range(1, rows):
                    assert near(pic[r * side], GRID_COLOR).mean() > 0.95
        else:
            assert not card.find("img")
    assert set(seen_kinds) == {"single", "multi", "video", "text"} and grids_checked >= 3

    # A sample's text never becomes markup: the hostile record shows as text, twice (repeat_time 2).
    hostile = [c for c in cards if "x7" in c.find("h2")[0].text()]
    assert len(hostile) == 2 and len(tree.root.find("h1")) == 2  # the page's own two headings
    for card in hostile:
        assert "<script>alert('x')</script> & <i>tags</i>" in card.find("pre")[0].text()
        assert [t.text() for t in card.find("span", "trained")] == [
            "</pre><h1>not a heading</h1> &amp;<|im_end|>"
        ]


def _bars(png: np.ndarray, n_bins: int) -> list[int]:
    """Height in pixels of each bar, read at the middle of its bin."""
    step = (WIDTH - LEFT - RIGHT) / n_bins
    return [int(near(png[:, LEFT + round((k + 0.5) * step)], BAR_COLOR, 0).sum()) for k in range(n_bins)]


def _rows(details: Node) -> list[tuple[str, int]]:
    return [(tr.find("td")[0].text(), int(tr.find("td")[1].text())) for tr in details.find("tr")[1:]]


def _in_bin(label: str, value: int) -> bool:
    lo, _, hi = label.partition("-")
    return int(lo) <= value <= int(hi or lo)


def test_histograms_match_the_index(shards, llm_dir, tmp_path):
    shards_dir, _ = shards
    out = tmp_path / "hist.html"
    _, tree = _page(shards_dir, llm_dir, out, 1)
    index = json.loads((shards_dir / "index.json").read_text())
    sections = tree.root.find("section", "dataset")
    assert [s.attrs["data-dataset"] for s in sections] == list(index["datasets"])
    for section in sections:
        name = section.attrs["data-dataset"]
        lists = [
            json.loads((shards_dir / sh["samples"]).read_text()) for sh in index["datasets"][name]["shards"]
        ]
        for what in ("tokens", "tiles"):
            values = [v for ls in lists for v in ls[f"num_{what}"]]
            (fig,) = [f for f in section.find("figure", "histogram") if f.attrs["data-what"] == what]
            file = out.parent / fig.attrs["data-file"]
            embedded = decode_image(fig.find("img")[0].attrs["src"])
            png = np.asarray(Image.open(file).convert("RGB"))
            assert file.name.startswith("hist-") and np.array_equal(np.asarray(embedded), png)
            assert png.shape == (HEIGHT, WIDTH, 3)
            (details,) = [d for d in section.find("details") if d.attrs["data-what"] == what]
            rows = _rows(details)
            # every sample of the index falls in exactly the bin the table counts it in
            assert [sum(_in_bin(label, v) for v in values) for label, _ in rows] == [c for _, c in rows]
            num_samples = sum(sh["num_samples"] for sh in index["datasets"][name]["shards"])
            assert sum(c for _, c in rows) == len(values) == num_samples
            if what == "tiles":  # few distinct values: one bar per integer from the fewest to the most
                counts = Counter(values)
                assert rows == [(str(v), counts[v]) for v in range(min(values), max(values) + 1)]
            top = max(c for _, c in rows)
            assert _bars(png, len(rows)) == [round(c / top * PLOT_HEIGHT) for _, c in rows]
            assert near(png[HEIGHT - BOTTOM], BAR_COLOR, 0).sum() == 0  # bars stand on the axis line


def test_page_name_must_be_html(shards, llm_dir, tmp_path):
    with pytest.raises(ValueError, match=r"page\.txt: give a page name ending in \.html"):
        preview(shards[0], str(llm_dir), html=str(tmp_path / "page.txt"))


BROWSER = shutil.which("chromium-headless-shell") or shutil.which("chromium")


@pytest.mark.skipif(BROWSER is None, reason="no headless chromium installed")
def test_page_renders_in_a_browser(shards, llm_dir, tmp_path):
    out = tmp_path / "shown.html"
    _page(shards[0], llm_dir, out, 6)
    shot = tmp_path / "shot.png"
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1000,6000",
    ]
    dom = subprocess.run(
        [*cmd, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=60
    ).stdout
    assert len(Tree(dom).root.find("section", "card")) == 6
    subprocess.run([*cmd, f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=60, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert near(pixels, BAR_COLOR, 4).sum() > 1000  # the histograms are drawn on screen
