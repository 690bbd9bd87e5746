"""Give the demo's components what real ones bring: an LLM that knows the language, a ViT that sees.

Real InternVL starts from a pretrained InternViT and a pretrained LLM; stage 1 only learns the
projector between them. Random components would leave nothing to align, so the demo pretrains
each briefly on its own modality first: the LLM as a language model on plain demo text, the
ViT as a classifier of colour / shape / position / count on demo pictures (the heads are
thrown away; only the encoder is kept).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, InternVLVisionModel

from ..data.image import to_tensor
from .scenes import COLOURS, POSITIONS, SHAPES, draw_scene, random_scene


def pretrain_llm(
    llm_dir: Path,
    corpus: list[str],
    steps: int = 300,
    seq_len: int = 128,
    batch: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Next-token training on `corpus` (lines joined with the end-of-text token); saves in place."""
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(llm_dir))
    eos = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids: list[int] = []
    for line in corpus:
        ids += tok(line, add_special_tokens=False)["input_ids"] + [eos]
    stream = torch.tensor(ids)
    n_seq = len(stream) // seq_len
    data = stream[: n_seq * seq_len].view(n_seq, seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="pretrain LLM (language modelling)", leave=False):
        x = data[torch.randint(0, n_seq, (batch,), generator=g)]
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    model.save_pretrained(str(llm_dir))
    return losses


def _scene_batch(rng: random.Random, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for _ in range(n):
        s = random_scene(rng)
        images.append(to_tensor(draw_scene(s, rng, size, size), size))
        labels.append(
            [list(COLOURS).index(s.colour), SHAPES.index(s.shape), POSITIONS.index(s.position), s.count - 1]
        )
    return torch.stack(images), torch.tensor(labels)


def pretrain_vit(
    vision_dir: Path, steps: int = 300, batch: int = 32, lr: float = 2e-3, seed: int = 0
) -> list[float]:
    """Four-way classification heads (colour, shape, position, count) on mean-pooled patch features."""
    torch.manual_seed(seed)
    model = InternVLVisionModel.from_pretrained(str(vision_dir))
    size = model.config.image_size[0]
    heads = torch.nn.ModuleList(torch.nn.Linear(model.config.hidden_size, 4) for _ in range(4))
    params = list(model.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="pretrain ViT (shape/colour classification)", leave=False):
        x, y = _scene_batch(rng, batch, size)
        feats = model(pixel_values=x).last_hidden_state[:, 1:].mean(1)  # (B, C) patch average
        loss = sum(F.cross_entropy(h(feats), y[:, i]) for i, h in enumerate(heads)) / len(heads)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    model.save_pretrained(str(vision_dir))
    return losses
