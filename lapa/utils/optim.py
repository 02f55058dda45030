"""AdamW parameter groups and the warmup + cosine learning-rate schedule of the foundation stage."""

from __future__ import annotations

import torch
from torch import nn

from lapa.utils.schedule import warmup_cosine_scheduler

NO_DECAY_MARKERS = ("norm", "bias", "embed_tokens", "action_queries")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay on weight matrices only: norms, biases, embeddings and action queries are exempt."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(marker in name for marker in NO_DECAY_MARKERS):
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, tcfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    betas = tuple(float(b) for b in tcfg.betas)
    optimizer = torch.optim.AdamW(
        param_groups(model, float(tcfg.weight_decay)), lr=float(tcfg.lr), betas=betas, eps=float(tcfg.eps)
    )
    return optimizer, make_scheduler(optimizer, tcfg)


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg) -> torch.optim.lr_scheduler.LambdaLR:
    return warmup_cosine_scheduler(
        optimizer,
        warmup_steps=int(tcfg.warmup_steps),
        max_steps=int(tcfg.max_steps),
        lr=float(tcfg.lr),
        min_lr=float(tcfg.min_lr),
    )
