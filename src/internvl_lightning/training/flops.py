"""Model FLOPs of one training step, for MFU.

Formula (Kaplan et al. 2020, "Scaling Laws", Table 1; PaLM, Chowdhery et al. 2022, App. B):
a forward pass costs 2 FLOPs per parameter per token plus attention scores, and training
(forward + backward) costs 3x the forward:
    dense:      6 * N * tokens
    attention:  12 * n_layers * d_model * sum_s(T_s^2)   (QK^T and AV, 2*T^2*d each, x3)
We count full (non-causal) T^2 like PaLM does, and sum per packed sample because samples do
not attend to each other. The ViT adds the same terms over its patch tokens (+CLS) per tile,
and the projector 6 * N_mlp per visual token.

Frozen parts need fewer FLOPs, and MFU counts only what the step needs (recomputation under
activation checkpointing is never counted). Per parameter and token, a part costs 2 (forward)
+ 2 (gradients of its inputs, needed inside a training part and wherever anything upstream
trains: the LLM in stage 1 passes gradients down to the projector) + 2 (gradients of its
weights, when the part trains). Attention has no weights: its forward is 4 * d * T^2 per layer
and its backward 8 * d * T^2 whenever gradients pass through it. So stage 1 (projector only)
costs the LLM 4N and the ViT 2N. A part's weights count as training when any of its parameters
other than LoRA adapters does; a part whose adapters alone train passes gradients (4N).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.config import tokens_per_tile, vision_geometry
from ..model.lora import is_adapter
from ..model.parts import vlm_parts

# Dense bf16 peak FLOP/s of common accelerators (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
}


@dataclass(frozen=True)
class FlopsModel:
    """What the FLOP count needs to know about the model."""

    llm_params: int  # non-embedding parameters of the LLM (+ lm_head)
    llm_layers: int
    llm_hidden: int
    vit_params: int
    vit_layers: int
    vit_hidden: int
    vit_tokens_per_tile: int  # patches + CLS
    mlp_params: int
    llm_tokens_per_tile: int

    @classmethod
    def from_model(cls, model) -> FlopsModel:
        """Read the shapes and parameter counts of an `InternVLForConditionalGeneration`."""
        cfg = model.config
        vc, tc = cfg.vision_config, cfg.text_config
        numel = lambda p: getattr(p, "ds_numel", p.numel())  # noqa: E731  (ZeRO-3: whole size)
        count = lambda m: sum(numel(p) for p in m.parameters())  # noqa: E731
        lm = model.model.language_model
        emb = numel(lm.get_input_embeddings().weight)
        image, patch = vision_geometry(vc)
        patches = (image // patch) ** 2
        return cls(
            llm_params=count(lm) - emb + numel(model.lm_head.weight),
            llm_layers=tc.num_hidden_layers,
            llm_hidden=tc.hidden_size,
            vit_params=count(model.model.vision_tower),
            vit_layers=vc.num_hidden_layers,
            vit_hidden=vc.hidden_size,
            vit_tokens_per_tile=patches + 1,
            mlp_params=count(model.model.multi_modal_projector),
            llm_tokens_per_tile=tokens_per_tile(vc, cfg.downsample_ratio),
        )

    def step_flops(
        self,
        tokens: int,
        sample_lengths: list[int],
        tiles: int,
        *,
        vision: bool = True,
        mlp: bool = True,
        llm: bool = True,
        adapters: tuple[str, ...] = (),
    ) -> float:
        """Training FLOPs for `tokens` LLM tokens (samples of the given lengths) and `tiles` ViT
        tiles. `vision`, `mlp`, `llm` (the parts of `model/parts.py`): whose weights train (all by
        default: stage 2); `adapters`: parts ("vision", "llm") with trainable LoRA adapters, which pass gradients through frozen
        weights (the adapters' own rank-r products, ~r/width of a layer's, are left out)."""

        def dense(trains: bool, grads: bool) -> int:  # FLOPs per parameter per token
            # Inside a training part every layer but the first needs its input gradients too.
            return 6 if trains else 4 if grads else 2

        def attention(trains: bool, grads: bool) -> int:  # x d x T^2 per layer
            return 12 if trains or grads else 4

        vit, vit_grads = vision, "vision" in adapters
        v = self.vit_tokens_per_tile
        vit_flops = tiles * (
            dense(vit, vit_grads) * self.vit_params * v
            + attention(vit, vit_grads) * self.vit_layers * self.vit_hidden * v * v
        )
        mlp_flops = tiles * dense(mlp, vit or vit_grads) * self.mlp_params * self.llm_tokens_per_tile
        llm_grads = vit or vit_grads or mlp or "llm" in adapters
        llm_flops = dense(llm, llm_grads) * self.llm_params * tokens + attention(
            llm, llm_grads
        ) * self.llm_layers * self.llm_hidden * sum(t * t for t in sample_lengths)
        return float(llm_flops + vit_flops + mlp_flops)


def trained_parts(model) -> dict:
    """Which parts of an `InternVLForConditionalGeneration` train now (keyword arguments of
    `FlopsModel.step_flops`): a part's weights train when any of its non-adapter parameters does."""

    def flags(*modules) -> tuple[bool, bool]:  # (weights train, adapters train)
        adapter = [is_adapter(n) for m in modules for n, p in m.named_parameters() if p.requires_grad]
        return (not all(adapter), any(adapter))

    trains = {name: flags(part) for name, part in vlm_parts(model).items()}
    return {name: weights for name, (weights, _) in trains.items()} | {
        "adapters": tuple(name for name, (_, adapters) in trains.items() if adapters)
    }


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a known accelerator name (e.g. 'NVIDIA H100 80GB HBM3'), else None."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None
