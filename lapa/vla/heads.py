"""Output heads read from the hidden states at the action-query positions."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentActionHead(nn.Module):
    """Per query position: LayerNorm then Linear(D -> vocab_size); [B, Q, D] -> logits [B, Q, vocab_size].

    Used with ``num_queries == num_tokens``: one query per latent token, so position q predicts token q.
    """

    def __init__(self, hidden_size: int, num_tokens: int, vocab_size: int) -> None:
        super().__init__()
        self.num_tokens = int(num_tokens)
        self.vocab_size = int(vocab_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        if hidden.shape[1] != self.num_tokens:
            raise ValueError(
                f"LatentActionHead expects {self.num_tokens} query states, got {hidden.shape[1]}"
            )
        return self.proj(self.norm(hidden))

    def info(self) -> dict:
        """What a checkpoint needs to rebuild the head (written to head.json)."""
        return {"type": "latent", "num_tokens": self.num_tokens, "vocab_size": self.vocab_size}


class ContinuousActionHead(nn.Module):
    """LayerNorm then Linear(D -> action_dim x num_bins) on the single action query's hidden state.

    Takes the action hidden states [B, 1, D] (or [B, D]) and returns logits [B, action_dim, num_bins].
    """

    def __init__(self, hidden_size: int, action_dim: int, num_bins: int = 256) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.action_dim = action_dim
        self.num_bins = num_bins
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, action_dim * num_bins)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.dim() == 3:
            if hidden.shape[1] != 1:
                raise ValueError(f"the continuous head takes one action query, got {hidden.shape[1]}")
            hidden = hidden[:, 0]
        logits = self.proj(self.norm(hidden))
        return logits.view(hidden.shape[0], self.action_dim, self.num_bins)


def binned_cross_entropy(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over batch and action dimensions; logits [B, A, K], bins int64 [B, A]."""
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), bins.reshape(-1))
