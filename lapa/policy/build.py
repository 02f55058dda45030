"""The policy network: the foundation VLA with one action query and the continuous head.

Three ways to build it: from a foundation checkpoint (the LAPA and action-pretrained arms),
from the backbones directory alone (the scratch arm: same architecture, no latent pretraining),
and from a saved policy directory (``lapa.policy.policy``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lapa.vla.heads import ContinuousActionHead

log = logging.getLogger(__name__)

PolicyModel = nn.Module  # a VLAModel whose head is a ContinuousActionHead and num_queries == 1


def build_policy_model(
    foundation_cfg: Any, action_dim: int, num_bins: int, *, llm=None, vocab_size=None
) -> nn.Module:
    """A VLAModel with one action query and a ContinuousActionHead (random unless ``llm`` is given)."""
    from lapa.vla.model import VLAModel
    from lapa.vla.vision import _get

    hidden = (
        int(llm.config.hidden_size)
        if llm is not None
        else int(_get(_get(foundation_cfg, "llm"), "hidden_size"))
    )
    head = ContinuousActionHead(hidden, action_dim, num_bins)
    return VLAModel(foundation_cfg, num_queries=1, head=head, llm=llm, vocab_size=vocab_size)


def policy_from_foundation(foundation_dir: str | os.PathLike, action_dim: int, num_bins: int):
    """Approach A: the foundation's vision, projector and Llama, its first action query, a new head.

    With one query at the position of the foundation's first latent query, the new head reads the
    same hidden state the first latent token was predicted from. Returns (model, tokenizer, cfg).
    """
    from lapa.vla.checkpoint import load_foundation

    foundation, tokenizer, cfg, head_info = load_foundation(foundation_dir)
    model = build_policy_model(cfg, action_dim, num_bins, llm=foundation.llm)
    model.vision.load_state_dict(foundation.vision.state_dict())
    model.projector.load_state_dict(foundation.projector.state_dict())
    with torch.no_grad():
        model.action_queries.copy_(foundation.action_queries[:1])
    log.info("policy initialised from foundation %s (head %s)", foundation_dir, head_info)
    return model, tokenizer, cfg


def policy_from_backbones(
    foundation_cfg: Any, backbones_dir: str | os.PathLike, action_dim: int, num_bins: int
):
    """The scratch arm: pretrained (or random) towers and Llama from the backbones directory,
    a random projector, action query and head. Returns (model, tokenizer, cfg)."""
    from lapa.vla.backbones import check_vision_matches, load_backbones

    bb = load_backbones(backbones_dir)
    check_vision_matches(foundation_cfg.vision, bb.info, backbones_dir)
    model = build_policy_model(
        foundation_cfg, action_dim, num_bins, llm=bb.llm, vocab_size=bb.llm.config.vocab_size
    )
    model.vision.load_state_dict(bb.vision_state)
    return model, bb.tokenizer, foundation_cfg


def check_backbones_for(foundation_cfg: Any, backbones_dir: str | os.PathLike) -> None:
    """The foundation checkpoint must have been built on the given backbones' vision towers."""
    from lapa.vla.backbones import check_vision_matches

    meta = Path(backbones_dir) / "backbones.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{backbones_dir} is not a backbones directory (no backbones.json)")
    check_vision_matches(foundation_cfg.vision, json.loads(meta.read_text()), backbones_dir)


def freeze_for_finetuning(
    model: nn.Module, freeze_vision: bool = True, freeze_projector: bool = False
) -> dict:
    """Vision frozen (spec 2.3.1), Llama, action query and head trained; returns parameter counts."""
    model.requires_grad_(True)
    if freeze_vision:
        model.vision.requires_grad_(False)
        model.vision.frozen = True
        model.vision.eval()
    else:
        model.vision.frozen = False
    if freeze_projector:
        model.projector.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}
