"""Latent-action accuracy: top-1 / top-k overall and per token position, beside chance; summable."""

from __future__ import annotations

import torch
from torch import Tensor


class LatentAccuracy:
    """Accumulates loss, hit counts and target histograms; ``counts`` is one float64 tensor so ranks
    can sum it in one all-reduce.

    Chance levels come with every accuracy: ``top{k}_uniform`` = k / vocab (guessing), and
    ``top{k}_majority`` = the rate of always predicting the k commonest codes of each position in
    the validated targets (per position ``top{k}_majority_pos{t}``, averaged over positions).
    """

    def __init__(self, num_tokens: int, vocab_size: int, ks: tuple[int, ...] = (1, 3)) -> None:
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        self.ks = tuple(min(k, vocab_size) for k in ks)
        self.names = tuple(f"top{k}" for k in ks)
        # layout: [loss_sum, n_samples, hits(k, position) ..., target histogram (position, code) ...]
        self._hist_start = 2 + len(ks) * num_tokens
        self.counts = torch.zeros(self._hist_start + num_tokens * vocab_size, dtype=torch.float64)

    def update(self, logits: Tensor, targets: Tensor, loss_sum: float) -> None:
        """``logits`` [B, T, V], ``targets`` int [B, T], ``loss_sum`` the batch's summed per-sample loss."""
        logits, targets = logits.detach().float().cpu(), targets.detach().cpu().long()
        self.counts[0] += loss_sum
        self.counts[1] += targets.shape[0]
        for i, k in enumerate(self.ks):
            topk = logits.topk(k, dim=-1).indices  # [B, T, k]
            hits = (topk == targets[..., None]).any(-1).sum(0)  # [T]
            start = 2 + i * self.num_tokens
            self.counts[start : start + self.num_tokens] += hits.double()
        cells = (torch.arange(self.num_tokens) * self.vocab_size + targets).flatten()
        hist = torch.bincount(cells, minlength=self.num_tokens * self.vocab_size)
        self.counts[self._hist_start :] += hist.double()

    def compute(self, counts: Tensor | None = None) -> dict[str, float]:
        c = (self.counts if counts is None else counts).double().cpu()
        n = max(float(c[1]), 1.0)
        out = {"loss": float(c[0]) / n, "samples": float(c[1])}
        hist = c[self._hist_start :].view(self.num_tokens, self.vocab_size)
        ranked = hist.sort(dim=-1, descending=True).values
        for i, (name, k) in enumerate(zip(self.names, self.ks)):
            per_pos = c[2 + i * self.num_tokens : 2 + (i + 1) * self.num_tokens] / n
            out[f"{name}_acc"] = float(per_pos.mean())
            for t, v in enumerate(per_pos.tolist()):
                out[f"{name}_acc_pos{t}"] = v
            majority = ranked[:, :k].sum(-1) / n
            out[f"{name}_majority"] = float(majority.mean())
            for t, v in enumerate(majority.tolist()):
                out[f"{name}_majority_pos{t}"] = v
            out[f"{name}_uniform"] = k / self.vocab_size
        return out
