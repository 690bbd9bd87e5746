"""Figure 2: packing efficiency on the realistic length mix.

Stream: ``realistic_length_mix(seed, n)`` (data/length_mix.py: captions, VQA, OCR documents,
multi-image, video and pure text at 256 tokens per tile; about 6.1 tiles and 2,330 tokens per
sample on average). Each algorithm of ``Packer`` packs the same stream at the InternVL2.5 budgets
(16,384 tokens / 48 tiles, buffer 20). We report

- token fill = real tokens / (packs x token budget) and tile fill = tiles / (packs x tile budget),
  over the packs built while the stream flows ("steady": an endless training stream never flushes)
  and over all packs including the final flush of the buffer ("all");
- the padding a non-packed loader carries: batches of ``batch`` samples in stream order, padded to
  their longest sample (padding fraction = padding tokens / batch tokens);
- the most tiles buffered inside the packer at once: encoded samples wait there with their pixel
  tensors, so this is the packer's memory per data worker (uint8 448x448 RGB tiles).

Targets: greedy steady token fill >= 97%, and greedy never below the reference on any seed.
"""

from __future__ import annotations

import time

import numpy as np

from internvl_lightning.data.length_mix import realistic_length_mix
from internvl_lightning.data.packing import Packer, SampleSize

from .common import median, print_result, row, save

TOKENS, TILES, BUFFER = 16384, 48, 20
ALGORITHMS = ("reference", "greedy")
TARGET_FILL = 0.97
TILE_BYTES = 3 * 448 * 448  # one uint8 448x448 RGB tile, as the encoder stores it (float32 x4 in the batch)


def pack_stream(sizes: list[tuple[int, int]], algorithm: str) -> dict:
    """Pack ``sizes`` (tokens, tiles) in order; fills over steady packs and over all packs."""
    packer = Packer(TOKENS, TILES, BUFFER, algorithm=algorithm)
    flowing = {"open": True, "tiles_in": 0}

    def stream():
        for i, (n, t) in enumerate(sizes):
            flowing["tiles_in"] += t
            yield SampleSize(str(i), n, t)
        flowing["open"] = False  # reached only when the packer asks past the last sample

    steady, flushed = [], []
    tiles_out = held = 0
    t0 = time.perf_counter()
    for pack in packer.pack(stream()):
        (steady if flowing["open"] else flushed).append((pack.num_tokens, pack.num_tiles))
        held = max(held, flowing["tiles_in"] - tiles_out)  # tiles inside the packer, this pack included
        tiles_out += pack.num_tiles
    seconds = time.perf_counter() - t0

    def fills(packs: list[tuple[int, int]]) -> tuple[float, float]:
        n = max(1, len(packs))
        return sum(p[0] for p in packs) / (n * TOKENS), sum(p[1] for p in packs) / (n * TILES)

    every = steady + flushed
    assert packer.stats["samples"] + len(packer.stats["rejected"]) == len(sizes)  # nothing lost
    return {
        "packs": len(every),
        "steady_packs": len(steady),
        "rejected": len(packer.stats["rejected"]),
        "token_fill_steady": fills(steady)[0],
        "tile_fill_steady": fills(steady)[1],
        "token_fill_all": fills(every)[0],
        "tile_fill_all": fills(every)[1],
        "samples_per_s": len(sizes) / seconds,
        "max_tiles_held": held,
    }


def padding_fraction(sizes: list[tuple[int, int]], batch: int) -> float:
    """Share of padding when ``batch`` consecutive samples are padded to their longest."""
    lengths = np.array([n for n, _ in sizes])
    real = padded = 0
    for start in range(0, len(lengths), batch):
        chunk = lengths[start : start + batch]
        real += int(chunk.sum())
        padded += int(chunk.max()) * len(chunk)
    return 1 - real / padded


def run(quick: bool = False) -> dict:
    seeds = range(3 if quick else 5)
    n = 2000 if quick else 5000
    batch = 8
    per_seed = []
    for seed in seeds:
        sizes = realistic_length_mix(seed, n)
        entry = {"seed": seed, "samples": n, "mean_tokens": float(np.mean([s[0] for s in sizes]))}
        entry["mean_tiles"] = float(np.mean([s[1] for s in sizes]))
        for algo in ALGORITHMS:
            entry[algo] = pack_stream(sizes, algo)
        entry["padding_fraction_unpacked"] = padding_fraction(sizes, batch)
        per_seed.append(entry)

    def med(algo: str, key: str) -> float:
        return median(e[algo][key] for e in per_seed)

    greedy_fill = med("greedy", "token_fill_steady")
    never_below = all(
        e["greedy"][k] >= e["reference"][k] for e in per_seed for k in ("token_fill_steady", "token_fill_all")
    )
    worst = min(e["greedy"]["token_fill_steady"] - e["reference"]["token_fill_steady"] for e in per_seed)
    pad = median(e["padding_fraction_unpacked"] for e in per_seed)
    held = {a: max(e[a]["max_tiles_held"] for e in per_seed) for a in ALGORITHMS}
    rows = [
        row(
            "greedy token fill (steady)",
            f">= {TARGET_FILL:.0%}",
            f"{greedy_fill:.2%} (all packs {med('greedy', 'token_fill_all'):.2%})",
            greedy_fill >= TARGET_FILL,
        ),
        row(
            "reference token fill (steady)",
            "info",
            f"{med('reference', 'token_fill_steady'):.2%} (all packs {med('reference', 'token_fill_all'):.2%})",
            None,
        ),
        row(
            "tile fill greedy / reference",
            "info",
            f"{med('greedy', 'tile_fill_steady'):.2%} / {med('reference', 'tile_fill_steady'):.2%}",
            None,
        ),
        row(
            "greedy >= reference, every seed",
            f"{len(per_seed)}/{len(per_seed)} seeds",
            f"{'yes' if never_below else 'no'} (min margin {worst:+.2%})",
            never_below,
        ),
        row(f"padding, unpacked batches of {batch}", "info", f"{pad:.1%} of batch tokens", None),
        row(
            "tiles held inside the packer (max)",
            "info",
            f"greedy {held['greedy']:.0f} / reference {held['reference']:.0f} tiles = "
            f"{held['greedy'] * TILE_BYTES / 2**30:.1f} / {held['reference'] * TILE_BYTES / 2**30:.1f} GiB "
            "(uint8) per worker",
            None,
        ),
    ]
    return {
        "figure": "packing_efficiency",
        "title": f"packing at {TOKENS} tokens / {TILES} tiles, buffer {BUFFER}, realistic_length_mix",
        "rows": rows,
        "details": {
            "budgets": {"max_packed_tokens": TOKENS, "num_images_expected": TILES, "max_buffer_size": BUFFER},
            "mix": "internvl_lightning.data.length_mix.realistic_length_mix",
            "unpacked_batch_size": batch,
            "per_seed": per_seed,
        },
    }


if __name__ == "__main__":
    result = run()
    save(result)
    print_result(result)
