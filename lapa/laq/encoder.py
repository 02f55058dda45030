"""The LAQ encoder: a frame pair (6 channels) to a continuous latent map (spec 2.1.1)."""

from __future__ import annotations

import torch
from torch import nn

from lapa.laq.blocks import DownStage


class LAQEncoder(nn.Module):
    """Strided convolutions with ResBlocks; each stage halves the resolution.

    With the spec's four stages at 224 px the latent map is 14x14.
    """

    def __init__(
        self,
        in_channels: int = 6,
        base_channels: int = 64,
        channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        latent_dim: int = 256,
    ):
        super().__init__()
        widths = [base_channels * m for m in channel_multipliers]
        stages, prev = [], in_channels
        for width in widths:
            stages.append(DownStage(prev, width, num_res_blocks))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.out = nn.Conv2d(prev, latent_dim, 3, padding=1)
        self.downsample = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.stages(x))
