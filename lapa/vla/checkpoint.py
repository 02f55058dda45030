"""The consolidated foundation checkpoint: the artifact the finetuning stage and the policy load.

Layout (one directory, written atomically)::

    config.yaml          # the foundation config section the model was built from
    llm_config.json      # the exact LlamaConfig (a local Llama-2 has fields the section does not carry)
    model.safetensors    # all weights: vision, projector, llm, action queries, head
    tokenizer/           # HF tokenizer directory
    head.json            # {"type": "latent", "num_tokens", "vocab_size", ...extra (metrics, step)}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lapa.utils.io import atomic_directory


def _foundation_section(cfg: Any):
    """A typed DictConfig of the foundation section from a dataclass, DictConfig or plain dict."""
    from omegaconf import OmegaConf

    from lapa.config.foundation import FoundationConfig

    base = OmegaConf.structured(FoundationConfig)
    data = cfg if not hasattr(cfg, "__dataclass_fields__") else OmegaConf.structured(cfg)
    merged = OmegaConf.merge(base, data)
    return merged


def save_foundation(
    model: nn.Module,
    tokenizer: Any,
    cfg: Any,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
    *,
    state_dict: dict | None = None,
) -> None:
    """Write the consolidated checkpoint of ``model`` (a VLAModel with a LatentActionHead).

    ``state_dict`` replaces ``model.state_dict()`` where the weights had to be gathered first
    (FSDP2: ``get_model_state_dict(..., full_state_dict=True)``). ``extra`` goes into head.json.
    """
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    state = model.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    head = model.head.info() if hasattr(model.head, "info") else {"type": type(model.head).__name__}
    head = {**head, "num_queries": int(model.num_queries), **(extra or {})}
    section = _foundation_section(cfg)
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(section, resolve=True))
        (tmp / "llm_config.json").write_text(model.llm.config.to_json_string())
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "head.json").write_text(json.dumps(head, indent=2, sort_keys=True, default=str) + "\n")


def read_foundation_config(path: str | os.PathLike):
    """``(cfg, llm_config, head_info)`` of a foundation checkpoint, without reading its weights.

    Raises FileNotFoundError naming the missing file, ValueError for an unknown head type.
    """
    from omegaconf import OmegaConf
    from transformers import LlamaConfig

    path = Path(path)
    for name in ("config.yaml", "llm_config.json", "model.safetensors", "head.json", "tokenizer"):
        if not (path / name).exists():
            raise FileNotFoundError(f"{path} is not a foundation checkpoint: {name} is missing")
    cfg = _foundation_section(OmegaConf.load(path / "config.yaml"))
    head_info = json.loads((path / "head.json").read_text())
    if head_info.get("type") != "latent":
        raise ValueError(f"{path / 'head.json'}: unsupported head type {head_info.get('type')!r}")
    llm_config = LlamaConfig.from_dict(json.loads((path / "llm_config.json").read_text()))
    llm_config._attn_implementation = cfg.llm.attn_implementation or "sdpa"
    return cfg, llm_config, head_info


def load_foundation(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild a saved foundation model with local files only.

    Returns ``(model, tokenizer, cfg, head_info)``: a VLAModel in eval mode with its
    LatentActionHead, the HF tokenizer, the foundation section (typed DictConfig) and head.json.
    """
    from transformers import AutoTokenizer, LlamaModel

    from lapa.vla.heads import LatentActionHead
    from lapa.vla.meta import TensorSource, materialize
    from lapa.vla.model import VLAModel

    path = Path(path)
    cfg, llm_config, head_info = read_foundation_config(path)
    weights = path / "model.safetensors"
    with torch.device("meta"):  # shapes only: the weights below are the only initialisation
        head = LatentActionHead(llm_config.hidden_size, head_info["num_tokens"], head_info["vocab_size"])
        num_queries = int(head_info.get("num_queries", head_info["num_tokens"]))
        model = VLAModel(cfg, num_queries=num_queries, head=head, llm=LlamaModel(llm_config))
    source = TensorSource().add_safetensors(weights)
    unexpected = sorted(source.keys() - set(model.state_dict()))
    if unexpected:
        raise ValueError(f"{weights} does not match the model: unexpected {unexpected[:5]}")
    try:
        materialize(model, source, map_location)
    except ValueError as exc:
        raise ValueError(f"{weights} does not match the model: {exc}") from exc
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    return model, tokenizer, cfg, head_info
