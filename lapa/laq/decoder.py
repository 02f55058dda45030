"""The LAQ decoder: frame t plus the latent action tokens -> frame t+1.

Four tokens of eight codes (12 bits) cannot describe a whole frame, so the decoder reads frame
t through its own context encoder and the tokens only modulate it (FiLM, broadcast-add or
cross-attention). The bottleneck then forces the codes to carry what changed, as in the
official LAPA and Genie models. U-Net skips and a residual output (the head predicts a change of
frame t in tanh pre-activation space, initialised to zero) make copying static content free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lapa.laq.blocks import DownStage, ResBlock, group_norm


class TokenConditioning(nn.Module):
    """Inject the action tokens [B, T, D] into a feature map [B, C, H, W].

    The projection is not zero-initialised: that would block the encoder's gradient at the start.
    """

    def __init__(self, mode: str, channels: int, num_tokens: int, embedding_dim: int):
        super().__init__()
        if mode not in ("film", "add", "cross_attention"):
            raise ValueError(f"laq.decoder.conditioning must be film, add or cross_attention, got {mode!r}")
        self.mode = mode
        if mode == "cross_attention":
            self.norm = group_norm(channels)
            self.q = nn.Linear(channels, channels)
            self.kv = nn.Linear(embedding_dim, 2 * channels)
            self.out = nn.Linear(channels, channels)
        else:
            self.out = nn.Linear(num_tokens * embedding_dim, (2 if mode == "film" else 1) * channels)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if self.mode == "cross_attention":
            b, c, h, w = x.shape
            q = self.q(self.norm(x).flatten(2).transpose(1, 2))
            k, v = self.kv(tokens).chunk(2, dim=-1)
            attended = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
            return x + self.out(attended.squeeze(1)).transpose(1, 2).reshape(b, c, h, w)
        params = self.out(F.silu(tokens.flatten(1)))[:, :, None, None]
        if self.mode == "add":
            return x + params
        gamma, beta = params.chunk(2, dim=1)
        return x * (1 + gamma) + beta


class UpStage(nn.Module):
    """Double the resolution, merge the context skip, inject the tokens, refine."""

    def __init__(self, in_ch: int, out_ch: int, skip_ch: int, num_res_blocks: int, cond: dict):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.merge = ResBlock(out_ch + skip_ch, out_ch)
        self.cond = TokenConditioning(channels=out_ch, **cond)
        self.blocks = nn.Sequential(*[ResBlock(out_ch) for _ in range(max(num_res_blocks - 1, 0))])

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, tokens: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.blocks(self.cond(self.merge(x), tokens))


class LAQDecoder(nn.Module):
    """(tokens [B,T,D], frame t [B,3,H,W] in [-1,1]) -> frame t+1 [B,3,H,W] in [-1,1] (tanh)."""

    def __init__(
        self,
        num_tokens: int = 4,
        embedding_dim: int = 256,
        base_channels: int = 32,
        channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        conditioning: str = "film",
        skip_connections: bool = True,
        residual_output: bool = True,
        out_channels: int = 3,
    ):
        super().__init__()
        self.skip_connections, self.residual_output = skip_connections, residual_output
        cond = {"mode": conditioning, "num_tokens": num_tokens, "embedding_dim": embedding_dim}
        widths = [base_channels * m for m in channel_multipliers]
        self.stem = nn.Conv2d(out_channels, base_channels, 3, padding=1)
        downs, prev = [], base_channels
        for width in widths:
            downs.append(DownStage(prev, width, num_res_blocks))
            prev = width
        self.context = nn.ModuleList(downs)
        self.mid = ResBlock(prev)
        self.mid_cond = TokenConditioning(channels=prev, **cond)
        self.mid_out = ResBlock(prev)
        # Skip i (coarse to fine) has the width of the context feature at that resolution.
        skip_widths = [base_channels, *widths[:-1]][::-1]
        ups = []
        for skip_w in skip_widths:
            ups.append(UpStage(prev, skip_w, skip_w if skip_connections else 0, num_res_blocks, cond))
            prev = skip_w
        self.ups = nn.ModuleList(ups)
        self.head = nn.Sequential(group_norm(prev), nn.SiLU(), nn.Conv2d(prev, out_channels, 3, padding=1))
        if residual_output:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, tokens: torch.Tensor, frame_t: torch.Tensor) -> torch.Tensor:
        x = self.stem(frame_t)
        skips = [x]
        for stage in self.context:
            x = stage(x)
            skips.append(x)
        skips.pop()  # the bottleneck itself
        x = self.mid_out(self.mid_cond(self.mid(x), tokens))
        for stage in self.ups:
            skip = skips.pop()
            x = stage(x, skip if self.skip_connections else None, tokens)
        out = self.head(x)
        if self.residual_output:
            out = out + torch.atanh(frame_t.clamp(-0.999, 0.999))
        return torch.tanh(out)
