"""Training throughput of the 7B foundation configuration on the GPUs of one node.

Builds the VLA of configs/model/vla_7b.yaml (SigLIP-SO400M + DINOv2-L + Llama-2-7B) with random
weights, shards it with FSDP2 over every visible GPU (one unit per decoder layer, through the
same ``fsdp2_parallelize`` the trainer uses) and times optimizer steps on synthetic batches.
Prints tokens/s, samples/s, peak memory and model FLOPs utilisation, against a baseline measured
in the same run: the dense bf16 matmul rate this GPU reaches.

Weights: ``--master fp32`` keeps fp32 sharded master weights and computes in bf16 (the training
configuration; ~16 bytes/parameter over all GPUs, so >= 2 GPUs of 80 GB, and ~30 GB of host memory
per GPU while building); ``--master bf16`` (default on one GPU) keeps everything in bf16 so the 7B
fits a single H100.

    .venv/bin/python benchmarks/gpu_foundation_7b.py [--batch 4] [--text-tokens 32] [--steps 10]
        [--activation-checkpointing | --no-activation-checkpointing] [--master auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, per GPU


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4, help="samples per GPU per step")
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--master", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: on with one GPU",
    )
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak per GPU (default: by name)"
    )
    return p.parse_args()


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def flops_per_sample(model, seq_len: int, image_tokens: int) -> float:
    """Training FLOPs per sample: 6N per token where trained (+ attention), 2N forward for frozen vision."""
    cfg = model.llm.config
    llm_params = sum(p.numel() for n, p in model.llm.named_parameters() if "embed_tokens" not in n)
    llm = 6 * llm_params * seq_len + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len**2
    projector = 6 * sum(p.numel() for p in model.projector.parameters()) * image_tokens
    vision = 0.0
    for tower in (model.vision.siglip, model.vision.dinov2):
        n_tokens = image_tokens + tower.num_prefix_tokens
        params = sum(p.numel() for p in tower.parameters())
        vision += 2 * params * n_tokens + 4 * len(tower.model.blocks) * tower.embed_dim * n_tokens**2
    return llm + projector + vision


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("gpu_foundation_7b: no CUDA GPU here; it runs on GPU nodes only (nothing measured)")
        return 0

    from lightning.fabric import Fabric
    from lightning.fabric.strategies import ModelParallelStrategy

    from lapa.config import load_config
    from lapa.utils.optim import param_groups
    from lapa.vla.heads import LatentActionHead
    from lapa.vla.model import VLAModel
    from lapa.vla.parallelize import fsdp2_parallelize

    devices = torch.cuda.device_count()
    master = args.master if args.master != "auto" else ("fp32" if devices >= 2 else "bf16")
    ac = args.activation_checkpointing if args.activation_checkpointing is not None else devices == 1
    strategy = ModelParallelStrategy(
        parallelize_fn=partial(fsdp2_parallelize, bf16=master == "fp32", activation_checkpointing=ac),
        data_parallel_size=devices,
        tensor_parallel_size=1,
    )
    fabric = Fabric(
        accelerator="cuda",
        devices=devices,
        strategy=strategy,
        precision="32-true" if master == "fp32" else "bf16-true",
    )
    fabric.launch()
    device = fabric.device
    baseline = matmul_tflops(device)

    cfg = load_config("vla_7b", configs_root=CONFIGS).foundation
    torch.manual_seed(0)
    with fabric.init_module():  # bf16-true: built in bf16 on the CPU, moved to the GPU shard by shard
        model = VLAModel(
            cfg, num_queries=4, head=LatentActionHead(cfg.llm.hidden_size, 4, 8), vocab_size=32000
        )
    total_params = sum(p.numel() for p in model.parameters())
    per_sample = flops_per_sample(
        model, 1 + model.num_image_tokens + args.text_tokens + 4, model.num_image_tokens
    )
    model = fabric.setup_module(model)
    optimizer = fabric.setup_optimizers(
        torch.optim.AdamW(param_groups(model, 0.1), lr=1e-5, betas=(0.9, 0.95))
    )

    size = cfg.vision.image_size
    images = torch.randint(0, 256, (args.batch, 3, size, size), dtype=torch.uint8, device=device)
    input_ids = torch.randint(3, 32000, (args.batch, 1 + args.text_tokens), device=device)
    input_ids[:, 0] = 1
    mask = torch.ones_like(input_ids)
    targets = torch.randint(0, 8, (args.batch, 4), device=device)

    def step() -> None:
        logits = model(images, input_ids, mask)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        fabric.backward(loss)
        fabric.clip_gradients(model, optimizer, max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fabric.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30], device=device)
    peak = fabric.all_reduce(peak, reduce_op="max")

    samples = args.batch * devices * args.steps
    seq_len = 1 + model.num_image_tokens + args.text_tokens + 4
    achieved = per_sample * samples / elapsed / 1e12 / devices  # TFLOP/s per GPU
    name = torch.cuda.get_device_name(device)
    peak_tflops = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if fabric.global_rank == 0:
        print(f"device: {devices} x {name}; master weights {master}; activation checkpointing {ac}")
        print(
            f"model: {total_params / 1e9:.2f}B parameters; sequence {seq_len} tokens; batch {args.batch}/GPU"
        )
        print(f"baseline dense bf16 matmul: {baseline:.0f} TFLOP/s per GPU")
        print(
            f"throughput: {samples / elapsed:.2f} samples/s, {samples * seq_len / elapsed:.0f} tokens/s "
            f"({elapsed / args.steps * 1000:.0f} ms/step)"
        )
        print(f"peak memory: {float(peak):.1f} GiB per GPU")
        print(
            f"model FLOPs: {achieved:.0f} TFLOP/s per GPU = {achieved / baseline:.1%} of the matmul rate"
            + (f", MFU {achieved / peak_tflops:.1%} of {peak_tflops:.0f} TFLOP/s" if peak_tflops else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
