"""Preprocessing shared by training and the deployed policy: images to uint8 SxS, text to ids.

Keeping one implementation for both is what guarantees the policy sees what training saw.
Normalisation is not done here: the vision towers normalise uint8 input with their own statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lapa.data.images import resize_crop, to_uint8_rgb

log = logging.getLogger(__name__)


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """uint8 [B,3,H,W] -> uint8 [B,3,size,size]: shorter side to ``size``, centre crop (one resampler)."""
    return resize_crop(images, size, size)


def _to_chw_uint8(image: Any) -> Tensor:
    """One image (numpy/tensor HWC or CHW, PIL; uint8, uint16 or float in [0, 1]) -> uint8 [3,H,W]."""
    return torch.from_numpy(to_uint8_rgb(image)).permute(2, 0, 1)


class VLAProcessor:
    """Turns raw observations and instructions into VLAModel inputs.

    Returns ``images`` uint8 [B,3,S,S], ``input_ids`` [B,L] (BOS then the instruction's tokens,
    at most ``max_text_tokens`` of them, right-padded) and ``attention_mask`` [B,L].
    """

    def __init__(self, tokenizer: Any, image_size: int, max_text_tokens: int) -> None:
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no BOS token")
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.max_text_tokens = int(max_text_tokens)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad)
        self.bos_token_id = int(tokenizer.bos_token_id)
        self.truncated = 0  # instructions cut to max_text_tokens so far (warned about once)

    def images(self, images: Any) -> Tensor:
        if isinstance(images, Tensor) and images.ndim == 4:
            batch = images
        elif isinstance(images, np.ndarray) and images.ndim == 4:  # [B,H,W,C]
            batch = torch.stack([_to_chw_uint8(im) for im in images])
        else:
            items = [images] if not isinstance(images, Sequence) else list(images)
            tensors = [_to_chw_uint8(im) for im in items]
            if len({tuple(t.shape) for t in tensors}) > 1:
                return torch.stack([resize_center_crop(t[None], self.image_size)[0] for t in tensors])
            batch = torch.stack(tensors)
        if batch.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {batch.dtype}")
        if batch.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W], got {tuple(batch.shape)}")
        return resize_center_crop(batch, self.image_size)

    def text(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        long = sum(len(ids) > self.max_text_tokens for ids in encoded)
        if long:
            if not self.truncated:
                log.warning("instructions longer than max_text_tokens=%d are truncated", self.max_text_tokens)
            self.truncated += long
        rows = [[self.bos_token_id, *ids[: self.max_text_tokens]] for ids in encoded]
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        return input_ids, attention_mask

    def __call__(self, images: Any, texts: Sequence[str]) -> dict[str, Tensor]:
        pixel = self.images(images)
        input_ids, attention_mask = self.text(texts)
        if pixel.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel.shape[0]} images but {input_ids.shape[0]} instructions")
        return {"images": pixel, "input_ids": input_ids, "attention_mask": attention_mask}
