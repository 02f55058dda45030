"""Build large models without materialising them, then load weights straight into their shards.

At 7B, building the Llama in fp32 on the host costs about 28 GB per rank before FSDP2 shards it,
and loading a checkpoint by first building a randomly initialised model doubles that. Here:

1. ``empty_llama`` builds the Llama on the ``meta`` device (shapes only, no memory, no init).
2. FSDP2's ``fully_shard`` shards the meta parameters (each rank's DTensors stay on meta).
3. ``materialize`` allocates each rank's local shards (``Module.to_empty``), restores the
   non-persistent buffers (rotary frequencies) and copies into every local shard only the rows
   it owns, read from safetensors files with ``os.pread`` of exactly those rows, or sliced from
   in-memory tensors. No rank ever holds the full model.

Without sharding the same path loads a checkpoint into a meta-built model with no random init.
Source: the meta-device initialisation of torchtitan and PyTorch's FSDP2 notes
(``torch.distributed.fsdp.fully_shard``: "initialize on meta device, shard, then ``to_empty``").
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn


def empty_llama(llm_config: Any) -> nn.Module:
    """A ``transformers.LlamaModel`` of ``llm_config`` with every parameter and buffer on ``meta``."""
    from transformers import LlamaModel

    with torch.device("meta"):
        return LlamaModel(llm_config)


_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class _FileEntry(NamedTuple):
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # absolute byte offset of the tensor's data in the file


def _safetensors_header(path: Path) -> dict[str, _FileEntry]:
    """The tensor table of a safetensors file (format: u64 header size, JSON header, data)."""
    with open(path, "rb") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        try:
            header = json.loads(fh.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a safetensors file ({exc})") from exc
    entries = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
        entries[key] = _FileEntry(
            path, _DTYPES[info["dtype"]], tuple(info["shape"]), 8 + size + info["data_offsets"][0]
        )
    return entries


class TensorSource:
    """Named tensors to load from: safetensors files (read in blocks) and in-memory tensors.

    ``add_safetensors(file, prefix)`` maps each file key ``k`` to ``prefix + k``; a Hugging Face
    directory (``model.safetensors`` or a sharded ``model.safetensors.index.json``) is accepted
    via ``add_hf_directory``. A key is looked up first in memory, then in the files.

    File blocks are read with ``os.pread`` of exactly their rows (FSDP2 shards along dim 0), not
    through a memory map, so a rank's resident memory holds its own rows and nothing else.
    """

    def __init__(self) -> None:
        self._files: dict[str, _FileEntry] = {}
        self._memory: dict[str, torch.Tensor] = {}

    def add_tensors(self, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> TensorSource:
        for key, value in tensors.items():
            self._memory[prefix + key] = value
        return self

    def add_safetensors(self, path: str | os.PathLike, prefix: str = "", strip: str = "") -> TensorSource:
        for key, entry in _safetensors_header(Path(path)).items():
            name = key[len(strip) :] if strip and key.startswith(strip) else key
            self._files[prefix + name] = entry
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
        return self._files[key].shape

    def read(self, key: str, index: tuple[slice, ...]) -> torch.Tensor:
        """The block ``index`` (one slice per dimension, step 1) of tensor ``key``."""
        if key in self._memory:
            return self._memory[key][index]
        entry = self._files[key]
        if not entry.shape:
            return self._rows(entry, 0, 1).reshape(())
        rows = index[0] if index else slice(0, entry.shape[0])
        block = self._rows(entry, rows.start or 0, entry.shape[0] if rows.stop is None else rows.stop)
        return block[(slice(None), *index[1:])] if len(index) > 1 else block

    @staticmethod
    def _rows(entry: _FileEntry, start: int, stop: int) -> torch.Tensor:
        row_shape = entry.shape[1:]
        row_bytes = math.prod(row_shape) * torch.empty((), dtype=entry.dtype).element_size()
        out = torch.empty((stop - start, *row_shape), dtype=entry.dtype)
        view = memoryview(out.view(torch.uint8).numpy()).cast("B") if out.numel() else memoryview(b"")
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            done, offset = 0, entry.begin + start * row_bytes
            while done < len(view):
                got = os.preadv(fd, [view[done:]], offset + done)
                if got <= 0:
                    raise ValueError(f"{entry.path}: file ends inside a tensor (truncated?)")
                done += got
        finally:
            os.close(fd)
        return out

    def close(self) -> None:
        """Nothing is held open between reads; kept for symmetry with file-like sources."""


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


def sharded_source(model: nn.Module, llm_dir: str | os.PathLike, prefix: str = "llm.") -> TensorSource:
    """The weights of a model whose Llama (``model.<prefix>``) is on meta and the rest is real.

    The real, small parts (vision towers, projector, queries, head) are copied now, before
    sharding replaces their storage; the Llama's rows are read from ``llm_dir`` later, per rank.
    """
    small = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(prefix)}
    return TensorSource().add_tensors(small).add_hf_directory(llm_dir, prefix=prefix)


def setup_meta_module(fabric: Any, model: nn.Module, source: TensorSource) -> nn.Module:
    """``fabric.setup_module`` for a model holding meta parameters, then fill its shards from ``source``.

    Fabric's FSDP2 strategy shards the module and allocates it (``to_empty`` plus
    ``reset_parameters``, warning that modules without that method are uninitialised); every
    tensor is then overwritten from ``source`` by ``materialize``, so that warning is expected
    and silenced here. Returns the Fabric-wrapped module.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Parameter initialization incomplete")
        wrapped = fabric.setup_module(model)
    materialize(model, source, fabric.device)
    return wrapped
