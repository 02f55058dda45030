"""Image transforms on uint8 tensors: normalisation for models, training augmentations for loaders.

Augmentations draw their parameters once per sample and apply them to every frame of it: a crop
or colour change that differed between frame t and t+k would invent motion.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch

from lapa.data.images import resize_square

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def normalize(
    batch_uint8: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 [...,3,H,W] to float32 ``(x/255 - mean) / std``; models call this per batch on their device."""
    x = batch_uint8.float().div_(255.0)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x.sub_(m).div_(s)


def to_unit_range(batch_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 to float32 in [-1, 1] (the LAQ convention)."""
    return batch_uint8.float().div_(127.5).sub_(1.0)


def resize_uint8(frames: torch.Tensor, size: int, *, contiguous: bool = True) -> torch.Tensor:
    """Resize uint8 [N,3,H,W] to size x size with lapa's one resampler (``lapa.data.images``);
    returns the input when already there. ``contiguous=False`` may return a channels-last layout."""
    return resize_square(frames, size, contiguous=contiguous)


class FrameAugment:
    """Random resized crop (mild scale), colour jitter and optional flip, identical across the frames given.

    Works on uint8 [N,3,H,W] (N frames of one sample, any memory layout) and returns uint8
    [N,3,size,size]: contiguous when colour jitter is on, else possibly in the resampler's
    channels-last layout (same values; a loader's collate copies it into the batch anyway).
    """

    def __init__(self, size: int, *, scale: float = 0.9, jitter: float = 0.1, flip: bool = False):
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"data.loader.random_resized_crop_scale must be in (0, 1], got {scale}")
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"data.loader.color_jitter must be in [0, 1), got {jitter}")
        self.size, self.scale, self.jitter, self.flip = size, scale, jitter, flip

    def __call__(self, frames: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, bool]:
        """Returns (frames, flipped)."""
        _, _, h, w = frames.shape
        if self.scale < 1.0:
            area = rng.uniform(self.scale, 1.0)
            ratio = rng.uniform(0.9, 1.1)  # mild aspect change: shapes stay recognisable
            ch = min(h, max(1, round((area * h * w / ratio) ** 0.5)))
            cw = min(w, max(1, round((area * h * w * ratio) ** 0.5)))
            top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
            frames = frames[:, :, top : top + ch, left : left + cw]
        frames = resize_uint8(frames, self.size, contiguous=False)
        if self.jitter > 0:
            frames = self._jitter(frames, rng)
        flipped = bool(self.flip and rng.random() < 0.5)
        if flipped:
            frames = frames.flip(-1)
        return frames, flipped

    def _jitter(self, frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Brightness, contrast and saturation folded into one affine map of (pixel, grey) per sample."""
        j = self.jitter
        b, c, s = (rng.uniform(1 - j, 1 + j) for _ in range(3))
        # one pass from the resampler's channels-last uint8 to contiguous float (no uint8 copy first)
        x = torch.empty(frames.shape, dtype=torch.float32).copy_(frames)
        n, _, h, w = x.shape
        gray = (_LUMA @ x.view(n, 3, h * w)).view(n, 1, h, w)
        mean = float(gray.mean())  # one contrast pivot for all frames of the sample keeps them consistent
        # saturation(contrast(brightness(x))) == s*c*b * x + c*b*(1-s) * gray + b*(1-c) * mean
        x.mul_(s * c * b).add_(gray, alpha=c * b * (1 - s)).add_(b * (1 - c) * mean + 0.5)
        # numpy's cast truncates exactly as torch's .to(torch.uint8) on [0, 255] and is several times faster
        return torch.from_numpy(x.clamp_(0, 255).numpy().astype(np.uint8))
