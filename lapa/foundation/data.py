"""Latent-labelled shards for foundation training: label shape from info.json, checked labels, loaders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class LabelSpec:
    num_tokens: int
    vocab_size: int


def label_spec(shard_dir: str | os.PathLike, head_cfg: Any) -> LabelSpec:
    """num_tokens / vocab_size from the shards' info.json, checked against ``foundation.head``."""
    from lapa.data.pipeline import read_info

    info = read_info(shard_dir)
    where = Path(shard_dir) / "info.json"
    spec = {}
    for key in ("num_tokens", "vocab_size"):
        value = info.get(key)
        if not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{where} has no valid {key!r} ({value!r}): is {shard_dir} a latent-labelled shard directory?"
            )
        configured = getattr(head_cfg, key, None)
        if configured is not None and int(configured) != value:
            raise ValueError(
                f"{where} says {key}={value} but the config sets foundation.head.{key}={configured}"
            )
        spec[key] = value
    return LabelSpec(**spec)


def _first_latent(tar_path: str) -> np.ndarray | None:
    from lapa.data.codec import decode_npy
    from lapa.data.shard_reader import iter_samples

    for sample in iter_samples(tar_path, exts=("latent.npy",)):
        if "latent.npy" in sample:
            return decode_npy(sample["latent.npy"])
    return None


def preflight_shards(shards: list[str], spec: LabelSpec) -> None:
    """Read each shard's first label: a shard labelled with another num_tokens fails here, by name."""
    for shard in shards:
        try:
            latent = _first_latent(shard)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read labelled shard {shard}: {exc}") from exc
        if latent is None:
            raise ValueError(f"labelled shard {shard} holds no .latent.npy entries")
        check_latent_array(latent.reshape(1, -1), spec, lambda _i, s=shard: s)


def find_sample_shard(shards: list[str], key: str) -> str:
    """The shard holding sample ``key`` (scans member names only; used to name a bad shard)."""
    from lapa.data.shard_reader import index_shard

    for shard in shards:
        try:
            if key in index_shard(shard):
                return shard
        except (OSError, ValueError):
            continue
    return "?"


def check_latent_array(latent: np.ndarray | torch.Tensor, spec: LabelSpec, where) -> None:
    """Raise naming the shard (``where(row)``) on a wrong token count or an out-of-vocabulary index."""
    latent = torch.as_tensor(latent)
    if latent.ndim != 2 or latent.shape[1] != spec.num_tokens:
        raise ValueError(
            f"labelled shard {where(0)}: latent labels have shape {tuple(latent.shape[1:])}, "
            f"expected num_tokens={spec.num_tokens} (foundation.head / info.json)"
        )
    bad = (latent < 0) | (latent >= spec.vocab_size)
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(
            f"labelled shard {where(row)}: latent index {int(latent[row][bad[row]][0])} outside the "
            f"vocabulary [0, {spec.vocab_size})"
        )


def check_batch(batch: dict, spec: LabelSpec, shards: list[str]) -> None:
    check_latent_array(batch["latent"], spec, lambda row: find_sample_shard(shards, batch["key"][row]))
