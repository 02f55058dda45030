"""Vision features -> language-model embeddings (spec 2.2.1)."""

from __future__ import annotations

from torch import Tensor, nn


class Projector(nn.Module):
    """LayerNorm, Linear, GELU, Linear, LayerNorm: [B, N, in_dim] -> [B, N, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
