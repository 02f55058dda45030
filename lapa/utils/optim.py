"""AdamW parameter groups and the warmup + cosine schedule, from a ``TrainingConfig`` (every stage)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lapa.utils.schedule import warmup_cosine_scheduler

# no weight decay on these (besides every parameter with fewer than two dimensions): norms, biases,
# token embeddings, the VLA's action queries and the LAQ's code vectors
NO_DECAY_MARKERS = ("norm", "bias", "embed_tokens", "action_queries", "codebook")


def _get(tcfg: Any, key: str, default: Any = None) -> Any:
    return tcfg.get(key, default) if isinstance(tcfg, Mapping) else getattr(tcfg, key, default)


def param_groups(
    model: nn.Module, weight_decay: float, *, head_prefix: str | None = None, head_lr: float | None = None
) -> list[dict]:
    """Decay on weight matrices only; with ``head_lr``, parameters under ``head_prefix`` get their own lr.

    Frozen parameters (``requires_grad=False``) are left out; returns [decay, no-decay] (then the
    head's non-empty groups).
    """
    groups: dict[tuple[bool, bool], list] = {(d, h): [] for d in (True, False) for h in (False, True)}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and not any(marker in name for marker in NO_DECAY_MARKERS)
        head = head_lr is not None and head_prefix is not None and name.startswith(head_prefix)
        groups[(decay, head)].append(param)
    out = []
    for (decay, head), params in groups.items():
        if params or not head:  # the body's (decay, no-decay) pair is always there, in that order
            group = {"params": params, "weight_decay": weight_decay if decay else 0.0}
            if head:
                group["lr"] = float(head_lr)
            out.append(group)
    return out


def make_optimizer(
    model: nn.Module, tcfg: Any, *, head_prefix: str | None = None, head_lr: float | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (lr, betas, eps, weight_decay of ``tcfg``: a TrainingConfig or its dict) and its schedule."""
    groups = param_groups(model, float(_get(tcfg, "weight_decay")), head_prefix=head_prefix, head_lr=head_lr)
    optimizer = torch.optim.AdamW(
        groups,
        lr=float(_get(tcfg, "lr")),
        betas=tuple(float(b) for b in _get(tcfg, "betas")),
        eps=float(_get(tcfg, "eps", 1e-8)),
    )
    return optimizer, make_scheduler(optimizer, tcfg)


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_lr`` (relative) at ``max_steps``."""
    return warmup_cosine_scheduler(
        optimizer,
        warmup_steps=int(_get(tcfg, "warmup_steps")),
        max_steps=int(_get(tcfg, "max_steps")),
        lr=float(_get(tcfg, "lr")),
        min_lr=float(_get(tcfg, "min_lr")),
    )
