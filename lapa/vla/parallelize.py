"""Strategy and precision of the Fabric loops (foundation and finetuning): single, DDP, FSDP2.

Single process or DDP for small models, FSDP2 for large ones.

FSDP2 (``torch.distributed.fsdp.fully_shard``) goes through Fabric's ModelParallelStrategy: one
sharding unit per Llama decoder layer, one for the vision towers, the rest at the root. On GPU
its parameters compute in bf16 with fp32 gradient reduction (MixedPrecisionPolicy) while the
sharded master weights and optimizer state stay fp32. FSDP2 also runs on CPU over gloo, which is
how the sharded path is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from lapa.config.training import STRATEGIES


@dataclass(frozen=True)
class RunPlan:
    accelerator: str  # cpu | cuda
    strategy: str  # single | ddp | fsdp2
    fabric_precision: str  # Fabric's precision plugin
    fsdp_bf16: bool  # FSDP2 MixedPrecisionPolicy(bf16 params, fp32 reduce)
    devices: int
    num_nodes: int

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def plan_run(tcfg: Any, key: str = "foundation.training") -> RunPlan:
    """Resolve accelerator/strategy/precision 'auto' values of a ``TrainingConfig`` found at ``key``."""
    from lapa.utils.run import resolve_accelerator, resolve_precision

    accelerator = resolve_accelerator(tcfg.accelerator, f"{key}.accelerator")
    devices, num_nodes = int(tcfg.devices), int(tcfg.num_nodes)
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"{key}.devices and {key}.num_nodes must be >= 1")
    world = devices * num_nodes
    strategy = tcfg.strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"{key}.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "single"
    if strategy == "single" and world > 1:
        raise ValueError(f"{key}.strategy=single needs devices=1 and num_nodes=1")
    precision = str(tcfg.precision)
    bf16 = precision.startswith("bf16") or (precision == "auto" and accelerator == "cuda")
    if strategy == "fsdp2":
        # bf16 compute comes from the MixedPrecisionPolicy; Fabric keeps fp32 master weights
        return RunPlan(accelerator, strategy, "32-true", bf16, devices, num_nodes)
    return RunPlan(
        accelerator, strategy, resolve_precision(precision, accelerator), False, devices, num_nodes
    )


def fsdp2_parallelize(
    model: nn.Module, device_mesh, *, bf16: bool, activation_checkpointing: bool
) -> nn.Module:
    """Shard a VLAModel with FSDP2: vision towers, each decoder layer, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"]
    kwargs: dict[str, Any] = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if activation_checkpointing:
        model.enable_activation_checkpointing()
    fully_shard(model.vision, **kwargs)
    for layer in model.llm.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def make_fabric(plan: RunPlan, *, activation_checkpointing: bool, loggers: list | None = None):
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy, ModelParallelStrategy

    if plan.strategy == "fsdp2":
        strategy = ModelParallelStrategy(
            parallelize_fn=partial(
                fsdp2_parallelize, bf16=plan.fsdp_bf16, activation_checkpointing=activation_checkpointing
            ),
            data_parallel_size=plan.world_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=True,
        )
    elif plan.strategy == "ddp":
        strategy = DDPStrategy(process_group_backend="nccl" if plan.accelerator == "cuda" else "gloo")
    else:
        strategy = "auto"
    return Fabric(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=strategy,
        precision=plan.fabric_precision,
        loggers=loggers or [],
    )


def local_parameter_count(model: nn.Module) -> int:
    """Parameters this rank holds (the local shard of FSDP2 DTensors)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel()
    return total


def full_state_dict(model: nn.Module, strategy: str) -> dict:
    """Consolidated weights on CPU (on rank 0 only under FSDP2; collective there)."""
    if strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
