"""`plan`: parameters, memory per GPU and wall-clock days of one training stage, before renting GPUs.

Memory per GPU (bytes; P = all parameters, T = trainable ones, N = data-parallel GPUs), following
the ZeRO paper (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", Sec. 3.1 and 5: mixed-precision Adam keeps 2 + 2 + 12 bytes per parameter; each
ZeRO stage partitions one more of them across the N ranks):
    weights    2 P   bf16                    divided by N from ZeRO-3
    gradients  2 T   bf16, trainable only    divided by N from ZeRO-2
    optimizer 12 T   fp32 master + Adam m, v divided by N from ZeRO-1
ZeRO-3 also holds whole the module it is computing: bf16 weights + gradients of the largest module,
4 bytes x its parameters (DeepSpeed's estimator uses the same term). ZeRO-1/2 reduce gradients through
bf16 buckets (two when overlap_comm is on), sized by the reference DeepSpeed config (`strategy.py`);
plain DDP (zero=0) copies all gradients into its buckets. Not in the peak: the fp32 copy of the
gradient partition DeepSpeed builds at the optimizer step (4 T / N), when activations are gone.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models", Sec. 4.1): one transformer layer stores s*b*h*(34 + 5*a*s/h) bytes in 16-bit for
sequence length s, micro batch b, hidden size h and a heads. The 5*a*s/h part is the attention
score matrix; flash attention (what the recipes use) never stores it, so we drop it by default.
With full activation checkpointing (Sec. 5) a layer keeps only its 16-bit input, 2*s*b*h, and the
backward pass rebuilds one layer at a time. The formula is for a GPT block (4h GELU MLP, full
multi-head attention); SwiGLU MLPs and grouped KV heads shift it by some tens of percent, so treat
activations as an estimate. The LLM sees one packed sequence (b=1, s=pack tokens); the ViT sees
b=tiles sequences of patches+CLS. A frozen ViT (stage 1) keeps nothing for backward; we count one
layer's forward working set. The loss
never builds full logits (`loss.py`): one chunk of chunk x vocab logits lives at a time, held as
bf16 logits + fp32 copy + fp32 gradient (10 bytes each).

Time: FLOPs per pack from `flops.py` (6N + attention + ViT; Kaplan et al. 2020, PaLM App. B);
step time = FLOPs per step / (GPUs x peak x MFU), with the model FLOPs of flops.py for the parts
that train in this stage (frozen parts skip their weight gradients; a frozen ViT runs forward only).
Not counted: CUDA context and NCCL (about 1-2 GiB), allocator fragmentation, the ZeRO-3 prefetch
beyond one module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from .flops import PEAK_BF16_FLOPS, FlopsModel, trained_parts
from .freeze import FreezeSchedule, parameter_table
from .global_batch import accumulation
from .strategy import zero_config

GIB = 2**30
STAGES = ("1", "1.5", "2")
# Which components train in each stage (InternVL's internvl_chat/shell/internvl2.5/stage*/ scripts).
STAGE_FREEZE = {
    "1": dict(freeze_llm=True, freeze_backbone=True),  # MLP only
    "1.5": dict(freeze_llm=True),  # ViT + MLP
    "2": {},  # everything
}


RECIPE_GPUS = 512  # every reference stage script: 64 nodes x 8 GPUs, one pack per GPU


class Recipe(NamedTuple):
    zero: int
    grad_acc: int
    steps: int
    bucket_size: int | None = None  # None: strategy.py's default for that ZeRO stage


# Reference InternVL2.5 stage scripts (internvl_chat/shell/internvl2.5/stage*/): ZeRO stage, gradient accumulation on 512
# GPUs, max_steps (stage 1 / 1.5: a cap, the data decides). Stage 1.5 exists for 8B and 26B only.
RECIPES: dict[tuple[str, str], Recipe] = {
    **{(size, "1"): Recipe(1, 1, 100_000) for size in ("1b", "2b", "4b", "8b")},
    **{(size, "1"): Recipe(3, 1, 100_000) for size in ("26b", "38b", "78b")},
    ("8b", "1.5"): Recipe(1, 2, 100_000),
    ("26b", "1.5"): Recipe(3, 2, 100_000),
    ("1b", "2"): Recipe(1, 1, 22_000),
    ("2b", "2"): Recipe(1, 1, 22_000),
    ("4b", "2"): Recipe(1, 1, 11_000),
    ("8b", "2"): Recipe(1, 1, 5_500),
    ("26b", "2"): Recipe(3, 1, 5_500),
    ("38b", "2"): Recipe(3, 1, 5_500),
    ("78b", "2"): Recipe(3, 1, 5_500, bucket_size=int(1e8)),  # zero_stage3_config_100b_1e8
}


def nearest_recipe(preset: str, stage: str) -> tuple[str, Recipe] | None:
    """The reference recipe of this stage for the preset, else that of the reference size whose LLM
    is closest (hidden size x layers) - a starting point for presets the reference did not train."""
    from ..model.presets import get_preset

    if (preset, stage) in RECIPES:
        return preset, RECIPES[(preset, stage)]
    sizes = [size for size, st in RECIPES if st == stage]
    if not sizes:
        return None
    shape = lambda name: get_preset(name).llm.hidden_size * get_preset(name).llm.num_layers  # noqa: E731
    mine = shape(preset)
    size = min(sizes, key=lambda name: abs(shape(name) - mine))
    return size, RECIPES[(size, stage)]


@dataclass
class Memory:
    """Bytes per GPU. `*_ckpt` with activation checkpointing, `*_full` without."""

    weights: float
    gradients: float
    optimizer: float
    zero3_gathered: float
    grad_buckets: float
    llm_act_ckpt: float
    llm_act_full: float
    vit_act_ckpt: float
    vit_act_full: float
    loss_chunk: float

    @property
    def model_states(self) -> float:
        return self.weights + self.gradients + self.optimizer

    def total(self, checkpointing: bool = True) -> float:
        fixed = self.model_states + self.zero3_gathered + self.grad_buckets + self.loss_chunk
        if checkpointing:
            return fixed + self.llm_act_ckpt + self.vit_act_ckpt
        return fixed + self.llm_act_full + self.vit_act_full


@dataclass
class Plan:
    preset: str
    stage: str
    gpus: int
    zero: int
    gpu_memory_gb: float  # GiB, as nvidia-smi and DeepSpeed report
    params: dict[str, tuple[int, int]]  # component -> (trainable, frozen)
    largest_module_params: int
    memory: Memory
    fits: bool  # with activation checkpointing (what the recipes use)
    fits_without_checkpointing: bool
    pack_tokens: int
    tiles_per_pack: int
    sample_tokens: int
    flash_attention: bool
    tokens_per_step: float
    packs_per_step: float
    flops_per_pack: float
    step_flops: float
    mfu: float
    peak_flops: float
    step_seconds: float
    steps: int
    days: float
    grad_acc: int = 1
    recipe_packs_per_step: int | None = None  # the reference recipe's global batch, if there is one
    notes: list[str] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.params.values())

    @property
    def total_params(self) -> int:
        return sum(t + f for t, f in self.params.values())

    def __str__(self) -> str:
        return format_plan(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] |= {
            "model_states": self.memory.model_states,
            "total_ckpt": self.memory.total(True),
            "total_full": self.memory.total(False),
        }
        return d


def _layer_act_bytes(s: int, b: int, h: int, heads: int, flash: bool) -> float:
    """Korthikanti et al. 2022, Sec. 4.1: 16-bit activations of one transformer layer."""
    return s * b * h * (34 + (0 if flash else 5 * heads * s / h))


def _activations(s: int, b: int, h: int, heads: int, layers: int, flash: bool) -> tuple[float, float]:
    """(with full checkpointing, without): layer inputs + one rebuilt layer, or every layer whole."""
    one = _layer_act_bytes(s, b, h, heads, flash)
    return layers * 2 * s * b * h + one, layers * one


def _largest_module(model) -> int:
    """Most parameters directly owned by one module (what ZeRO-3 gathers at once)."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def plan(
    preset: str,
    stage: str | float = "2",
    gpus: int = 512,
    gpu_memory_gb: float = 80.0,
    zero: int | None = None,
    mfu: float = 0.4,
    tokens_per_step: float | None = None,
    grad_acc: int | None = None,
    steps: int | None = None,
    peak_tflops: float | None = None,
    pack_tokens: int = 16384,
    tiles_per_pack: int = 48,
    sample_tokens: int = 4096,
    loss_chunk: int = 4096,
    flash_attention: bool = True,
    bucket_size: int | None = None,
) -> Plan:
    """Parameters, memory per GPU (ZeRO 1/2/3, activations) and days of a stage for a preset.

    Every formula is in the docstring of ``training/plan.py``.

    Args:
        preset: 1b, 2b, 4b, 8b, 26b, 38b, 78b (or any other preset: tiny, internvl3-2b, ...;
            those take the recipe of the nearest reference size, named in a note).
        stage: 1, 1.5 or 2.
        gpus: data-parallel GPUs (512 = 64 nodes x 8, the recipes' scale).
        gpu_memory_gb: memory of one GPU in GiB.
        zero: ZeRO stage, 0 for plain DDP (default: the reference recipe's).
        mfu: assumed model FLOPs utilisation.
        tokens_per_step: LLM tokens per optimizer step (default gpus x pack_tokens x grad_acc).
        grad_acc: gradient accumulation (default: the one that keeps the recipe's global batch on
            ``gpus`` GPUs: the recipe's own on 512, 64 on 8, 512 on one; 2x that in stage 1.5).
        steps: optimizer steps of the stage (default: the recipe's, scaled so the same number of
            packs is seen when the global batch differs from the recipe's).
        peak_tflops: dense bf16 peak of one GPU in TFLOP/s (default H100, 989).
        pack_tokens: tokens per pack.
        tiles_per_pack: tiles per pack.
        sample_tokens: mean sample length inside a pack (attention FLOPs grow with its square).
        loss_chunk: positions per chunk of the logits-free loss.
        flash_attention: attention never stores its score matrix (false: eager/sdpa-math).
        bucket_size: ZeRO bucket size (default: the recipe's).
    """
    from ..model.presets import get_preset, meta_model

    stage = {"1.0": "1", "2.0": "2"}.get(str(stage), str(stage))
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    notes = []
    found = nearest_recipe(preset, stage)
    if found is None and (zero is None or steps is None):
        raise ValueError(f"no reference recipe for stage {stage}; pass zero and steps explicitly")
    recipe, recipe_packs = None, None
    if found is not None:
        source, recipe = found
        recipe_packs = RECIPE_GPUS * recipe.grad_acc
        if source != preset:
            notes.append(
                f"the reference has no stage-{stage} recipe for {preset}: the {source} recipe's values "
                f"(ZeRO-{recipe.zero}, {recipe_packs} packs per step, {recipe.steps:,} steps)"
            )
    zero = zero if zero is not None else recipe.zero
    grad_acc = grad_acc or (accumulation(recipe_packs, gpus) if recipe else 1)
    if steps is None:  # the same packs as the recipe: fewer steps when each step takes more
        steps = round(recipe.steps * recipe_packs / (gpus * grad_acc))
    bucket_size = bucket_size or (recipe.bucket_size if recipe else None)
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"zero must be 0 (plain DDP), 1, 2 or 3, got {zero}")
    if recipe_packs is not None:
        match = accumulation(recipe_packs, gpus)
        if gpus * grad_acc == recipe_packs:
            notes.append(
                f"global batch {recipe_packs} packs as in the recipe: {gpus} GPU(s) x accumulate {grad_acc} "
                f"(the recipes' model.packs_per_step={recipe_packs} sets it; by hand: "
                f"--trainer.accumulate_grad_batches={grad_acc})"
            )
        else:
            notes.append(
                f"global batch {gpus * grad_acc} packs, the recipe's is {recipe_packs} "
                f"({gpus * grad_acc / recipe_packs:.2g}x); --trainer.accumulate_grad_batches={match} on "
                f"{gpus} GPU(s) comes closest"
            )

    p = get_preset(preset)
    model = meta_model(p)  # shapes only; nothing allocated
    FreezeSchedule(**STAGE_FREEZE[stage]).apply(model)
    params = {name: (t, f) for name, t, f in parameter_table(model)}
    total = sum(t + f for t, f in params.values())
    trainable = sum(t for t, _ in params.values())
    largest = _largest_module(model)

    # Model states (ZeRO paper): each stage shards one more of optimizer / gradients / weights.
    n = gpus
    weights = 2 * total / (n if zero >= 3 else 1)
    gradients = 2 * trainable / (n if zero >= 2 else 1)
    optimizer = 12 * trainable / (n if zero >= 1 else 1)
    zero3_gathered = 4 * largest if zero == 3 else 0.0
    if zero >= 1:
        zc = zero_config(zero, bucket_size=bucket_size)
        copies = 2 if zero < 3 and zc["overlap_comm"] else 1  # ZeRO-1/2 double-buffer when overlapping
        grad_buckets = 2 * zc["reduce_bucket_size"] * copies
    else:  # plain DDP copies every gradient into its buckets (unless gradient_as_bucket_view)
        grad_buckets = 2 * trainable

    llm, vit = p.llm, p.vision
    llm_ckpt, llm_full = _activations(
        pack_tokens, 1, llm.hidden_size, llm.num_heads, llm.num_layers, flash_attention
    )
    vit_seq = (vit.image_size // vit.patch_size) ** 2 + 1  # patches + CLS
    if stage == "1":  # frozen ViT on pixels that need no grad: autograd keeps nothing
        vit_ckpt = vit_full = _layer_act_bytes(
            vit_seq, tiles_per_pack, vit.hidden_size, vit.num_heads, flash_attention
        )
    else:
        vit_ckpt, vit_full = _activations(
            vit_seq, tiles_per_pack, vit.hidden_size, vit.num_heads, vit.num_layers, flash_attention
        )
    vocab = model.lm_head.weight.shape[0]
    mem = Memory(
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        zero3_gathered=zero3_gathered,
        grad_buckets=grad_buckets,
        llm_act_ckpt=llm_ckpt,
        llm_act_full=llm_full,
        vit_act_ckpt=vit_ckpt,
        vit_act_full=vit_full,
        loss_chunk=min(loss_chunk, pack_tokens) * vocab * 10,
    )
    budget = gpu_memory_gb * GIB

    # Time: model FLOPs of one pack (flops.py), packs per optimizer step, assumed MFU.
    lengths = [sample_tokens] * (pack_tokens // sample_tokens)
    if pack_tokens % sample_tokens:
        lengths.append(pack_tokens % sample_tokens)
    flops_per_pack = FlopsModel.from_model(model).step_flops(
        pack_tokens, lengths, tiles_per_pack, **trained_parts(model)
    )
    tokens_per_step = tokens_per_step or gpus * pack_tokens * grad_acc
    packs = tokens_per_step / pack_tokens
    step_flops = packs * flops_per_pack
    peak = peak_tflops * 1e12 if peak_tflops else PEAK_BF16_FLOPS["H100"]
    step_seconds = step_flops / (gpus * peak * mfu)

    if recipe is None:
        notes.append("no reference recipe for this stage: zero and steps as given")
    if stage != "2":
        notes.append(f"stage {stage} max_steps {steps:,} is a cap in the reference; the data decides")
    return Plan(
        preset=p.name,
        stage=stage,
        gpus=gpus,
        zero=zero,
        gpu_memory_gb=gpu_memory_gb,
        params=params,
        largest_module_params=largest,
        memory=mem,
        fits=mem.total(True) <= budget,
        fits_without_checkpointing=mem.total(False) <= budget,
        pack_tokens=pack_tokens,
        tiles_per_pack=tiles_per_pack,
        sample_tokens=sample_tokens,
        flash_attention=flash_attention,
        tokens_per_step=float(tokens_per_step),
        packs_per_step=packs,
        flops_per_pack=flops_per_pack,
        step_flops=step_flops,
        mfu=mfu,
        peak_flops=peak,
        step_seconds=step_seconds,
        steps=steps,
        days=steps * step_seconds / 86400,
        grad_acc=grad_acc,
        recipe_packs_per_step=recipe_packs,
        notes=notes,
    )


def format_plan(pl: Plan) -> str:
    """Aligned text tables: parameters, memory per GPU, time."""
    trains = {"1": "mlp", "1.5": "vision + mlp", "2": "vision + mlp + llm"}[pl.stage]
    out = [
        f"plan: preset {pl.preset}, stage {pl.stage} (trains {trains}), {pl.gpus} GPUs, "
        f"ZeRO-{pl.zero}, {pl.gpu_memory_gb:g} GiB per GPU",
        "",
        f"{'parameters':<12}{'trainable':>16}{'frozen':>16}",
    ]
    for name, (t, f) in pl.params.items():
        out.append(f"{name:<12}{t:>16,}{f:>16,}")
    out.append(f"{'total':<12}{pl.trainable:>16,}{pl.total_params - pl.trainable:>16,}")

    m, g, n = pl.memory, lambda b: f"{b / GIB:.2f}", pl.gpus
    shard = lambda k: f"/ {n}" if pl.zero >= k else "whole"  # noqa: E731
    rows = [
        (f"weights (bf16, 2 B/param, {shard(3)})", m.weights, m.weights),
        (f"gradients (bf16, 2 B/trainable, {shard(2)})", m.gradients, m.gradients),
        (f"optimizer (fp32 master+m+v, 12 B/trainable, {shard(1)})", m.optimizer, m.optimizer),
        ("= model states", m.model_states, m.model_states),
        ("gradient buckets (bf16)", m.grad_buckets, m.grad_buckets),
    ]
    if pl.zero == 3:
        gathered = f"ZeRO-3 gathered module ({pl.largest_module_params / 1e6:.0f}M x 4 B)"
        rows.append((gathered, m.zero3_gathered, m.zero3_gathered))
    rows += [
        (f"LLM activations ({pl.pack_tokens} tokens)", m.llm_act_ckpt, m.llm_act_full),
        (f"ViT activations ({pl.tiles_per_pack} tiles)", m.vit_act_ckpt, m.vit_act_full),
        ("loss logits (one chunk)", m.loss_chunk, m.loss_chunk),
        ("total", m.total(True), m.total(False)),
    ]
    width = max(len(r[0]) for r in rows) + 2
    out += ["", f"{'memory per GPU (GiB)':<{width}}{'ckpt':>10}{'no ckpt':>10}"]
    out += [f"{label:<{width}}{g(a):>10}{g(b):>10}" for label, a, b in rows]
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    out.append(f"{f'fits in {pl.gpu_memory_gb:g} GiB':<{width}}{yes(pl.fits):>10}"
               f"{yes(pl.fits_without_checkpointing):>10}")  # fmt: skip

    out += [
        "",
        f"{'time':<34}{'value':>16}",
        f"{'tokens per step':<34}{pl.tokens_per_step:>16,.0f}",
        f"{'packs per step (x ' + str(pl.tiles_per_pack) + ' tiles)':<34}{pl.packs_per_step:>16,.0f}",
        f"{'= GPUs x accumulation':<34}{f'{pl.gpus} x {pl.grad_acc}':>16}",
        f"{'TFLOP per pack (6N+attn+ViT)':<34}{pl.flops_per_pack / 1e12:>16,.1f}",
        f"{'PFLOP per step':<34}{pl.step_flops / 1e15:>16,.1f}",
        f"{'MFU x peak TFLOP/s per GPU':<34}{f'{pl.mfu:g} x {pl.peak_flops / 1e12:g}':>16}",
        f"{'seconds per step':<34}{pl.step_seconds:>16,.2f}",
        f"{'steps':<34}{pl.steps:>16,}",
        f"{'days':<34}{pl.days:>16,.2f}",
        f"(samples of {pl.sample_tokens} tokens per pack; activations assume "
        f"{'flash' if pl.flash_attention else 'eager'} attention)",
    ]
    out += [f"note: {s}" for s in pl.notes]
    return "\n".join(out)
