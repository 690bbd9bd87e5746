"""``InternVLDataModule``: shards (``index.json``) or URL lists -> :class:`PackedStream` -> batches.

One config block, plain types, so LightningCLI builds it from YAML. The stream is endless (the
trainer's ``max_steps`` ends the run; data epochs are reseeded and counted) unless ``epochs`` is
set, then one data epoch is one trainer epoch. Lightning checkpoints ``state_dict()``: the state of
every rank's loader (gathered), so a restart continues with the exact next batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import lightning.pytorch as pl
import torch.distributed as dist
from torch.utils.data import DataLoader

from ..tokenizer import load_tokenizer, tokenizer_info
from .accumulate import StepWindow
from .collate import PackingCollator
from .encode import EncodeConfig
from .image import MAX_IMAGE_PIXELS
from .sources import DatasetSource, ShardInfo, expand_urls, load_index
from .stream import STATE_KEY, PackedStream, ResumableLoader, ShardEncoder
from .templates import get_template
from .video import MAX_FRAME_PIXELS, MAX_VIDEO_FRAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackingConfig:
    """Packer budgets (InternVL2.5's scripts: 16384 / 48 / 20) and the loss reduction."""

    max_packed_tokens: int = 16384
    """Token budget of one pack."""
    num_images_expected: int = 48
    """Tile budget of one pack."""
    max_buffer_size: int = 20
    """Samples the packer holds while looking for a fit."""
    algorithm: Literal["greedy", "reference"] = "greedy"
    """``greedy`` (fuller packs) or ``reference`` (InternVL's own algorithm)."""
    loss_reduction: Literal["token", "sample", "square"] = "square"
    """Per-token loss weights: every token alike, every sample alike, or 1/sqrt(tokens) (InternVL2.5)."""
    strict_mode: bool = False
    """Pad every pack's tiles to ``num_images_expected`` with dummy tiles (the reference's strict mode)."""
    allow_overflow: bool = False
    """``reference`` only: once half the buffer is in use, a pack may overflow the token budget."""
    pad_to_budget: bool = False
    """Pad every batch to ``max_packed_tokens`` (fixed shapes)."""


@dataclass(frozen=True)
class SourceConfig:
    """A dataset given as shard URLs (no index): brace patterns, ``pipe:``, ``http(s)://`` ...

    The mixture needs ``weight`` or ``num_samples`` (used as the reference does: count after
    ``repeat_time``); ``repeat_time`` < 1 needs per-shard counts, i.e. an index.
    """

    urls: list[str]
    weight: float | None = None
    num_samples: int | None = None
    repeat_time: float = 1.0
    data_augment: bool = False
    max_dynamic_patch: int | None = None


def sources_from_urls(config: dict[str, SourceConfig | dict]) -> list[DatasetSource]:
    """Datasets from URL lists; weights from ``weight`` or ``num_samples`` x repeat."""
    out = []
    for name, c in config.items():
        c = c if isinstance(c, SourceConfig) else SourceConfig(**c)
        if c.repeat_time < 1:
            raise ValueError(
                f"source {name!r}: repeat_time < 1 needs per-shard counts (use the shard tool's index)"
            )
        weight = c.weight
        if weight is None:
            if c.num_samples is None:
                raise ValueError(f"source {name!r}: give weight or num_samples")
            weight = float(c.num_samples * int(c.repeat_time))
        shards = [ShardInfo(u) for u in expand_urls(c.urls)]
        if not shards:
            raise ValueError(f"source {name!r}: no shard URLs")
        out.append(DatasetSource(name, shards, c.repeat_time, weight, c.data_augment, c.max_dynamic_patch))
    return out


def sources_from_index(
    roots: str | Iterable[str], verify: bool = True
) -> tuple[list[dict], list[DatasetSource]]:
    """Datasets of one or more shard directories / URL prefixes holding an ``index.json``."""
    headers, out = [], []
    for root in [roots] if isinstance(roots, str | os.PathLike) else roots:
        header, srcs = load_index(str(root), verify)
        headers.append(header)
        out += srcs
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names repeat across shard directories: {names}")
    return headers, out


class InternVLDataModule(pl.LightningDataModule):
    """Packed, resumable training batches (the batch contract of docs/ARCHITECTURE.md) from WebDataset shards.

    ``shards``: shard directory (or URL prefix, or a list of them) with the shard tool's
    ``index.json``; or ``sources``: dataset name -> :class:`SourceConfig`. ``tokenizer``: the LLM
    directory (InternVL's tokens are added) or a loaded tokenizer; ``trust_remote_code``: let a
    tokenizer defined by its own code (``tokenization_*.py``) run it. ``batch_size``: packs per step.
    ``sqrt_resampling``: mixture weights by sqrt(count) (reference ``--use_data_resampling``).
    ``replacement``: restart an exhausted dataset instead of dropping it until the epoch ends.
    ``epochs``: None = endless stream; N = one data epoch per trainer epoch (set max_epochs=N).
    ``val_shards``: optional validation shards (one pass, no shuffling, no augmentation).
    Batches carry ``stats`` (token_fill, tile_fill, samples, ...) for logging packing efficiency.
    ``reuse_freed_memory``: let each data process keep freed memory for the next batch (glibc only;
    see :mod:`internvl_lightning.data.memory`); with ``num_workers=0`` that is the training process.
    ``verify_data``: check shard sizes and sample checksums against the index (:mod:`.verify`).
    ``allow_data_restart``: resuming from a checkpoint whose data state was saved for other data or
    settings restarts the data order (logged) instead of failing. ``max_image_pixels``,
    ``max_video_frames``, ``max_frame_pixels``: media declaring more are skipped before decoding.

    ``setup`` checks what would otherwise only fail sample by sample: the template name, the
    budgets (against the smallest sample of every dataset, when the index records it) and an
    empty mixture. Shards tokenized with another tokenizer than the run's only get a warning:
    every sample is tokenized again from its stored conversation at train time, so the stored
    token counts are the only thing that can be stale (over-long samples are then skipped).
    """

    def __init__(
        self,
        shards: str | list[str] | None = None,
        sources: dict[str, SourceConfig] | None = None,
        tokenizer: str | None = None,
        trust_remote_code: bool = False,
        template: str = "internvl2_5",
        image_size: int = 448,
        tokens_per_tile: int = 256,
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 12,
        use_thumbnail: bool = True,
        normalization: str = "imagenet",
        min_num_frames: int = 8,
        max_num_frames: int = 32,
        video_sampling: str = "rand",
        packing: PackingConfig = PackingConfig(),
        shuffle_buffer: int = 100,
        shuffle_shards: bool = True,
        seed: int = 0,
        num_workers: int = 4,
        batch_size: int = 1,
        sqrt_resampling: bool = False,
        replacement: bool = False,
        epochs: int | None = None,
        val_shards: str | list[str] | None = None,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        reuse_freed_memory: bool = True,
        verify_data: bool = True,
        allow_data_restart: bool = False,
        max_image_pixels: int | None = MAX_IMAGE_PIXELS,
        max_video_frames: int | None = MAX_VIDEO_FRAMES,
        max_frame_pixels: int | None = MAX_FRAME_PIXELS,
    ) -> None:
        super().__init__()
        if (shards is None) == (sources is None):
            raise ValueError(
                "give exactly one of --data.shards=DIR (the `shard` command's output, with index.json) "
                "or --data.sources (dataset -> URL lists)"
            )
        if epochs is not None and replacement:
            raise ValueError("replacement never ends an epoch: use max_steps (epochs=None) with it")
        self.shards, self.sources, self.val_shards = shards, sources, val_shards
        self.tokenizer = tokenizer
        self.trust_remote_code = trust_remote_code
        self.packing = packing if isinstance(packing, PackingConfig) else PackingConfig(**packing)
        self.encode_config = EncodeConfig(
            template=template,
            image_size=image_size,
            tokens_per_tile=tokens_per_tile,
            min_dynamic_patch=min_dynamic_patch,
            max_dynamic_patch=max_dynamic_patch,
            use_thumbnail=use_thumbnail,
            normalization=normalization,
            min_num_frames=min_num_frames,
            max_num_frames=max_num_frames,
            video_sampling=video_sampling,
            max_length=self.packing.max_packed_tokens,  # longer samples could never be packed
            max_image_pixels=max_image_pixels,
            max_video_frames=max_video_frames,
            max_frame_pixels=max_frame_pixels,
        )
        self.verify_data, self.allow_data_restart = verify_data, allow_data_restart
        self.shuffle_buffer, self.shuffle_shards, self.seed = shuffle_buffer, shuffle_shards, seed
        self.num_workers, self.batch_size = num_workers, batch_size
        self.sqrt_resampling, self.replacement, self.epochs = sqrt_resampling, replacement, epochs
        self.reuse_freed_memory = reuse_freed_memory
        self.loader_kwargs: dict[str, Any] = {"pin_memory": pin_memory}
        if prefetch_factor is not None and num_workers > 0:
            self.loader_kwargs["prefetch_factor"] = prefetch_factor
        self._tok: Any = None
        self._train_sources: list[DatasetSource] | None = None
        self._train: ResumableLoader | None = None
        self._pending: list[dict] | None = None  # loaded state, applied when the loader is built

    # -- setup ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._train_sources is None:
            self._check_settings()
        if self._tok is None:
            self._tok = self._load_tokenizer()
        if self._train_sources is None:
            if self.shards is not None:
                headers, sources = sources_from_index(self.shards, self.verify_data)
                self._check_headers(headers)
                counted_alike = all(self._counted_alike(h) for h in headers)
            else:
                sources, counted_alike = sources_from_urls(self.sources or {}), False
            self._check_sources(sources, counted_alike)
            self._train_sources = sources

    def _check_settings(self) -> None:
        """Settings that would make every sample fail: refused before anything is read."""
        try:
            get_template(self.encode_config.template)
        except ValueError as e:
            raise ValueError(f"--data.template: {e}") from None
        p = self.packing
        if p.max_packed_tokens < 1 or p.num_images_expected < 0 or p.max_buffer_size < 1:
            raise ValueError(
                "--data.packing: max_packed_tokens and max_buffer_size must be >= 1 and num_images_expected "
                f">= 0, got {p.max_packed_tokens}, {p.max_buffer_size}, {p.num_images_expected}"
            )

    def _check_workers(self) -> None:
        """Loader workers beyond this process's share of the CPU cores only compete for them."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # processes sharing this machine
        share = max(1, cores // max(1, local))
        if self.num_workers > share:
            log.warning(
                "--data.num_workers=%d but each of the %d process(es) here has %d CPU core(s): the loader "
                "workers will compete for them (and with the training process); use at most %d",
                self.num_workers, local, share, max(0, share - 1),
            )  # fmt: skip

    def _counted_alike(self, header: dict) -> bool:
        """Whether the shard tool counted tokens and tiles as this run does (same tokenizer and settings)."""
        enc, cfg = header.get("encode") or {}, self.encode_config
        keys = ("template", "image_size", "tokens_per_tile", "min_dynamic_patch", "max_dynamic_patch")
        keys += ("use_thumbnail", "min_num_frames", "max_num_frames")
        same_tok = (header.get("tokenizer") or {}).get("sha256") == tokenizer_info(self._tok)["sha256"]
        return same_tok and all(k in enc and enc[k] == getattr(cfg, k) for k in keys)

    def _check_sources(self, sources: list[DatasetSource], counted_alike: bool) -> None:
        """An empty mixture is an error now; so is a dataset whose every sample is over a budget, when
        the index's smallest counts (``counted_alike``: made with this run's tokenizer and settings) say so."""
        if not sources:
            raise ValueError(f"no datasets to stream in {self.shards or self.sources}")
        if all(s.num_samples == 0 for s in sources):
            raise ValueError(
                f"empty mixture: datasets {[s.name for s in sources]} hold no samples "
                "(the shard tool kept none: see its report.txt)"
            )
        p = self.packing
        for s in sources if counted_alike else []:
            toks = [sh.min_tokens for sh in s.shards if sh.num_samples]
            tiles = [sh.min_tiles for sh in s.shards if sh.num_samples]
            if not toks or None in toks or None in tiles:
                continue  # no per-shard minimum in this index (older shard tool)
            if min(toks) > p.max_packed_tokens:  # type: ignore[type-var]
                raise ValueError(
                    f"dataset {s.name!r}: every sample is over the token budget (smallest {min(toks)} tokens > "  # type: ignore[type-var]
                    f"--data.packing.max_packed_tokens={p.max_packed_tokens})"
                )
            if min(tiles) > p.num_images_expected:  # type: ignore[type-var]
                raise ValueError(
                    f"dataset {s.name!r}: every sample is over the tile budget (smallest {min(tiles)} tiles > "  # type: ignore[type-var]
                    f"--data.packing.num_images_expected={p.num_images_expected})"
                )

    def skipped_shards(self) -> dict[str, list[str]]:
        """Per dataset, the shards left out at start-up (missing, or not the size the index records)."""
        return {s.name: list(s.skipped) for s in self._train_sources or [] if s.skipped}

    def _load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("InternVLDataModule needs tokenizer (the LLM directory)")
        return load_tokenizer(
            self.tokenizer, self.trust_remote_code
        )  # a directory, or a tokenizer object (notebooks, tests)

    def _check_headers(self, headers: list[dict]) -> None:
        """Warn when shards were counted with other settings (their stored counts then differ)."""
        cfg = self.encode_config
        for h in headers:
            for key, mine in (("image_size", cfg.image_size), ("tokens_per_tile", cfg.tokens_per_tile)):
                if key in h and h[key] != mine:
                    log.warning("shards were written with %s=%s, this run uses %s", key, h[key], mine)
            if h.get("template", cfg.template) != cfg.template:
                log.warning(
                    "shards were written with template %s, this run uses %s", h["template"], cfg.template
                )
            theirs, mine = (h.get("tokenizer") or {}).get("sha256"), tokenizer_info(self._tok)["sha256"]
            if theirs is not None and theirs != mine:
                log.warning(
                    "shards were counted with tokenizer %s (vocabulary hash %s), this run uses %s: samples "
                    "are tokenized again at train time, so only their stored token counts may be off "
                    "(over-long samples are skipped and counted)",
                    h["tokenizer"].get("name"),
                    theirs,
                    mine,
                )

    @property
    def tokenizer_object(self) -> Any:
        """The loaded tokenizer (after ``setup``)."""
        if self._tok is None:
            self.setup()
        return self._tok

    def _layout(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def collator(self) -> PackingCollator:
        p = self.packing
        return PackingCollator(
            self.tokenizer_object.pad_token_id or 0,
            p.loss_reduction,
            p.max_packed_tokens,
            p.num_images_expected,
            p.pad_to_budget,
            self.encode_config.image_size,
        )

    def build_stream(self, rank: int = 0, world_size: int = 1, val: bool = False) -> PackedStream:
        """The stream of one rank (``val``: the validation shards, one unshuffled pass)."""
        self.setup()
        p = self.packing
        packing = {
            "max_packed_tokens": p.max_packed_tokens,
            "num_images_expected": p.num_images_expected,
            "max_buffer_size": p.max_buffer_size,
            "algorithm": p.algorithm,
            "strict_mode": p.strict_mode,
            "allow_overflow": p.allow_overflow,
        }
        if val:
            _, srcs = sources_from_index(self.val_shards, self.verify_data)  # type: ignore[arg-type]
            for s in srcs:
                s.data_augment = False
            opts = {
                "shuffle_buffer": 0,
                "shuffle_shards": False,
                "stop_at_epoch_end": True,
                "snapshots": False,
            }
        else:
            srcs = self._train_sources  # type: ignore[assignment]
            opts = {
                "shuffle_buffer": self.shuffle_buffer,
                "shuffle_shards": self.shuffle_shards,
                "sqrt_weights": self.sqrt_resampling,
                "replacement": self.replacement,
                "stop_at_epoch_end": self.epochs is not None,
            }
        encoder = ShardEncoder(self.encode_config, self.tokenizer_object)
        return PackedStream(
            srcs,
            encoder,
            self.collator(),
            packing,
            self.batch_size,
            self.seed,
            rank=rank,
            world_size=world_size,
            reuse_freed_memory=self.reuse_freed_memory,
            verify=self.verify_data,
            **opts,
        )

    # -- loaders ----------------------------------------------------------------------------
    def train_dataloader(self) -> Iterable[dict]:
        self._check_workers()
        rank, world = self._layout()
        trainer = self.trainer
        if (
            self.epochs is not None
            and trainer is not None
            and trainer.max_epochs not in (None, -1, self.epochs)
        ):
            log.warning("data epochs=%s but trainer max_epochs=%s", self.epochs, trainer.max_epochs)
        previous = self._train.state_dict() if self._train is not None else None
        # Inside a trainer the snapshot is recorded when the batch is used (on_before_batch_transfer),
        # not when fetched: Lightning fetches one batch ahead.
        loader = ResumableLoader(
            self.build_stream(rank, world),
            self.num_workers,
            record_on_yield=trainer is None,
            allow_restart=self.allow_data_restart,
            **self.loader_kwargs,
        )
        self._train = loader
        if self._pending is not None:
            self._apply_pending()
        elif previous is not None:
            loader.load_state_dict(previous)
        return StepWindow(loader, self._accumulation)

    def _accumulation(self) -> int:
        return int(getattr(self.trainer, "accumulate_grad_batches", 1) or 1)

    def val_dataloader(self) -> Iterable[dict]:
        if self.val_shards is None:
            return []
        rank, world = self._layout()
        stream = self.build_stream(rank, world, val=True)
        return DataLoader(stream, batch_size=None, num_workers=self.num_workers, **self.loader_kwargs)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # The batch is now really used: remember its worker snapshot and drop it from the batch.
        if isinstance(batch, dict) and STATE_KEY in batch:
            if self._train is not None:
                self._train.record(batch)
            else:
                batch.pop(STATE_KEY)
        return batch

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Every rank's loader state (a collective call under torch.distributed)."""
        if self._train is None:
            return {"train": self._pending} if self._pending is not None else {}
        local = self._train.state_dict()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)
        else:
            ranks = [local]
        return {"train": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("train"):
            return
        self._pending = list(state["train"])
        if self._train is not None:  # loader already built: apply now
            self._apply_pending()

    def _apply_pending(self) -> None:
        rank, world = self._layout()
        if len(self._pending) != world:  # type: ignore[arg-type]
            raise ValueError(f"data state was saved by {len(self._pending)} ranks, this run has {world}")  # type: ignore[arg-type]
        self._train.load_state_dict(self._pending[rank])  # type: ignore[union-attr,index]
        self._pending = None

    def training_record(self) -> dict[str, Any]:
        """The data settings a model trained on this data keeps (stage outputs, exports, ``.ckpt``):
        template, normalisation and tile range; a meta file's per-dataset tile budget counts."""
        enc = self.encode_config
        budgets = [s.max_dynamic_patch or enc.max_dynamic_patch for s in self._train_sources or []]
        return {
            "template": enc.template,
            "normalization": enc.normalization,
            "max_dynamic_patch": max(budgets, default=enc.max_dynamic_patch),
            "min_dynamic_patch": enc.min_dynamic_patch,
        }

    def target_shares(self) -> dict[str, float]:
        """Each dataset's share of the mixture as the training stream samples it ({} before the
        first train_dataloader)."""
        if self._train is None:
            return {}
        stream = self._train.stream
        return {src.name: w for src, w in zip(stream.sources, stream.weights)}

    def data_stats(self) -> dict[int, dict]:
        """Per worker of this rank: samples read per dataset, encoded, skipped (+ last errors), packer stats."""
        return self._train.worker_stats() if self._train is not None else {}
