"""pixel_shuffle: v2 equals transformers' InternVLModel.pixel_shuffle; v1 is its transpose."""

import pytest
import torch
from transformers.models.internvl.modeling_internvl import InternVLModel

from internvl_lightning.model import pixel_shuffle


def hf_pixel_shuffle(x, scale_factor):
    # The method does not use `self`; call it unbound to avoid building a model.
    return InternVLModel.pixel_shuffle(None, x, scale_factor=scale_factor)


@pytest.mark.parametrize(
    "shape,s", [((2, 8, 8, 6), 0.5), ((1, 32, 32, 4), 0.5), ((3, 8, 8, 2), 0.25), ((2, 4, 8, 3), 0.5)]
)
def test_v2_matches_transformers(shape, s):
    x = torch.randn(shape)
    ours = pixel_shuffle(x, s, "v2")
    f = round(1 / s)
    assert ours.shape == (shape[0], shape[1] // f, shape[2] // f, shape[3] * f * f)
    torch.testing.assert_close(ours, hf_pixel_shuffle(x, s), rtol=0, atol=0)


def test_v2_groups_2x2_blocks_row_major():
    x = torch.randn(1, 4, 6, 3)
    out = pixel_shuffle(x)
    for r in range(2):
        for c in range(3):
            block = [
                x[0, 2 * r, 2 * c],
                x[0, 2 * r, 2 * c + 1],
                x[0, 2 * r + 1, 2 * c],
                x[0, 2 * r + 1, 2 * c + 1],
            ]
            assert torch.equal(out[0, r, c], torch.cat(block))


def test_v1_is_v2_with_transposed_grid():
    x = torch.randn(2, 8, 8, 5)
    v1, v2 = pixel_shuffle(x, 0.5, "v1"), pixel_shuffle(x, 0.5, "v2")
    assert torch.equal(v1, v2.transpose(1, 2))
    assert not torch.equal(v1, v2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="not divisible"):
        pixel_shuffle(torch.randn(1, 5, 4, 2))
    with pytest.raises(ValueError, match="unknown pixel shuffle version"):
        pixel_shuffle(torch.randn(1, 4, 4, 2), version="v3")
