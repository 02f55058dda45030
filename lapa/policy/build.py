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


def policy_from_foundation(
    foundation_dir: str | os.PathLike, action_dim: int, num_bins: int, *, meta_llm: bool = False
):
    """Approach A: the foundation's vision, projector and Llama, its first action query, a new head.

    With one query at the position of the foundation's first latent query, the new head reads the
    same hidden state the first latent token was predicted from. Returns (model, tokenizer, cfg,
    source): with ``meta_llm`` the Llama stays on the meta device and ``source``
    (``lapa.vla.meta.TensorSource``) holds every weight to fill it after sharding; else the model
    is complete and ``source`` is None.
    """
    from lapa.vla.checkpoint import load_foundation

    if meta_llm:
        return _policy_from_foundation_on_meta(Path(foundation_dir), action_dim, num_bins)
    foundation, tokenizer, cfg, head_info = load_foundation(foundation_dir)
    model = build_policy_model(cfg, action_dim, num_bins, llm=foundation.llm)
    model.vision.load_state_dict(foundation.vision.state_dict())
    model.projector.load_state_dict(foundation.projector.state_dict())
    with torch.no_grad():
        model.action_queries.copy_(foundation.action_queries[:1])
    log.info("policy initialised from foundation %s (head %s)", foundation_dir, head_info)
    return model, tokenizer, cfg, None


def _policy_from_foundation_on_meta(foundation_dir: Path, action_dim: int, num_bins: int):
    from transformers import AutoTokenizer

    from lapa.vla.checkpoint import read_foundation_config
    from lapa.vla.meta import TensorSource, empty_llama

    cfg, llm_config, head_info = read_foundation_config(foundation_dir)
    model = build_policy_model(cfg, action_dim, num_bins, llm=empty_llama(llm_config))
    weights = TensorSource().add_safetensors(foundation_dir / "model.safetensors")
    small = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
    for key, value in small.items():  # the foundation's towers, projector and first query; a new head
        if key.startswith(("vision.", "projector.")):
            small[key] = weights.read(key, tuple(slice(0, s) for s in value.shape))
    queries = weights.shape("action_queries")
    small["action_queries"] = weights.read("action_queries", (slice(0, 1), slice(0, queries[1])))
    model.load_state_dict({k: v for k, v in small.items()}, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(foundation_dir / "tokenizer", local_files_only=True)
    log.info("policy initialised from foundation %s on meta (head %s)", foundation_dir, head_info)
    return model, tokenizer, cfg, weights.add_tensors(small)


def policy_from_backbones(
    foundation_cfg: Any,
    backbones_dir: str | os.PathLike,
    action_dim: int,
    num_bins: int,
    *,
    meta_llm: bool = False,
):
    """The scratch arm: pretrained (or random) towers and Llama from the backbones directory,
    a random projector, action query and head. Returns (model, tokenizer, cfg, source), as
    ``policy_from_foundation`` does."""
    from lapa.vla.backbones import check_vision_matches, load_backbones
    from lapa.vla.meta import sharded_source

    bb = load_backbones(backbones_dir, meta_llm=meta_llm)
    check_vision_matches(foundation_cfg.vision, bb.info, backbones_dir)
    model = build_policy_model(
        foundation_cfg, action_dim, num_bins, llm=bb.llm, vocab_size=bb.llm.config.vocab_size
    )
    model.vision.load_state_dict(bb.vision_state)
    source = sharded_source(model, Path(backbones_dir) / "llm") if meta_llm else None
    return model, bb.tokenizer, foundation_cfg, source


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
