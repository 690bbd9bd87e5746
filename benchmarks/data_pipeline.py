"""Figure 1: data pipeline throughput of one worker process vs the bare image-processing floor.

Media, made from the real photos in tests/assets/images (center-cropped to the aspect, resized,
saved as JPEG quality 90): 1024x768 photos (12 tiles + thumbnail), 1920x1080 photos (8 + thumbnail)
and short 480p H.264 videos (a pan across a photo; 16 frames sampled per video, one tile each).
Each kind becomes an InternVL-format dataset with realistic conversation text and goes through the
real shard tool.

- full pipeline: ``InternVLDataModule(...).train_dataloader()`` with ``num_workers=0`` (the work of
  one DataLoader worker, in-process, one torch thread as in a worker): shard read, JSON, JPEG /
  video decode, dynamic tiling, normalisation, tokenization with the chat template, greedy packing
  at 16384 tokens / 48 tiles, collation and the per-batch resume snapshot;
- floor: the same media bytes in one plain loop, PIL (and PyAV for video) only: decode, resize to
  the tile grid, crop the tiles, resize the thumbnail (videos: decode, resize each sampled frame).

Both run alternately ``repeats`` times per kind, in one process set up as a DataLoader worker is
(one torch thread; the allocator tuned by ``data.memory.reuse_freed_memory``, which the stream
applies in every data process; measured without it the full path reached 64% of the floor,
first-touch page faults on fresh tile memory being most of the gap); we report medians. Target: full >= 70% of the
floor's tiles/s. A cProfile of one full pass says where the time goes.

Integrity checks (shard size on open, sidecar read, per-sample CRC32 and key checks; on by
default): their cost is the profile share of ``verify.py`` + the sidecar read (target < 2% of the
data path), and, for information, the wall time of the full path with ``verify_data=False``.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import random
import tempfile
from pathlib import Path

import torch
from PIL import Image

from internvl_lightning.data.datamodule import InternVLDataModule, PackingConfig
from internvl_lightning.data.encode import EncodeConfig
from internvl_lightning.data.memory import reuse_freed_memory
from internvl_lightning.data.shard import shard_dataset
from internvl_lightning.data.tiling import tile_grid
from internvl_lightning.data.video import frame_indices
from internvl_lightning.model.components import build_tokenizer
from internvl_lightning.tokenizer import add_vlm_tokens

from .common import REPO, TEST_IMAGES, median, print_result, row, save, timed

TARGET_SHARE = 0.70
TARGET_VERIFY_SHARE = 0.02
TILES_PER_GPU, GPUS_PER_HOST, CORES_PER_HOST = (
    16,
    8,
    16,
)  # ~16 tiles/s per GPU at the recipes' 1B-8B step times
FRAMES = 16
VIDEO_SIZE, VIDEO_FPS, VIDEO_SECONDS = (854, 480), 24, 2
IMAGE_SIZES = {"img1024x768": (1024, 768), "img1920x1080": (1920, 1080)}

_WORDS = (
    "the a image shows red blue green small large person car building street table window left right "
    "top bottom near behind front two three several people sky tree water light dark text sign "
    "document page number answer question describe detail color shape background object"
).split()


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _conversation(rng: random.Random, placeholder: str) -> list[dict]:
    """One or two turns: a ~15-word question and an ~80-word answer each (a typical VQA sample)."""
    turns = [
        {"from": "human", "value": f"{placeholder}\n{_text(rng, rng.randint(8, 25))}"},
        {"from": "gpt", "value": _text(rng, rng.randint(40, 120))},
    ]
    if rng.random() < 0.5:
        turns += [
            {"from": "human", "value": _text(rng, rng.randint(8, 25))},
            {"from": "gpt", "value": _text(rng, rng.randint(20, 80))},
        ]
    return turns


def _cropped(photo: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Center-crop ``photo`` to the aspect of ``size``, then resize to it."""
    w, h = photo.size
    aspect = size[0] / size[1]
    cw, ch = (w, round(w / aspect)) if w / h < aspect else (round(h * aspect), h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return photo.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.LANCZOS)


