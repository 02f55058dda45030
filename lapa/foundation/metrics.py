"""Latent-action accuracy: top-1 / top-k overall and per token position, summable across ranks."""

from __future__ import annotations

import torch
from torch import Tensor


class LatentAccuracy:
    """Accumulates loss and hit counts; ``counts`` is one tensor so ranks can sum it in one all-reduce."""

    def __init__(self, num_tokens: int, vocab_size: int, ks: tuple[int, ...] = (1, 3)) -> None:
        self.num_tokens = num_tokens
        self.ks = tuple(min(k, vocab_size) for k in ks)
        self.names = tuple(f"top{k}" for k in ks)
        # layout: [loss_sum, n_samples, hits(k, position) ...]
        self.counts = torch.zeros(2 + len(ks) * num_tokens, dtype=torch.float64)

    def update(self, logits: Tensor, targets: Tensor, loss_sum: float) -> None:
        logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
        self.counts[0] += loss_sum
        self.counts[1] += targets.shape[0]
        for i, k in enumerate(self.ks):
            topk = logits.topk(k, dim=-1).indices  # [B, T, k]
            hits = (topk == targets[..., None]).any(-1).sum(0)  # [T]
            start = 2 + i * self.num_tokens
            self.counts[start : start + self.num_tokens] += hits.double()

    def compute(self, counts: Tensor | None = None) -> dict[str, float]:
        c = (self.counts if counts is None else counts).double().cpu()
        n = max(float(c[1]), 1.0)
        out = {"loss": float(c[0]) / n, "samples": float(c[1])}
        for i, name in enumerate(self.names):
            per_pos = c[2 + i * self.num_tokens : 2 + (i + 1) * self.num_tokens] / n
            out[f"{name}_acc"] = float(per_pos.mean())
            for t, v in enumerate(per_pos.tolist()):
                out[f"{name}_acc_pos{t}"] = v
        return out
