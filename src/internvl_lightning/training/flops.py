"""Model FLOPs of one training step, for MFU.

Formula (Kaplan et al. 2020, "Scaling Laws", Table 1; PaLM, Chowdhery et al. 2022, App. B):
a forward pass costs 2 FLOPs per parameter per token plus attention scores, and training
(forward + backward) costs 3x the forward:
    dense:      6 * N * tokens
    attention:  12 * n_layers * d_model * sum_s(T_s^2)   (QK^T and AV, 2*T^2*d each, x3)
We count full (non-causal) T^2 like PaLM does, and sum per packed sample because samples do
not attend to each other. The ViT adds the same terms over its patch tokens (+CLS) per tile,
and the projector 6 * N_mlp per visual token. MFU uses these *model* FLOPs whatever is frozen
(frozen weights skip their weight-gradient matmuls, so MFU of stage 1 understates hardware use).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model.presets import tokens_per_tile

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
        image = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
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

    def step_flops(self, tokens: int, sample_lengths: list[int], tiles: int) -> float:
        """Training FLOPs for `tokens` LLM tokens (samples of the given lengths) and `tiles` ViT tiles."""
        llm = 6 * self.llm_params * tokens + 12 * self.llm_layers * self.llm_hidden * sum(
            t * t for t in sample_lengths
        )
        v = self.vit_tokens_per_tile
        vit = tiles * (6 * self.vit_params * v + 12 * self.vit_layers * self.vit_hidden * v * v)
        mlp = tiles * 6 * self.mlp_params * self.llm_tokens_per_tile
        return float(llm + vit + mlp)


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a known accelerator name (e.g. 'NVIDIA H100 80GB HBM3'), else None."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None