def photo_jpegs(size: tuple[int, int]) -> list[bytes]:
    """The test photos at ``size``, JPEG quality 90."""
    out = []
    for path in sorted(TEST_IMAGES.glob("*.jpg")):
        with Image.open(path) as im:
            buf = io.BytesIO()
            _cropped(im.convert("RGB"), size).save(buf, "JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def pan_video(photo: bytes) -> bytes:
    """A short H.264 clip panning across a photo (real image content, real motion)."""
    import av

    w, h = VIDEO_SIZE
    with Image.open(io.BytesIO(photo)) as im:
        big = _cropped(im.convert("RGB"), (w * 3 // 2, h * 3 // 2))
    frames = VIDEO_FPS * VIDEO_SECONDS
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            x = (big.width - w) * i // (frames - 1)
            y = (big.height - h) * i // (frames - 1)
            frame = av.VideoFrame.from_image(big.crop((x, y, x + w, y + h)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_kind(root: Path, kind: str, blobs: list[bytes], samples: int, seed: int) -> Path:
    """An InternVL-format dataset (meta.json + JSONL + media) of ``samples`` samples of one kind."""
    rng = random.Random(seed)
    media = root / kind
    media.mkdir(parents=True, exist_ok=True)
    ext = "mp4" if kind == "video" else "jpg"
    for i, data in enumerate(blobs):
        (media / f"{i}.{ext}").write_bytes(data)
    lines = []
    for n in range(samples):
        record = {"id": f"{kind}-{n}"}
        if kind == "video":
            record["video"] = f"{n % len(blobs)}.{ext}"
            record["conversations"] = _conversation(rng, "<video>")
        else:
            record["image"] = f"{n % len(blobs)}.{ext}"
            record["conversations"] = _conversation(rng, "<image>")
        lines.append(json.dumps(record))
    (root / f"{kind}.jsonl").write_text("\n".join(lines) + "\n")
    meta = {kind: {"root": str(media), "annotation": str(root / f"{kind}.jsonl"), "length": samples}}
    (root / f"{kind}.meta.json").write_text(json.dumps(meta))
    return root / f"{kind}.meta.json"


def full_pipeline(shards: Path, tokenizer, seed: int = 0, verify: bool = True) -> tuple[int, int]:
    """One epoch through the DataModule's training loader; (tiles, samples) delivered."""
    dm = InternVLDataModule(
        shards=str(shards), tokenizer=tokenizer, num_workers=0, epochs=1, seed=seed,
        min_num_frames=FRAMES, max_num_frames=FRAMES, packing=PackingConfig(), verify_data=verify,
    )  # fmt: skip
    tiles = samples = 0
    for batch in dm.train_dataloader():
        tiles += batch["stats"]["tiles"]
        samples += batch["stats"]["samples"]
    return tiles, samples


def floor_images(blobs: list[bytes], image_size: int = 448, max_num: int = 12) -> int:
    """Decode, resize to the tile grid, crop the tiles, resize the thumbnail: PIL only. Returns tiles."""
    tiles = 0
    s = image_size
    for data in blobs:
        with Image.open(io.BytesIO(data)) as im:
            img = im.convert("RGB")
        cols, rows, n = tile_grid(*img.size, 1, max_num, s, True)
        canvas = img.resize((s * cols, s * rows))
        crops = [
            canvas.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)
        ]
        if n > len(crops):
            crops.append(img.resize((s, s)))
        tiles += len(crops)
    return tiles


def floor_videos(blobs: list[bytes], image_size: int = 448) -> int:
    """Decode up to the last sampled frame, resize each sampled frame to one tile: PyAV + PIL only."""
    import av

    tiles = 0
    for data in blobs:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            wanted = set(frame_indices(FRAMES, stream.frames, "middle"))
            for k, frame in enumerate(container.decode(video=0)):
                if k in wanted:
                    frame.to_image().resize((image_size, image_size))
                    tiles += 1
                if k >= max(wanted):
                    break
    return tiles


def profile_buckets(stats: pstats.Stats) -> tuple[list[dict], list[dict]]:
    """Cumulative seconds of the pipeline's stages, and the top functions by own time (file:function)."""
    entries = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]

    def cumulative(file_part: str, func: str) -> float:
        return sum(v[3] for k, v in entries.items() if k[2] == func and file_part in k[0])

    def builtin_from(name: str, caller_file: str, caller_func: str) -> float:
        secs = 0.0
        for k, v in entries.items():
            if k[2] == name:
                for caller, c in v[4].items():
                    if caller[2] == caller_func and caller_file in caller[0]:
                        secs += c[3]
        return secs

    stages = [
        ("shard read (tar members)", cumulative("data/sources.py", "__next__")),
        ("JSON + record validation", cumulative("data/schema.py", "validate_sample")),
        ("JPEG decode (load_image)", cumulative("data/image.py", "load_image")),
        ("video decode (read_video)", cumulative("data/video.py", "read_video")),
        ("resize (PIL Image.resize)", cumulative("PIL/Image.py", "resize")),
        ("normalise (image.py:normalize_into)", cumulative("data/image.py", "normalize_into")),
        (
            "torch.cat in encode.py:encode_sample",
            builtin_from("<built-in method torch.cat>", "data/encode.py", "encode_sample"),
        ),
        ("tokenize (templates.py:tokenize)", cumulative("data/templates.py", "tokenize")),
        ("packing (packing.py:Packer._consume)", cumulative("data/packing.py", "_consume")),
        ("collate (collate.py:PackingCollator.__call__)", cumulative("data/collate.py", "__call__")),
        ("resume snapshot (stream.py:_Worker.state)", cumulative("data/stream.py", "state")),
        ("integrity checks (verify.py + sidecar read)", verify_seconds(entries)),
    ]
    bucket_rows = [{"stage": name, "seconds": secs, "share": secs / total} for name, secs in stages]
    top = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    top_rows = []
    for (file, _line, func), v in top:
        top_rows.append({"function": f"{_short(file)}:{func}", "own_seconds": v[2], "share": v[2] / total})
    return bucket_rows, top_rows


def verify_seconds(entries: dict) -> float:
    """Cumulative seconds of the reader's integrity checks: sample CRC/key checks, shard size and
    start checks, and reading each shard's sidecar (``ShardInfo.expect``)."""
    checks = {("data/verify.py", name) for name in ("check_sample", "check_size", "check_start", "check_end")}
    checks.add(("data/sources.py", "expect"))
    return sum(v[3] for k, v in entries.items() if any(f in k[0] and k[2] == fn for f, fn in checks))


def _short(path: str) -> str:
    """A profile entry's file without the machine's directories (package-relative, or stdlib/...)."""
    for marker in ("site-packages/", "/src/", str(REPO) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python" in path:
        return "stdlib/" + Path(path).name
    return path


def run(quick: bool = False) -> dict:
    repeats = 2 if quick else 3
    counts = {
        "img1024x768": 8 if quick else 16,
        "img1920x1080": 8 if quick else 16,
        "video": 3 if quick else 6,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = build_tokenizer(root / "tokenizer", "qwen2", corpus=[" ".join(_WORDS)])
        add_vlm_tokens(tokenizer)
        blobs = {kind: photo_jpegs(size) for kind, size in IMAGE_SIZES.items()}
        blobs["video"] = [pan_video(b) for b in blobs["img1024x768"][:3]]
        shards, media = {}, {}
        for i, (kind, n) in enumerate(counts.items()):
            meta = write_kind(root / "raw", kind, blobs[kind], n, seed=i)
            shard_dataset(
                meta, tokenizer, root / "shards" / kind, EncodeConfig(max_num_frames=FRAMES), progress=False
            )
            media[kind] = [blobs[kind][k % len(blobs[kind])] for k in range(n)]
            shards[kind] = root / "shards" / kind

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a DataLoader worker process gets
        # ...and the allocator setting the stream gives each data process; set before either path
        # runs so the floor gets it too (it only makes the floor faster: the share is conservative).
        tuned = reuse_freed_memory()
        try:
            per_kind = {}
            for kind in counts:
                floor_fn = floor_videos if kind == "video" else floor_images
                full_pipeline(shards[kind], tokenizer)  # warm-up: imports, page cache
                full_t, floor_t, unverified_t = [], [], []
                for _ in range(repeats):
                    t, (tiles, samples) = timed(lambda k=kind: full_pipeline(shards[k], tokenizer))
                    full_t.append(t)
                    t, _ = timed(lambda k=kind: full_pipeline(shards[k], tokenizer, verify=False))
                    unverified_t.append(t)
                    t, floor_tiles = timed(lambda k=kind, f=floor_fn: f(media[k]))
                    floor_t.append(t)
                per_kind[kind] = {
                    "samples": samples,
                    "tiles": tiles,
                    "floor_tiles": floor_tiles,
                    "full_seconds": full_t,
                    "floor_seconds": floor_t,
                    "unverified_seconds": unverified_t,
                    "full_tiles_per_s": tiles / median(full_t),
                    "full_samples_per_s": samples / median(full_t),
                    "floor_tiles_per_s": floor_tiles / median(floor_t),
                }
                per_kind[kind]["share"] = (
                    per_kind[kind]["full_tiles_per_s"] / per_kind[kind]["floor_tiles_per_s"]
                )
            prof = cProfile.Profile()
            prof.enable()
            for kind in counts:
                full_pipeline(shards[kind], tokenizer)
            prof.disable()
        finally:
            torch.set_num_threads(threads)

    stages, top = profile_buckets(pstats.Stats(prof))
    tiles = sum(k["tiles"] for k in per_kind.values())
    samples = sum(k["samples"] for k in per_kind.values())
    full_s = sum(median(k["full_seconds"]) for k in per_kind.values())
    floor_s = sum(median(k["floor_seconds"]) for k in per_kind.values())
    floor_tiles = sum(k["floor_tiles"] for k in per_kind.values())
    full_rate, floor_rate = tiles / full_s, floor_tiles / floor_s
    share = full_rate / floor_rate
    need_per_core = TILES_PER_GPU * GPUS_PER_HOST / CORES_PER_HOST
    rows = [
        row(
            "full / floor tiles/s (all media)",
            f">= {TARGET_SHARE:.0%}",
            f"{share:.0%} ({full_rate:.1f} vs {floor_rate:.1f} tiles/s)",
            share >= TARGET_SHARE,
        )
    ]
    for kind, k in per_kind.items():
        rows.append(
            row(
                f"  {kind}: full / floor",
                "info",
                f"{k['share']:.0%} ({k['full_tiles_per_s']:.1f} vs {k['floor_tiles_per_s']:.1f} tiles/s, "
                f"{k['full_samples_per_s']:.1f} samples/s)",
                None,
            )
        )
    rows.append(
        row(
            "tiles/s per core (1 worker)",
            f">= {need_per_core:g} ({TILES_PER_GPU}/GPU x {GPUS_PER_HOST} / {CORES_PER_HOST} cores)",
            f"{full_rate:.1f} ({full_rate / need_per_core:.1f}x; {CORES_PER_HOST} cores -> "
            f"{full_rate * CORES_PER_HOST:.0f} tiles/s = {full_rate * CORES_PER_HOST / GPUS_PER_HOST:.0f}/GPU)",
            full_rate >= need_per_core,
        )
    )
    rows.append(row("samples/s per core (1 worker)", "info", f"{samples / full_s:.1f}", None))
    verify_share = next(s["share"] for s in stages if s["stage"].startswith("integrity checks"))
    rows.append(
        row(
            "integrity checks (size, CRC32, keys): share of the data path",
            f"< {TARGET_VERIFY_SHARE:.0%}",
            f"{verify_share:.2%} (profile)",
            verify_share < TARGET_VERIFY_SHARE,
        )
    )
    off_s = sum(median(k["unverified_seconds"]) for k in per_kind.values())
    spread = max((max(t) - min(t)) / median(t) for k in per_kind.values() for t in (k["full_seconds"],))
    rows.append(
        row(
            "  wall time, checks on vs off",
            "info",
            f"{full_s:.2f} s vs {off_s:.2f} s ({full_s / off_s - 1:+.1%}; run-to-run spread of one "
            f"setting up to {spread:.0%})",
            None,
        )
    )
    return {
        "figure": "data_pipeline",
        "title": "streaming data pipeline (1 process, 1 thread) vs PIL decode+resize+crop floor",
        "rows": rows,
        "details": {
            "media": {
                "images": {k: list(v) for k, v in IMAGE_SIZES.items()},
                "jpeg_quality": 90,
                "video": {
                    "size": list(VIDEO_SIZE),
                    "fps": VIDEO_FPS,
                    "seconds": VIDEO_SECONDS,
                    "codec": "libx264",
                },
                "frames_per_video": FRAMES,
                "samples": counts,
            },
            "tiling": {"image_size": 448, "max_dynamic_patch": 12, "thumbnail": True},
            "packing": {"max_packed_tokens": 16384, "num_images_expected": 48, "algorithm": "greedy"},
            "repeats": repeats,
            "allocator_tuned": tuned,
            "per_kind": per_kind,
            "profile_stages": stages,
            "profile_top_functions": top,
            "profile_note": "cProfile of one full pass over all kinds; cumulative seconds overlap "
            "(resize is also inside the tiling and video stages)",
            "host_requirement": {
                "tiles_per_s_per_gpu": TILES_PER_GPU,
                "gpus": GPUS_PER_HOST,
                "cores": CORES_PER_HOST,
                "per_core_needed": need_per_core,
            },
        },
    }


def format_profile(result: dict) -> str:
    d = result["details"]
    lines = ["profile (one full pass): stage cumulative seconds, share of total"]
    for s in d["profile_stages"]:
        lines.append(f"  {s['stage']:<52} {s['seconds']:7.2f} s  {s['share']:6.1%}")
    lines.append("top functions by own time:")
    for t in d["profile_top_functions"]:
        lines.append(f"  {t['function']:<70} {t['own_seconds']:7.2f} s  {t['share']:6.1%}")
    return "\n".join(lines)


if __name__ == "__main__":
    result = run()
    save(result)
    print_result(result)
    print(format_profile(result))
