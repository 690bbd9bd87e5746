"""Drop path: linear schedule, training-only, per sample, invisible to checkpoints, checkpointing-safe."""

import pytest
import torch

from internvl_lightning.model import build_model, drop_path_schedule, install_drop_path
from internvl_lightning.model.checkpointing import enable_activation_checkpointing
from internvl_lightning.model.drop_path import DropPath, drop_path
from internvl_lightning.model.forward import image_features


def test_schedule_is_linear():
    s = drop_path_schedule(0.4, 5)
    assert s == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert drop_path_schedule(0.1, 24)[-1] == pytest.approx(0.1)


def test_drop_path_is_per_sample():
    x = torch.ones(4000, 3, 2)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    kept = per_sample[:, 0] != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert (per_sample.std(1) == 0).all()  # whole samples kept or dropped
    assert (~kept).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(drop_path(x, 0.25, training=False), x)


def test_installed_on_layers_with_config_and_same_keys(tiny_components):
    plain = build_model(*tiny_components)
    model = build_model(*tiny_components, drop_path_rate=0.3)
    layers = model.model.vision_tower.encoder.layer
    assert [layer.drop_path.p for layer in layers] == pytest.approx(drop_path_schedule(0.3, len(layers)))
    assert model.config.drop_path_rate == 0.3 and model.config.vision_config.drop_path_rate == 0.3
    assert list(model.state_dict()) == list(plain.state_dict())
    install_drop_path(model, 0.0)  # removal restores the plain model
    assert not any(isinstance(m, DropPath) for m in model.modules())
    assert not any(layer.attention._forward_hooks or layer.mlp._forward_hooks for layer in layers)


def test_changes_training_outputs_not_eval(tiny_components):
    px = torch.randn(8, 3, 64, 64)
    plain = build_model(*tiny_components)
    model = build_model(*tiny_components, drop_path_rate=0.9)
    with torch.no_grad():
        ref = plain.get_image_features(px).pooler_output
        torch.testing.assert_close(model.get_image_features(px).pooler_output, ref, rtol=0, atol=0)  # eval
        model.train()
        plain.train()
        torch.manual_seed(0)
        train = model.get_image_features(px).pooler_output
        torch.testing.assert_close(plain.get_image_features(px).pooler_output, ref, rtol=0, atol=0)
    assert not torch.allclose(train, ref)


def test_gradient_checkpointing_gives_same_gradients(tiny_components):
    px = torch.randn(4, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        model = build_model(*tiny_components, drop_path_rate=0.5).train()
        if checkpointing:
            enable_activation_checkpointing(model.model.vision_tower)
        torch.manual_seed(123)
        image_features(model, px).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.model.vision_tower.named_parameters()})
    assert model.model.vision_tower.encoder.layer[0].gradient_checkpointing
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)
