"""Output heads read from the hidden states at the action-query positions."""

from __future__ import annotations

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
