"""Chunked, logits-free loss against the plain full-logits computation."""

import pytest
import torch
import torch.nn.functional as F

from internvl_lightning.data.accumulate import StepWindow, batch_weight_sum
from internvl_lightning.training.loss import chunked_token_ce, per_sample_losses, weighted_loss
from internvl_lightning.training.optim import cosine_with_warmup, param_groups, warmup_steps_from


def _setup(seed=0, B=2, L=23, D=16, V=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, D, generator=g, requires_grad=True)
    head = torch.nn.Linear(D, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g))
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[torch.rand(B, L, generator=g) < 0.3] = -100
    weights = torch.rand(B, L, generator=g) * (labels != -100)
    return hidden, head, labels, weights


def test_only_labelled_positions_get_logits():
    hidden, head, labels, weights = _setup()
    ce, w, idx = chunked_token_ce(hidden, head, labels, weights)
    n_trained = int(((labels[:, 1:] != -100) & (weights[:, 1:] > 0)).sum())
    assert ce.shape == w.shape == idx.shape == (n_trained,)


def test_explicit_denominator_scales_loss():
    hidden, head, labels, weights = _setup()
    loss, wsum = weighted_loss(hidden, head, labels, weights)
    loss2, _ = weighted_loss(hidden, head, labels, weights, denominator=2 * wsum)
    torch.testing.assert_close(loss2, loss / 2)


def test_per_sample_losses_match_token_means():
    hidden, head, labels, _ = _setup(B=1, L=30)
    sample_index = torch.tensor([[0] * 10 + [1] * 12 + [2] * 8])
    labels[0, [0, 10, 22]] = -100
    got = per_sample_losses(hidden, head, labels, sample_index)
    logits = head(hidden)[0]
    for s, (a, b) in {0: (0, 10), 1: (10, 22), 2: (22, 30)}.items():
        tgt = labels[0, a + 1 : b]
        keep = tgt != -100
        ref = F.cross_entropy(logits[a : b - 1][keep], tgt[keep])
        torch.testing.assert_close(got[s], ref)


def test_step_window_sum_makes_accumulation_exact():
    batches = []
    for seed in range(4):
        h, head, labels, w = _setup(seed=seed, B=1)
        batches.append({"labels": labels, "loss_weight": w, "stats": {}})
    out = list(StepWindow(batches, steps=lambda: 2))
    assert len(out) == 4
    for k in (0, 2):
        expect = batch_weight_sum(batches[k]) + batch_weight_sum(batches[k + 1])
        assert out[k]["stats"]["step_weight_sum"] == pytest.approx(expect)
        assert out[k + 1]["stats"]["step_weight_sum"] == pytest.approx(expect)


def test_cosine_schedule_shape():
    assert warmup_steps_from(0.03, 1000) == 30
    assert warmup_steps_from(100, 1000) == 100
    assert cosine_with_warmup(0, 10, 100) == 0.0
    assert cosine_with_warmup(5, 10, 100) == pytest.approx(0.5)
    assert cosine_with_warmup(10, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 10, 100) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 10, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        warmup_steps_from(-1, 10)


def test_no_weight_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model, 0.05)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(model[0].weight)}
    assert no_decay == {id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[2].bias)}
    assert groups[1]["weight_decay"] == 0.0
