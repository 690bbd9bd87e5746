"""LoRA adapters on the ViT and the LLM (the reference's ``use_backbone_lora`` / ``use_llm_lora``).

Each targeted ``nn.Linear`` becomes a :class:`LoRALinear`: ``y = W x + (alpha / r) * B A dropout(x)``
with ``A`` (r, in) drawn like an ``nn.Linear`` weight and ``B`` (out, r) zero, so a freshly adapted
model computes exactly what it did before. Targets follow the reference trainer (internvl_chat/internvl/train/internvl_chat_finetune.py: peft
``LoraConfig(r, lora_alpha=2r, lora_dropout=0.05)``) in transformers' layout: the ViT's
``q_proj, k_proj, v_proj, projection_layer, fc1, fc2`` (the reference adapts the fused ``qkv`` with one
adapter; here q, k and v get one each) and the LLM's ``q_proj, k_proj, v_proj, o_proj, gate_proj,
up_proj, down_proj`` (InternLM2 LLMs arrive converted to the Llama layout, so one list serves).

An adapted part trains only its adapters: every other weight in it is frozen (``FreezeSchedule``
keeps it so). Exports write merged weights (``W + (alpha / r) B A``) under the original names, so
an adapted model exports to the same HF-native layout as a fully trained one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

VIT_TARGETS = ("q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2")
LLM_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_PREFIX = "lora_"  # parameter names of the adapters: lora_A, lora_B


class LoRALinear(torch.nn.Module):
    """A frozen ``base`` linear layer plus a trainable rank-``rank`` update."""

    def __init__(
        self, base: torch.nn.Linear, rank: int, alpha: float, dropout: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()
        w = base.weight
        # Drawn on the CPU with the CPU generator, then moved: Lightning builds models under a
        # default-device context (the GPU), where a CPU generator cannot fill a tensor.
        a = torch.empty(rank, base.in_features, dtype=w.dtype, device="cpu")
        # nn.Linear's default init (kaiming-uniform, a = sqrt(5)): bound 1 / sqrt(in_features).
        bound = 1 / math.sqrt(base.in_features)
        a.uniform_(-bound, bound, generator=generator)
        self.lora_A = torch.nn.Parameter(a.to(w.device))  # (r, in)
        self.lora_B = torch.nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., in) -> (..., r) -> (..., out); the update never materialises an (out, in) matrix.
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """``W + (alpha / r) B A``, computed in fp32 and returned in the base weight's dtype."""
        return _merge(self.base.weight, self.lora_A, self.lora_B, self.scaling)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def _merge(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``W + scaling * B A`` (w (out, in), a (r, in), b (out, r)) in fp32, returned in w's dtype."""
    return (w.detach().float() + (b.detach().float() @ a.detach().float()) * scaling).to(w.dtype)


def add_lora(
    part: torch.nn.Module,
    targets: tuple[str, ...],
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.05,
    seed: int = 0,
) -> int:
    """Wrap every ``nn.Linear`` of ``part`` whose attribute name is in ``targets``; freeze the rest
    of ``part``. ``alpha`` defaults to ``2 * rank`` (the reference). Returns the number wrapped."""
    generator = torch.Generator().manual_seed(seed)  # same adapters on every rank and every rebuild
    alpha = 2.0 * rank if alpha is None else float(alpha)
    found = [
        (parent, name, child)
        for parent in part.modules()
        for name, child in parent.named_children()
        if name in targets and type(child) is torch.nn.Linear
    ]
    if not found:
        raise ValueError(f"no LoRA target ({', '.join(targets)}) found in {type(part).__name__}")
    for parent, name, child in found:
        setattr(parent, name, LoRALinear(child, rank, alpha, dropout, generator))
    freeze_all_but_adapters(part)
    return len(found)


def add_vlm_lora(
    model,
    vit_rank: int = 0,
    llm_rank: int = 0,
    alpha: float | None = None,
    dropout: float = 0.05,
    seed: int = 0,
) -> dict[str, int]:
    """Adapters on the ViT and/or the LLM of an ``InternVLForConditionalGeneration``; an adapted LLM
    also freezes the output layer (the reference adapts the whole causal LM, head included).
    Returns {part: layers wrapped}."""
    inner, wrapped = model.model, {}
    if vit_rank:
        wrapped["vision"] = add_lora(inner.vision_tower, VIT_TARGETS, vit_rank, alpha, dropout, seed)
    if llm_rank:
        wrapped["llm"] = add_lora(inner.language_model, LLM_TARGETS, llm_rank, alpha, dropout, seed + 1)
        model.lm_head.requires_grad_(False)
    return wrapped


def is_adapter(name: str) -> bool:
    """Whether a parameter name (``...q_proj.lora_A``) is an adapter's."""
    return name.rsplit(".", 1)[-1].startswith(ADAPTER_PREFIX)


def has_adapters(module: torch.nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in module.modules())


def freeze_all_but_adapters(part: torch.nn.Module) -> None:
    """In an adapted part only the adapters train."""
    for name, p in part.named_parameters():
        p.requires_grad_(is_adapter(name))


def adapter_scalings(model: torch.nn.Module) -> dict[str, float]:
    """{module name: alpha / r} of every adapted layer (names as in ``model.state_dict()``)."""
    return {name: m.scaling for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def fold_adapters(state: dict[str, torch.Tensor], scalings: dict[str, float]) -> dict[str, torch.Tensor]:
    """A state dict of an adapted model with every adapter folded into its base layer, under the
    base layer's own names (``...q_proj.weight`` = ``W + (alpha / r) B A``, computed in fp32, in the
    weight's dtype): the layout of the unadapted model. Works on gathered (full) state dicts too."""
    out = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        if owner in scalings and leaf.startswith(ADAPTER_PREFIX):
            continue  # folded into the weight below
        wrapper = owner.removesuffix(".base")
        if owner.endswith(".base") and wrapper in scalings:
            key = f"{wrapper}.{leaf}"
            if leaf == "weight":
                value = _merge(
                    value, state[f"{wrapper}.lora_A"], state[f"{wrapper}.lora_B"], scalings[wrapper]
                )
        out[key] = value
    return out


def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with the adapters folded in (:func:`fold_adapters`)."""
    return fold_adapters({k: v.detach() for k, v in model.state_dict().items()}, adapter_scalings(model))
