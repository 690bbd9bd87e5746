"""How much one data epoch holds, from the shard index alone (nothing is read from the tars).

The shard tool records per shard its samples, tokens and tiles; a dataset's ``repeat_time``
scales them (below 1: that share of the samples). A pack holds at most ``max_packed_tokens`` tokens
and ``num_images_expected`` tiles, so an epoch needs at least
    packs >= max(tokens / max_packed_tokens, tiles / num_images_expected)
and the packer's fill (tokens in a pack / budget; `stats.token_fill`, typically 0.9 - 1.0) sets
how many more. The learning-rate schedule and the progress bar of a run that passes over its data
(``epochs=N``) start from this bound over an assumed fill and correct it as batches report theirs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from .sources import INDEX_NAME, join_url, read_json

ASSUMED_FILL = 0.95  # packer fill assumed before the first batch (measured 0.93 - 0.99 on real mixtures)


@dataclass(frozen=True)
class EpochSize:
    """Samples, tokens and tiles of one pass over a mixture (after ``repeat_time``)."""

    samples: float
    tokens: float
    tiles: float

    def packs(self, max_packed_tokens: int, num_images_expected: int, fill: float = ASSUMED_FILL) -> int:
        """Packs one epoch makes at this fill of the binding budget (tokens or tiles)."""
        by_tokens = self.tokens / max_packed_tokens
        by_tiles = self.tiles / num_images_expected if num_images_expected else 0.0
        return max(1, math.ceil(max(by_tokens, by_tiles) / fill))

    def share(self, tokens: float, tiles: float) -> float:
        """Fraction of the epoch that ``tokens`` and ``tiles`` consumed (the larger of the two)."""
        parts = [tokens / self.tokens if self.tokens else 0.0, tiles / self.tiles if self.tiles else 0.0]
        return max(parts)


def epoch_size(roots: str | os.PathLike | Iterable[str | os.PathLike]) -> EpochSize | None:
    """Sum over the datasets of one or more shard directories; None if an index lacks the counts
    (shards given as URL lists, or written by an older shard tool)."""
    samples = tokens = tiles = 0.0
    for root in [roots] if isinstance(roots, str | os.PathLike) else roots:
        index = read_json(join_url(str(root), INDEX_NAME))
        for ds in index.get("datasets", {}).values():
            repeat = float(ds.get("repeat_time", 1.0))
            for shard in ds.get("shards", []):
                if not all(isinstance(shard.get(k), int) for k in ("num_samples", "num_tokens", "num_tiles")):
                    return None
                samples += repeat * shard["num_samples"]
                tokens += repeat * shard["num_tokens"]
                tiles += repeat * shard["num_tiles"]
    return EpochSize(samples, tokens, tiles) if tokens else None
