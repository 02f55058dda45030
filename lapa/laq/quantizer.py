"""Latent map -> ``num_tokens`` discrete latent actions (spec 2.1.1).

Codebook collapse (every sample mapped to one code) is the known failure of VQ latent-action
models; the quantizer counters it with a low-dimensional, l2-normalised lookup, k-means
initialisation on the first batch and restarts of codes left unused for a window of steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class TokenPooling(nn.Module):
    """[B, C, h, w] -> [B, num_tokens, embedding_dim].

    ``attention``: learned queries attend over the positions; ``average``: global average then a
    per-token projection; ``linear``: one learned projection of the flattened map.
    """

    def __init__(
        self,
        mode: str,
        latent_dim: int,
        grid_size: int,
        num_tokens: int,
        embedding_dim: int,
        heads: int = 4,
    ):
        super().__init__()
        if mode not in ("attention", "average", "linear"):
            raise ValueError(f"laq.quantizer.pooling must be attention, average or linear, got {mode!r}")
        self.mode, self.num_tokens, self.embedding_dim = mode, num_tokens, embedding_dim
        if mode == "attention":
            if latent_dim % heads:
                raise ValueError(f"laq.quantizer.attention_heads={heads} must divide latent_dim={latent_dim}")
            self.queries = nn.Parameter(torch.randn(num_tokens, latent_dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(grid_size * grid_size, latent_dim) * 0.02)
            self.norm = nn.LayerNorm(latent_dim)
            self.attn = nn.MultiheadAttention(latent_dim, heads, batch_first=True)
            self.proj = nn.Linear(latent_dim, embedding_dim)
        elif mode == "average":
            self.proj = nn.Linear(latent_dim, num_tokens * embedding_dim)
        else:
            self.proj = nn.Linear(latent_dim * grid_size * grid_size, num_tokens * embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if self.mode == "attention":
            seq = self.norm(x.flatten(2).transpose(1, 2) + self.pos)
            out, _ = self.attn(self.queries.expand(b, -1, -1), seq, seq, need_weights=False)
            return self.proj(out)
        if self.mode == "average":
            return self.proj(x.mean(dim=(2, 3))).view(b, self.num_tokens, self.embedding_dim)
        return self.proj(x.flatten(1)).view(b, self.num_tokens, self.embedding_dim)


class VectorQuantizer(nn.Module):
    """One codebook of ``vocab_size`` entries per token position; straight-through gradients.

    Returns ``(quantized [B,T,D], indices [B,T] int64, {"codebook", "commitment", "entropy"})``;
    the losses are unweighted (the model applies ``beta`` and ``entropy_weight``).
    """

    def __init__(
        self,
        num_tokens: int = 4,
        vocab_size: int = 8,
        embedding_dim: int = 256,
        beta: float = 0.25,
        lookup_dim: int | None = None,
        l2_normalize: bool = True,
        ema: bool = False,
        ema_decay: float = 0.99,
        kmeans_init: bool = True,
        dead_code_restart: bool = True,
        dead_code_window: int = 100,
        commitment_warmup_steps: int = 0,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.1,
        **_unused,
    ):
        super().__init__()
        self.num_tokens, self.vocab_size, self.embedding_dim = num_tokens, vocab_size, embedding_dim
        self.beta, self.l2_normalize = beta, l2_normalize
        self.ema, self.ema_decay = ema, ema_decay
        self.kmeans_init, self.dead_code_restart, self.dead_code_window = (
            kmeans_init,
            dead_code_restart,
            dead_code_window,
        )
        self.commitment_warmup_steps = commitment_warmup_steps
        self.entropy_weight, self.entropy_temperature = float(entropy_weight), float(entropy_temperature)
        self.lookup_dim = lookup_dim or embedding_dim
        low = self.lookup_dim != embedding_dim
        self.in_proj = nn.Linear(embedding_dim, self.lookup_dim) if low else nn.Identity()
        self.out_proj = nn.Linear(self.lookup_dim, embedding_dim) if low else nn.Identity()
        codebook = torch.randn(num_tokens, vocab_size, self.lookup_dim)
        if l2_normalize:
            codebook = F.normalize(codebook, dim=-1)
        self.codebook = nn.Parameter(codebook, requires_grad=not ema)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("unused_steps", torch.zeros(num_tokens, vocab_size, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long))
        if ema:
            self.register_buffer("ema_count", torch.ones(num_tokens, vocab_size))
            self.register_buffer("ema_sum", codebook.clone())

    def commitment_weight(self) -> float:
        """``beta``, ramped up from 0 over the warm-up: early on, while the decoder still ignores the
        codes, a full-weight commitment loss pulls every encoder output onto one code (collapse)."""
        if self.commitment_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, int(self.step) / self.commitment_warmup_steps)

    def codes(self) -> torch.Tensor:
        """The lookup vectors [T, V, L] as used for the nearest-code search."""
        return F.normalize(self.codebook, dim=-1) if self.l2_normalize else self.codebook

    def _generator(self, salt: int) -> torch.Generator:
        # Randomness keyed to the step, not the global RNG: identical after a resume.
        return torch.Generator().manual_seed(int(self.step.item()) * 1009 + salt)

    def lookup(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project and (optionally) normalise ``z`` [B,T,D]; return (z_lookup [B,T,L], indices [B,T])."""
        zl, dist_sq = self._distances(z)
        return zl, dist_sq.argmin(-1)

    def _distances(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zl = self.in_proj(z)
        if self.l2_normalize:
            zl = F.normalize(zl, dim=-1)
        codes = self.codes().to(zl.dtype)
        dist_sq = (
            zl.pow(2).sum(-1, keepdim=True)
            - 2 * torch.einsum("btl,tvl->btv", zl, codes)
            + codes.pow(2).sum(-1).unsqueeze(0)
        )
        return zl, dist_sq

    def usage_entropy_loss(self, dist_sq: torch.Tensor) -> torch.Tensor:
        """Per-sample assignment entropy minus the batch's code-usage entropy (soft assignments).

        Minimising it makes each pair pick one code confidently while the batch spreads over all
        codes of every position. When the decoder can predict much of frame t+1 from frame t, the
        reconstruction alone gives the encoder little reason to separate pairs, and its outputs
        (and so the codes) collapse to one; this term keeps them apart until the decoder relies on them.
        """
        probs = torch.softmax(-dist_sq.float() / self.entropy_temperature, dim=-1)  # [B, T, V]
        per_sample = -(probs * torch.log(probs + 1e-9)).sum(-1).mean()
        usage = probs.mean(0)  # [T, V]
        batch = -(usage * torch.log(usage + 1e-9)).sum(-1).mean()
        return per_sample - batch

    @torch.no_grad()
    def indices(self, z: torch.Tensor) -> torch.Tensor:
        return self.lookup(z)[1]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if z.dim() != 3 or z.shape[1] != self.num_tokens or z.shape[2] != self.embedding_dim:
            raise ValueError(
                f"quantizer expects [B, {self.num_tokens}, {self.embedding_dim}], got {tuple(z.shape)}"
            )
        if self.training and not bool(self.initialized):
            self._kmeans_init(self.in_proj(z).detach())
        zl, dist_sq = self._distances(z)
        idx = dist_sq.argmin(-1)
        if self.training:
            self._update(zl.detach().float(), idx)
        entropy = self.usage_entropy_loss(dist_sq) if self.entropy_weight > 0 else zl.new_zeros(())
        codes = self.codes()
        t_index = torch.arange(self.num_tokens, device=z.device).unsqueeze(0)
        e = codes[t_index, idx].to(zl.dtype)  # [B, T, L]
        codebook_loss = zl.new_zeros(()) if self.ema else F.mse_loss(e, zl.detach())
        commitment_loss = F.mse_loss(zl, e.detach())
        quantized = zl + (e - zl).detach()
        losses = {"codebook": codebook_loss, "commitment": commitment_loss, "entropy": entropy}
        return self.out_proj(quantized), idx, losses

    # -- codebook maintenance (training only) ---------------------------------------------------

    @torch.no_grad()
    def _kmeans_init(self, zl: torch.Tensor, iters: int = 10) -> None:
        if self.l2_normalize:
            zl = F.normalize(zl, dim=-1)
        zl = zl.float()
        gen = self._generator(salt=1)
        new = torch.empty_like(self.codebook.data, dtype=torch.float32)
        b = zl.shape[0]
        for t in range(self.num_tokens):
            x = zl[:, t]
            centers = x[torch.randint(0, b, (self.vocab_size,), generator=gen).to(x.device)].clone()
            for _ in range(iters):
                assign = torch.cdist(x, centers).argmin(-1)
                onehot = F.one_hot(assign, self.vocab_size).to(x.dtype)
                counts = onehot.sum(0)
                sums = onehot.T @ x
                filled = counts > 0
                centers[filled] = sums[filled] / counts[filled].unsqueeze(-1)
            new[t] = centers
        if self.l2_normalize:
            new = F.normalize(new, dim=-1)
        if _distributed():
            dist.broadcast(new, src=0)
        self._set_codebook(new)
        if self.ema:
            self.ema_sum.copy_(new)
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _update(self, zl: torch.Tensor, idx: torch.Tensor) -> None:
        onehot = F.one_hot(idx, self.vocab_size).float()  # [B, T, V]
        counts = onehot.sum(0)
        sums = torch.einsum("btv,btl->tvl", onehot, zl) if self.ema else None
        if _distributed():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        if self.ema:
            self.ema_count.mul_(self.ema_decay).add_(counts, alpha=1 - self.ema_decay)
            self.ema_sum.mul_(self.ema_decay).add_(sums, alpha=1 - self.ema_decay)
            n = self.ema_count.sum(-1, keepdim=True)
            smoothed = (self.ema_count + 1e-5) / (n + self.vocab_size * 1e-5) * n
            self._set_codebook(self.ema_sum / smoothed.unsqueeze(-1))
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        self.step.add_(1)
        if self.dead_code_restart:
            dead = self.unused_steps >= self.dead_code_window
            if bool(dead.any()):
                self._restart(zl, idx, dead)

    @torch.no_grad()
    def _restart(self, zl: torch.Tensor, idx: torch.Tensor, dead: torch.Tensor) -> None:
        """Reseed dead codes on this batch's worst-quantized encoder outputs (rank 0's, broadcast).

        The worst-served samples are the ones a merged code lumps together: a new code there splits it.
        """
        gen = self._generator(salt=2)
        new = self.codes().detach().float().clone()
        t_index = torch.arange(self.num_tokens, device=zl.device).unsqueeze(0)
        error = (zl - new[t_index, idx]).pow(2).sum(-1)  # [B, T]
        for t in range(self.num_tokens):
            dead_v = dead[t].nonzero().flatten().tolist()
            if not dead_v:
                continue
            order = error[:, t].argsort(descending=True).tolist()
            for j, v in enumerate(dead_v):
                pick = order[j % len(order)]
                noise = torch.randn(self.lookup_dim, generator=gen).to(zl.device) * 0.01
                new[t, v] = zl[pick, t] + noise
        if self.l2_normalize:
            new = F.normalize(new, dim=-1)
        if _distributed():
            dist.broadcast(new, src=0)
        self._set_codebook(new)
        if self.ema:
            self.ema_sum[dead] = new[dead]
            self.ema_count[dead] = 1.0
        self.unused_steps.masked_fill_(dead, 0)
        self.restarts.add_(int(dead.sum()))

    def _set_codebook(self, value: torch.Tensor) -> None:
        self.codebook.data.copy_(value.to(self.codebook.dtype))
