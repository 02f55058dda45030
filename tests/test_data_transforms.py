"""uint8 transforms: normalisation, resizing, augmentations identical across the frames of a sample."""

from __future__ import annotations

import random

import pytest
import torch

from lapa.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrameAugment,
    normalize,
    resize_uint8,
    to_unit_range,
)


def test_normalize_matches_the_formula():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = normalize(x)
    ref = (x.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1
    )
    assert out.dtype == torch.float32 and torch.allclose(out, ref, atol=1e-6)
    assert x.dtype == torch.uint8  # the input is not modified
    siglip = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert siglip.min() >= -1 and siglip.max() <= 1
    unit = to_unit_range(torch.tensor([0, 255], dtype=torch.uint8))
    assert unit.tolist() == [-1.0, 1.0]


def test_resize_uint8():
    x = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)
    assert resize_uint8(x, 16).shape == (2, 3, 16, 16) and resize_uint8(x, 16).dtype == torch.uint8
    same = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    assert resize_uint8(same, 16) is same


@pytest.mark.parametrize("flip", [False, True])
def test_augment_applies_the_same_parameters_to_all_frames(flip):
    frame = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    frames = torch.stack([frame, frame])
    aug = FrameAugment(32, scale=0.5, jitter=0.4, flip=flip)
    outs = [aug(frames, random.Random(seed)) for seed in range(20)]
    for out, _ in outs:
        assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
        assert torch.equal(out[0], out[1])  # identical inputs stay identical: no invented motion
    assert len({out[0].sum().item() for out, _ in outs}) > 10  # but they do vary between samples
    assert any(f for _, f in outs) == flip


def test_augment_rejects_bad_settings():
    with pytest.raises(ValueError, match="random_resized_crop_scale"):
        FrameAugment(32, scale=0.0)
    with pytest.raises(ValueError, match="color_jitter"):
        FrameAugment(32, jitter=1.5)
