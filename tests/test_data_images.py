"""The one image module: any image to uint8 RGB, one resampler everywhere, display orientation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lapa.config.data import ShardingConfig
from lapa.data.build import build_shards
from lapa.data.codec import decode_jpeg
from lapa.data.images import (
    RESAMPLER,
    ImageFormatError,
    display_rotation,
    orient,
    resize_crop,
    resize_square,
    to_uint8_rgb,
)
from lapa.data.shard_reader import iter_samples, list_shards

torch.set_num_threads(1)


def test_uint8_layouts_pass_through():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert to_uint8_rgb(rgb) is not None and np.array_equal(to_uint8_rgb(rgb), rgb)
    assert np.array_equal(to_uint8_rgb(rgb.transpose(2, 0, 1)), rgb)  # CHW
    assert np.array_equal(to_uint8_rgb(torch.from_numpy(rgb).permute(2, 0, 1)), rgb)  # CHW tensor
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=-1)
    assert np.array_equal(to_uint8_rgb(rgba), rgb)
    grey = rgb[..., 0]
    assert np.array_equal(to_uint8_rgb(grey), np.repeat(grey[..., None], 3, -1))
    assert np.array_equal(to_uint8_rgb(Image.fromarray(rgb)), rgb)
    assert np.array_equal(to_uint8_rgb(Image.fromarray(rgba)), rgb)


def test_16_bit_and_float_are_scaled_not_saturated(tmp_path):
    levels = np.array([[0, 257 * 10, 257 * 128, 65535]], dtype=np.uint16)  # 0, 10, 128, 255 in 8 bits
    assert to_uint8_rgb(levels)[0, :, 0].tolist() == [0, 10, 128, 255]
    png = tmp_path / "depth.png"
    Image.fromarray(levels).save(png)
    with Image.open(png) as img:
        assert img.mode.startswith("I")  # a 16-bit PNG: 'I;16' (or 'I' in older Pillow)
        assert to_uint8_rgb(img)[0, :, 1].tolist() == [0, 10, 128, 255]
    assert to_uint8_rgb(Image.fromarray(levels.astype(np.int32), mode="I"))[0, :, 2].tolist() == [
        0,
        10,
        128,
        255,
    ]
    floats = np.array([[0.0, 10 / 255, 0.5, 1.0]], dtype=np.float32)
    assert to_uint8_rgb(floats)[0, :, 0].tolist() == [0, 10, 128, 255]
    assert to_uint8_rgb(Image.fromarray(floats, mode="F"))[0, :, 0].tolist() == [0, 10, 128, 255]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((4, 4, 3), 200.0, np.float32), r"float image must hold values in \[0, 1\]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "unsupported image dtype int64"),
        (np.zeros((4, 4, 3), bool), "unsupported image dtype bool"),
        (np.zeros((5, 5, 5), np.uint8), "1 .grey., 3 .RGB. or 4 .RGBA. channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "HWC, CHW or HW"),
        (np.zeros((0, 4, 3), np.uint8), "empty image"),
        ("not an image", "unsupported image type str"),
        (Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I"), "outside 16 bits"),
    ],
)
def test_refusals_are_clear(image, message):
    with pytest.raises(ImageFormatError, match=message) as info:
        to_uint8_rgb(image)
    assert isinstance(info.value, ValueError)


def test_one_resampler_for_shards_loader_and_processor():
    from lapa.vla.processor import VLAProcessor, resize_center_crop

    rng = np.random.default_rng(1)
    camera = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    as_hwc = resize_crop(camera, 64, 64)
    as_chw = resize_crop(torch.from_numpy(camera).permute(2, 0, 1)[None], 64, 64)[0]
    assert as_hwc.shape == (64, 64, 3)
    assert np.array_equal(as_chw.permute(1, 2, 0).numpy(), as_hwc)  # numpy and torch paths agree exactly
    assert torch.equal(resize_center_crop(torch.from_numpy(camera).permute(2, 0, 1)[None], 64)[0], as_chw)

    from lapa.vla.tokenizer import train_llama_tokenizer

    processor = VLAProcessor(train_llama_tokenizer(["pick up the block"] * 8, 300), 64, 8)
    assert torch.equal(processor.images([camera])[0], as_chw)
    # the processor now takes 16-bit frames too, scaled the same way
    wide = camera.astype(np.uint16) * 257
    assert torch.equal(processor.images([wide])[0], as_chw)
    square = torch.from_numpy(as_hwc).permute(2, 0, 1)[None]
    assert resize_square(square, 32).shape == (1, 3, 32, 32)
    assert RESAMPLER == "bilinear-antialias"


def test_display_matrix_orientation():
    image = np.zeros((2, 3, 1), np.uint8)
    image[0, 0] = 1  # top-left
    image[0, 2] = 2  # top-right
    # FFmpeg's matrix for "rotate=90" (PyAV: set_display_rotation(-90), frame.rotation -90)
    clockwise = [0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30]
    assert display_rotation(clockwise) == (90, False, False)
    out = orient(image, clockwise)
    assert out.shape == (3, 2, 1)
    assert out[0, 1, 0] == 1 and out[2, 1, 0] == 2  # top-left went top-right, top-right bottom-right
    counter = [0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30]
    assert display_rotation(counter) == (270, False, False)
    assert orient(image, counter)[2, 0, 0] == 1
    half = [-65536, 0, 0, 0, -65536, 0, 0, 0, 1 << 30]
    assert np.array_equal(orient(image, half), image[::-1, ::-1])
    assert orient(image, None) is image
    with pytest.raises(ValueError, match="not a multiple of 90"):
        display_rotation([46341, 46341, 0, -46341, 46341, 0, 0, 0, 1 << 30])


def test_16_bit_image_folder_is_scaled(tmp_path):
    """A folder of 16-bit PNGs (depth-camera style) gives 8-bit frames at the right level."""
    seq = tmp_path / "depth_seq"
    seq.mkdir()
    for i, level in enumerate([2000, 30000, 60000]):
        Image.fromarray(np.full((32, 32), level, np.uint16)).save(seq / f"{i}.png")
    cfg = ShardingConfig(fps=None, resize=32, crop=32, val_fraction=0.0, workers=1)
    build_shards("pairs", [str(seq)], tmp_path / "pairs", cfg, progress=False)
    samples = list(iter_samples(list_shards(tmp_path / "pairs", "train")))
    grey = [float(decode_jpeg(s["t.jpg"]).mean()) for s in samples] + [
        float(decode_jpeg(samples[-1]["t1.jpg"]).mean())
    ]
    expected = [round(level * 255 / 65535) for level in (2000, 30000, 60000)]
    assert np.allclose(grey, expected, atol=1.0), (grey, expected)
