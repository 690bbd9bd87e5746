"""Give the demo's components what real ones bring: an LLM that knows the language, a ViT that sees.

Real InternVL starts from a pretrained InternViT and a pretrained LLM; stage 1 only learns the
projector between them. Random components would leave nothing to align, so the demo pretrains
each briefly on its own modality first: the LLM on text-only chat, where pictures appear written
as cell words in the place their image tokens will take (`picture_words`), the ViT as a
classifier of colour / shape / position / count on demo pictures, with per-patch colour and
shape heads (the heads are thrown away; only the encoder is kept).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, InternVLVisionModel

from ..data.image import to_tensor
from ..model.config import vision_geometry
from ..tokenizer import read_tokenizer
from .picture_words import foreground
from .scenes import COLOURS, POSITIONS, SHAPES, draw_scene, random_scene


def _train(params: list[torch.nn.Parameter], loss_of_step, steps: int, lr: float, desc: str) -> list[float]:
    """AdamW + one-cycle schedule + clipping for `steps` steps of `loss_of_step()`; returns the losses."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in tqdm(range(steps), desc=desc, leave=False):
        loss = loss_of_step()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def pretrain_llm(
    llm_dir: Path,
    conversations: list[list[dict]],
    steps: int = 300,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Instruction-style training on text-only conversations (labels on the answers only); saves in place.

    Conversations are rendered with the `internvl2_5` template, as the VLM stages will render them.
    """
    from ..data.templates import tokenize

    torch.manual_seed(seed)
    tok = read_tokenizer(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir))
    encoded = [tokenize(c, tok, "internvl2_5") for c in conversations]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    g = torch.Generator().manual_seed(seed)

    def step() -> torch.Tensor:
        pick = torch.randint(0, len(encoded), (batch,), generator=g).tolist()
        length = max(len(encoded[i][0]) for i in pick)
        ids = torch.full((batch, length), pad)
        labels = torch.full((batch, length), -100)
        for row, i in enumerate(pick):  # right padding, masked out of attention and loss
            x, y = encoded[i]
            ids[row, : len(x)], labels[row, : len(y)] = x, y
        mask = (labels != -100) | (ids != pad)
        return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss

    model.train()
    losses = _train(list(model.parameters()), step, steps, lr, "pretrain LLM (text-only chat)")
    model.save_pretrained(str(llm_dir))
    return losses


def _scene_batch(
    rng: random.Random, n: int, size: int, patch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pictures, their scene labels (colour, shape, position, count) and per-patch labels.

    A patch's label is what covers most of it: background (0) or the scene's colour and shape
    (1 + index), so every patch token learns what it shows, as a real ViT's patch tokens do.
    """
    images, labels, patches = [], [], []
    for _ in range(n):
        s = random_scene(rng)
        img = draw_scene(s, rng, size, size)
        images.append(to_tensor(img, size))
        colour, shape = list(COLOURS).index(s.colour), SHAPES.index(s.shape)
        labels.append([colour, shape, POSITIONS.index(s.position), s.count - 1])
        fg = foreground(img, patch).flatten().long()  # (patches,)
        patches.append(torch.stack([fg * (1 + colour), fg * (1 + shape)], -1))
    return torch.stack(images), torch.tensor(labels), torch.stack(patches)


def pretrain_vit(
    vision_dir: Path, steps: int = 300, batch: int = 32, lr: float = 2e-3, seed: int = 0
) -> list[float]:
    """Scene heads on the CLS token (colour, shape, position, count) and per-patch heads on every
    patch token (colour and shape of what covers it); the heads are discarded afterwards."""
    torch.manual_seed(seed)
    model = InternVLVisionModel.from_pretrained(str(vision_dir))
    size, patch = vision_geometry(model.config)
    hidden = model.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(hidden, 4) for _ in range(4))
    patch_heads = torch.nn.ModuleList(torch.nn.Linear(hidden, 5) for _ in range(2))
    params = list(model.parameters()) + list(heads.parameters()) + list(patch_heads.parameters())
    rng = random.Random(seed)

    def step() -> torch.Tensor:
        x, y, yp = _scene_batch(rng, batch, size, patch)
        h = model(pixel_values=x).last_hidden_state  # (B, 1 + patches, C)
        scene = sum(F.cross_entropy(head(h[:, 0]), y[:, i]) for i, head in enumerate(heads)) / len(heads)
        dense = sum(
            F.cross_entropy(head(h[:, 1:]).flatten(0, 1), yp[..., i].flatten())
            for i, head in enumerate(patch_heads)
        )
        return scene + dense / len(patch_heads)

    model.train()
    losses = _train(params, step, steps, lr, "pretrain ViT (shape/colour recognition)")
    model.save_pretrained(str(vision_dir))
    return losses
