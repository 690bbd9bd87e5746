"""``evaluate``: load a benchmark, generate answers (split across ranks), score, report.

Ranks take samples strided (rank, rank + world, ...), generate their share and exchange
predictions with ``all_gather_object``; every rank then scores the full set, so the result is
the same as on one rank. Only rank 0 writes the report files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import InternVLForConditionalGeneration

from ..model.load import load_vlm_and_tokenizer
from ..tokenizer import TokenizerSource
from . import baselines
from .common import Benchmark, Sample, expand_paths, limit_groups
from .generate import EvalSettings, generate_batch, read_settings
from .mathvista import MathVista
from .mmbench import MMBench
from .mmmu import MMMU
from .result import EvalResult
from .vqa import VQA, VQA_PROMPT

BENCHMARKS: dict[str, type[Benchmark]] = {
    "mmbench": MMBench,
    "mmmu": MMMU,
    "mathvista": MathVista,
    "vqa": VQA,
}


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """A benchmark by name (options go to its constructor, e.g. VQA's ``metric``)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name](**options)


def load_samples(
    bench: Benchmark, data: str | Path, circular: bool = True, limit: int | None = None
) -> list[Sample]:
    """Every sample of ``data`` (a file, a directory or a glob); ``limit`` counts questions."""
    samples: list[Sample] = []
    for path in expand_paths(data):
        samples += bench.load(path, circular=circular)
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ValueError(f"{data}: duplicate sample id {s.id!r}")
        seen.add(s.id)
    return limit_groups(samples, limit)


def _ranks(rank: int | None, world_size: int | None) -> tuple[int, int, bool]:
    """(rank, world size, whether to gather) from the arguments or the process group."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return rank, world_size, initialised and world_size > 1


def predict(
    model,
    tokenizer,
    samples: list[Sample],
    settings: EvalSettings,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = False,
) -> list[str | None]:
    """Answers for ``samples`` in order. This rank answers every ``world_size``-th sample; with a
    process group the answers are gathered, else the others stay None."""
    from tqdm import tqdm

    rank, world_size, gather = _ranks(rank, world_size)
    mine = list(range(rank, len(samples), world_size))
    local: list[tuple[int, str]] = []
    batches = range(0, len(mine), batch_size)
    for start in tqdm(batches, desc=f"rank {rank}", disable=not progress):
        chunk = mine[start : start + batch_size]
        answers = generate_batch(
            model, tokenizer, [samples[i].request for i in chunk], settings, max_new_tokens
        )
        local += list(zip(chunk, answers, strict=True))
    parts = [local]
    if gather:
        parts = [None] * world_size
        dist.all_gather_object(parts, local)
    out: list[str | None] = [None] * len(samples)
    for part in parts:
        for i, answer in part:
            out[i] = answer
    return out


def evaluate(
    model_or_dir: InternVLForConditionalGeneration | str | Path,
    benchmark: str,
    data: str | Path,
    tokenizer: TokenizerSource | None = None,
    limit: int | None = None,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    circular: bool = True,
    out_dir: str | Path | None = None,
    baseline: str | None = "auto",
    dataset: str | None = None,
    vqa_metric: str = "vqa",
    vqa_prompt: str | None = VQA_PROMPT,
    max_num: int | None = None,
    template: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = False,
    settings_source: Any = None,
    image_root: str | Path | None = None,
    settings: EvalSettings | None = None,
) -> EvalResult:
    """Score a model on a benchmark file with its official rules, beside the published InternVL number.

    Ranks come from the process group (each answers every world-size-th sample; every rank then
    scores the full set); an explicit ``rank``/``world_size`` without one evaluates and scores
    only that shard. A Lightning ``.ckpt`` is read by ``training.checkpoint.load_checkpoint``.

    Args:
        model_or_dir: a model object (then pass ``tokenizer``), or a stage output / HF-native /
            original-layout InternVL directory.
        benchmark: mmbench, mmmu, mathvista or vqa.
        data: benchmark file, directory or glob (e.g. MMMU/*/validation-*.parquet).
        tokenizer: tokenizer dir or object (default: the model dir's own).
        limit: evaluate only the first N questions (all circular copies of each are kept).
        batch_size: prompts generated together.
        max_new_tokens: answer length limit (default: per benchmark).
        circular: MMBench circular evaluation (VLMEvalKit's, the default); False scores the
            original rows only.
        out_dir: directory for the JSON and Markdown reports (and MMBench's upload .xlsx).
        baseline: published model to compare with (internvl2.5-8b, internvl3.5-2b, ...; a bare
            size such as 8b means InternVL2.5), auto (guessed from the parameter count) or none.
        dataset: VQA dataset name for its baseline (textvqa, docvqa, infovqa, chartqa, ai2d;
            default: guessed from the file name).
        vqa_metric: VQA scoring (vqa, exact, anls, relaxed).
        vqa_prompt: instruction appended to VQA questions.
        max_num: tiles per image (default 6, never above training's).
        template: chat template (default: the model dir's training record).
        rank: this process's shard of the samples (default: the process group's rank).
        world_size: number of shards (default: the process group's size).
        progress: a progress bar.
        settings_source: the dir whose training record to read when passing a model object.
        image_root: base of relative image paths (default: beside the benchmark file).
        settings: prompt and image settings to use as they are (e.g. a training run's own);
            ``max_num`` and ``template`` are then ignored.
    """
    if baseline not in ("auto", None, "none"):
        baselines.model_name(baseline)  # an unknown model fails now, not after generating
    options: dict[str, Any] = {"image_root": image_root}
    if benchmark == "vqa":
        options.update(metric=vqa_metric, prompt=vqa_prompt)
    bench = get_benchmark(benchmark, **options)
    samples = load_samples(bench, data, circular=circular, limit=limit)
    model, tokenizer = load_vlm_and_tokenizer(model_or_dir, tokenizer)
    source = model_or_dir if settings_source is None else settings_source
    settings = settings or read_settings(source, model, max_num=max_num, template=template)
    max_new_tokens = max_new_tokens or bench.default_max_new_tokens
    answers = predict(
        model, tokenizer, samples, settings, batch_size, max_new_tokens, rank, world_size, progress
    )
    done = [(s, a) for s, a in zip(samples, answers, strict=True) if a is not None]
    judged = [bench.judge(s, a) for s, a in done]
    summary = bench.summarize([s for s, _ in done], judged, circular)
    predictions = [
        {
            "id": s.id,
            "group": s.group,
            "categories": s.categories,
            "prediction": a,
            "extracted": extracted,
            "answer": s.answer,
            "score": score,
        }
        for (s, a), (score, extracted) in zip(done, judged, strict=True)
    ]
    n_params = sum(p.numel() for p in model.parameters())
    compare_with = (
        baselines.guess_model(n_params)
        if baseline == "auto"
        else (None if baseline in (None, "none") else baseline)
    )
    result = EvalResult(
        benchmark=benchmark,
        data=str(data),
        score=summary.score,
        num_samples=len(done),
        num_scored=summary.num_scored,
        per_category=summary.per_category,
        category_counts=summary.category_counts,
        metrics=summary.metrics,
        protocol=bench.protocol(data, circular, [s for s, _ in done]),
        counts=summary.counts,
        predictions=predictions,
        baseline=baselines.lookup(compare_with, baselines.baseline_key(benchmark, data, dataset)),
        settings=dict(
            settings.to_dict(),
            model=str(source) if isinstance(source, str | Path) else type(model).__name__,
            parameters=n_params,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            circular=circular,
            limit=limit,
            **({"vqa_metric": vqa_metric} if benchmark == "vqa" else {}),
        ),
    )
    if out_dir is not None and _ranks(rank, world_size)[0] == 0:
        stem = f"{benchmark}_{Path(str(data)).stem}"
        path = bench.write_submission(Path(out_dir), stem, [s for s, _ in done], [a for _, a in done])
        result.submission = None if path is None else str(path)
        result.save(out_dir, stem)
    return result
