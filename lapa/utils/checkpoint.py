"""Resumable training checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint of a Fabric loop is a directory ``step-XXXXXXXX/`` under the run's
``checkpoints/`` folder, built as ``.step-XXXXXXXX.tmp`` and renamed when complete::

    state.pt         # {"model": state_dict, "optimizer": state_dict}  (single process, DDP)
    state/           # the same, as a torch.distributed.checkpoint of the shards (FSDP2)
    rank-<r>.pt      # each rank's own state: progress, scheduler, random generators
    progress.json    # the progress of rank 0, for people

Everything in them is tensors and plain Python values, so every load is ``weights_only=True``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from lapa.utils.io import atomic_path

log = logging.getLogger(__name__)

PREFIX = "step-"


def save_file(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` under a temporary name, renamed into place (a kill never leaves half a file)."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)


def load_file(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` onto the CPU; an unreadable file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def completed(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [
        p
        for p in ckpt_dir.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()
    ]
    return sorted(found, key=step_of)


def remove_stale(ckpt_dir: str | os.PathLike) -> None:
    """Delete checkpoints a killed job left half-written."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for stale in ckpt_dir.glob(f".{PREFIX}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)


def _raw_optimizer(optimizer):
    """The torch optimizer inside Fabric's wrapper."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def _weights_only_planner():
    """torch.distributed.checkpoint's default load planner, reading non-tensor entries weights-only."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return WeightsOnlyLoadPlanner()


def save_training_state(
    fabric: Any,
    ckpt_dir: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rank_state: dict,
    *,
    sharded: bool,
    keep_last: int,
) -> Path:
    """Write ``step-<step>`` (collective: every rank calls it); keep the newest ``keep_last``.

    ``model`` is the unwrapped module (its parameters are DTensor shards under FSDP2),
    ``rank_state`` this rank's own state (tensors and plain values only).
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    tmp = ckpt_dir / f".{final.name}.tmp"
    if fabric.global_rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    fabric.barrier()
    optimizer = _raw_optimizer(optimizer)
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / "state"))
    elif fabric.global_rank == 0:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp / "state.pt")
    torch.save(rank_state, tmp / f"rank-{fabric.global_rank}.pt")
    fabric.barrier()
    if fabric.global_rank == 0:
        progress = {k: v for k, v in rank_state.get("progress", {}).items() if isinstance(v, (int, float))}
        (tmp / "progress.json").write_text(json.dumps(progress, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in completed(ckpt_dir)[: -max(1, int(keep_last))]:
            shutil.rmtree(old, ignore_errors=True)
    fabric.barrier()
    return final


def load_training_state(
    fabric: Any,
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    sharded: bool,
) -> dict:
    """Restore model and optimizer from ``path`` (collective); return this rank's own state."""
    path = Path(path)
    optimizer = _raw_optimizer(optimizer)
    rank_file = path / f"rank-{fabric.global_rank}.pt"
    if not rank_file.is_file():
        raise ValueError(
            f"{path} holds no state for rank {fabric.global_rank}: it was written by a run with another "
            "number of processes"
        )
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(path / "state"), planner=_weights_only_planner())
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        state = load_file(path / "state.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return load_file(rank_file)
