"""Build large models without materialising them, then load weights straight into their shards.

At 7B, building the Llama in fp32 on the host costs about 28 GB per rank before FSDP2 shards it,
and loading a checkpoint by first building a randomly initialised model doubles that. Here:

1. ``empty_llama`` builds the Llama on the ``meta`` device (shapes only, no memory, no init).
2. FSDP2's ``fully_shard`` shards the meta parameters (each rank's DTensors stay on meta).
3. ``materialize`` allocates each rank's local shards (``Module.to_empty``), restores the
   non-persistent buffers (rotary frequencies) and copies into every local shard only the rows
   it owns, read lazily from safetensors files (``safe_open(...).get_slice``) or sliced from
   in-memory tensors. No rank ever holds the full model.

Without sharding the same path loads a checkpoint into a meta-built model with no random init.
Source: the meta-device initialisation of torchtitan and PyTorch's FSDP2 notes
(``torch.distributed.fsdp.fully_shard``: "initialize on meta device, shard, then ``to_empty``").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


def empty_llama(llm_config: Any) -> nn.Module:
    """A ``transformers.LlamaModel`` of ``llm_config`` with every parameter and buffer on ``meta``."""
    from transformers import LlamaModel

    with torch.device("meta"):
        return LlamaModel(llm_config)


class TensorSource:
    """Named tensors to load from: safetensors files (read lazily) and in-memory tensors.

    ``add_safetensors(files, prefix)`` maps each file key ``k`` to ``prefix + k``; a Hugging Face
    directory (``model.safetensors`` or a sharded ``model.safetensors.index.json``) is accepted
    via ``add_hf_directory``. A key is looked up first in memory, then in the files.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[Path, str]] = {}  # model key -> (file, key in file)
        self._memory: dict[str, torch.Tensor] = {}
        self._open: dict[Path, Any] = {}

    def add_tensors(self, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> TensorSource:
        for key, value in tensors.items():
            self._memory[prefix + key] = value
        return self

    def add_safetensors(self, path: str | os.PathLike, prefix: str = "", strip: str = "") -> TensorSource:
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt") as fh:
            for key in fh.keys():
                name = key[len(strip) :] if strip and key.startswith(strip) else key
                self._files[prefix + name] = (path, key)
        return self

    def add_hf_directory(self, directory: str | os.PathLike, prefix: str = "") -> TensorSource:
        """Weights of a ``save_pretrained`` directory (a causal-LM ``model.`` key prefix is dropped)."""
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (directory / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json")
        for name in files:
            self.add_safetensors(directory / name, prefix=prefix, strip="model.")
        return self

    def keys(self) -> set[str]:
        return set(self._memory) | set(self._files)

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._memory:
            return tuple(self._memory[key].shape)
        return tuple(self._slice(key).get_shape())

    def read(self, key: str, index: tuple[slice, ...]) -> torch.Tensor:
        """The block ``index`` (one slice per dimension) of tensor ``key``."""
        if key in self._memory:
            return self._memory[key][index]
        if key not in self._files:
            raise KeyError(key)
        block = self._slice(key)[index] if index else self._slice(key)[:]
        return block

    def _slice(self, key: str):
        from safetensors import safe_open

        path, inner = self._files[key]
        if path not in self._open:
            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path].get_slice(inner)

    def close(self) -> None:
        self._open.clear()


def _local_block(param: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """(the tensor this rank writes into, the global index block it covers)."""
    if hasattr(param, "to_local") and hasattr(param, "device_mesh"):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        local = param.to_local()
        shape, offset = compute_local_shape_and_global_offset(
            param.shape, param.device_mesh, param.placements
        )
        return local, tuple(slice(o, o + s) for o, s in zip(offset, shape))
    return param, tuple(slice(0, s) for s in param.shape)


def _restore_buffers(model: nn.Module, device: torch.device) -> None:
    """Recompute non-persistent buffers (rotary frequencies) that ``to_empty`` left uninitialised.

    A module with a ``reset_buffers(device)`` method recomputes its own; a Hugging Face module
    (one with a ``config``, such as the Llama's rotary embedding) is rebuilt from its config on
    the target device and its buffers copied over; any other is an error naming the buffer.
    """
    for name, module in model.named_modules():
        transient = [b for b in module._non_persistent_buffers_set if getattr(module, b, None) is not None]
        if not transient:
            continue
        if hasattr(module, "reset_buffers"):
            module.reset_buffers(device)
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise ValueError(
                f"cannot restore the non-persistent buffer {name}.{transient[0]} of {type(module).__name__} "
                "after meta-device construction"
            )
        with torch.device(device):
            fresh = type(module)(config)
        for buffer in transient:
            getattr(module, buffer).copy_(getattr(fresh, buffer))


@torch.no_grad()
def materialize(model: nn.Module, source: TensorSource, device: str | torch.device = "cpu") -> dict:
    """Allocate ``model``'s (local shards of) parameters on ``device`` and fill them from ``source``.

    Every parameter and persistent buffer must be in ``source`` (checked against the global shape
    before anything is allocated); non-persistent buffers are recomputed. Works on plain modules
    and on modules sharded by FSDP2 (DTensor parameters: each rank reads only its rows). Tensors
    of the model that were already real are replaced too: put them in ``source`` (``add_tensors``)
    if they must be kept. Returns ``{"loaded": n, "bytes_read": b}`` (b: this rank's bytes).

    Raises ValueError naming missing keys or shape mismatches.
    """
    device = torch.device(device)
    transient = {
        f"{mod}.{buf}".lstrip(".")
        for mod, module in model.named_modules()
        for buf in module._non_persistent_buffers_set
    }
    tensors = dict(model.named_parameters()) | {n: b for n, b in model.named_buffers() if n not in transient}
    available = source.keys()
    missing = sorted(n for n in tensors if n not in available)
    if missing:
        raise ValueError(f"weights missing for {len(missing)} tensors, e.g. {missing[:5]}")
    for name, tensor in tensors.items():
        if source.shape(name) != tuple(tensor.shape):
            raise ValueError(
                f"{name}: weights have shape {source.shape(name)}, the model {tuple(tensor.shape)}"
            )
    model.to_empty(device=device)
    _restore_buffers(model, device)
    tensors = dict(model.named_parameters()) | {n: b for n, b in model.named_buffers() if n not in transient}
    loaded = bytes_read = 0
    for name, tensor in tensors.items():
        target, index = _local_block(tensor)
        if target.numel() == 0:
            continue
        block = source.read(name, index)
        target.copy_(block.to(dtype=target.dtype, device=target.device))
        loaded += 1
        bytes_read += block.numel() * block.element_size()
    source.close()
    return {"loaded": loaded, "bytes_read": bytes_read}
