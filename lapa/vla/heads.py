"""Output heads read from the hidden states at the action-query positions."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from lapa.data.action_codec import ActionStats


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


# -- decoding the binned head into continuous actions -------------------------------------------

DECODINGS = ("argmax", "expectation")
UNRECORDED_DECODING = "argmax"  # what a policy directory that records no decoding was evaluated with


def check_decoding(decoding: str, where: str = "decoding") -> str:
    """``decoding`` itself, or ValueError naming ``where`` and the choices."""
    if decoding not in DECODINGS:
        raise ValueError(f"{where} must be one of {', '.join(map(repr, DECODINGS))}, got {decoding!r}")
    return decoding


def bin_values(stats: ActionStats) -> np.ndarray:
    """The continuous action each bin decodes to, float64 [A, K] (``ActionStats.dequantize`` of every bin).

    Continuous dimensions: the bin centres; binary: the low value for the lower half of the bins,
    the high value for the upper half; constant: the constant.
    """
    bins = np.broadcast_to(np.arange(stats.num_bins)[:, None], (stats.num_bins, stats.action_dim))
    return stats.dequantize(np.ascontiguousarray(bins)).astype(np.float64).T


def expected_values(logits: Tensor, values: Tensor) -> Tensor:
    """Probability-weighted mean of ``values`` [A, K] under softmax(``logits`` [..., A, K]) -> [..., A].

    Differentiable (the L1 term of the loss uses it); computed in the dtype of ``values``.
    """
    if logits.shape[-2:] != values.shape:
        raise ValueError(
            f"logits [..., A, K] = {tuple(logits.shape)} do not match bin values {tuple(values.shape)}"
        )
    probs = torch.softmax(logits.to(values.dtype), dim=-1)
    return (probs * values).sum(-1)


def decode_actions(logits: Tensor, stats: ActionStats, decoding: str) -> np.ndarray:
    """Logits [..., A, K] -> continuous actions float32 [..., A] in the action codec's space.

    ``argmax``: the most probable bin's value (``stats.dequantize``); ``expectation``: the
    probability-weighted mean of the bins' values (``bin_values``), which lies between bins and
    does not snap to a mode. Raises ValueError for an unknown decoding or mismatched shapes.
    """
    check_decoding(decoding)
    if logits.shape[-2:] != (stats.action_dim, stats.num_bins):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} for action_dim={stats.action_dim}, "
            f"num_bins={stats.num_bins}"
        )
    logits = logits.detach().float().cpu()
    if decoding == "argmax":
        return stats.dequantize(logits.argmax(-1).numpy().astype(np.int64))
    values = torch.from_numpy(bin_values(stats))
    return expected_values(logits, values).numpy().astype(np.float32)


# -- targets that respect bin order -------------------------------------------------------------


def smoothed_targets(bins: Tensor, num_bins: int, sigma: float) -> Tensor:
    """Soft targets float32 [..., K]: a Gaussian of ``sigma`` bins around each true bin, cut at the edges.

    Each row sums to 1 and peaks at its bin; ``sigma == 0`` gives the one-hot. Raises ValueError
    for a negative sigma.
    """
    if sigma < 0:
        raise ValueError(f"label smoothing sigma must be >= 0 bins, got {sigma}")
    if sigma == 0:
        return nn.functional.one_hot(bins.long(), num_bins).float()
    grid = torch.arange(num_bins, device=bins.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * ((grid - bins.unsqueeze(-1).float()) / float(sigma)) ** 2)
    return weights / weights.sum(-1, keepdim=True)


def binned_loss(
    logits: Tensor,
    bins: Tensor,
    *,
    label_sigma: float = 0.0,
    l1_weight: float = 0.0,
    values: Tensor | None = None,
    target: Tensor | None = None,
) -> Tensor:
    """The finetuning loss on logits [B, A, K] and true bins int64 [B, A].

    Cross-entropy against ``smoothed_targets(bins, K, label_sigma)`` (plain cross-entropy at 0),
    plus ``l1_weight`` times the mean absolute difference between the expectation-decoded action
    (``expected_values(logits, values)``, values [A, K]) and ``target`` [B, A] in the same space
    (the finetuning loop passes both normalised to [-1, 1]). ``values``/``target`` are required
    when ``l1_weight > 0``.
    """
    if label_sigma == 0:
        loss = binned_cross_entropy(logits, bins)
    else:
        soft = smoothed_targets(bins, logits.shape[-1], label_sigma)
        loss = -(soft * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
    if l1_weight > 0:
        if values is None or target is None:
            raise ValueError("an L1 term on the decoded action needs the bin values and the target")
        decoded = expected_values(logits.float(), values.float())
        loss = loss + float(l1_weight) * (decoded - target.float()).abs().mean()
    return loss
