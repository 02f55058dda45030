"""LAQ throughput on this machine, checked against the compute ceiling measured in the same run.

For each model it prints the forward cost (GFLOP per pair, torch's FlopCounterMode), training
and forward-only pairs/s, and the share of the ceiling they reach: the ceiling is this machine's
sustained fp32 convolution rate (measured first, in the same run) divided by the model's cost
(x3 for a training step: forward plus backward). Baselines in the same run: ``laq_tiny`` with
its former decoder width (32), and the spec-size ``laq_base``. Then labelling pairs/s end to end.

Usage: .venv/bin/python benchmarks/bench_laq.py [--steps 10] [--base-steps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.fixtures


def _arch(model: str) -> dict:
    from omegaconf import OmegaConf

    from lapa.config import load_config
    from lapa.laq.model import architecture_from_config

    overrides = ["laq.decoder.base_channels=32"] if model == "tiny_dec32" else []
    cfg = load_config("default", overrides)
    if model == "base":
        base = OmegaConf.load(ROOT / "configs" / "model" / "laq_base.yaml")
        cfg = OmegaConf.merge(cfg, {"laq": base.laq})
    return architecture_from_config(cfg.laq)


def conv_gflops(seconds: float = 3.0) -> float:
    """Sustained fp32 convolution rate (forward + backward) on a LAQ-like layer."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(32, 64, 32, 32, requires_grad=True)
    flops = 3 * 2 * 64 * 64 * 9 * 32 * 32 * 32  # forward + two backward convolutions
    conv(x).sum().backward()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        conv(x).sum().backward()
        n += 1
    return n * flops / (time.perf_counter() - t0) / 1e9


def forward_gflop(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size) * 2 - 1
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, x)
    return counter.get_total_flops() / 1e9


def bench_model(name: str, steps: int, batch: int) -> dict:
    from lapa.laq.model import LAQModel, to_model_range

    arch = _arch(name)
    torch.manual_seed(0)
    model = LAQModel(arch)
    size = arch["image_size"]
    gflop = forward_gflop(model, size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ft = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    ft1 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)

    def step():
        out = model(to_model_range(ft), to_model_range(ft1))
        loss = F.mse_loss(out.reconstruction, to_model_range(ft1)) + out.vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up (k-means init, allocator)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train = steps * batch / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        model(to_model_range(ft), to_model_range(ft1))
        t0 = time.perf_counter()
        for _ in range(steps):
            model(to_model_range(ft), to_model_range(ft1))
    forward = steps * batch / (time.perf_counter() - t0)
    return {"gflop": gflop, "train": train, "forward": forward, "batch": batch, "size": size}


def bench_label(videos: int, workers: int) -> float:
    from lapa.config import load_config
    from lapa.data.shards import write_pair_shards
    from lapa.laq.label import LAQTarget, label_shards
    from lapa.laq.model import LAQModel
    from tests.fixtures.laq import sprite_episodes

    cfg = load_config(
        "default", ["data.sharding.fps=null", "data.sharding.resize=64", "data.sharding.crop=64"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        write_pair_shards(sprite_episodes(videos, length=17, size=64), shards, cfg.data.sharding)
        target = LAQTarget(LAQModel(_arch("tiny")).eval())
        t0 = time.perf_counter()
        report = label_shards(shards, Path(tmp) / "latent", target, batch_size=256, num_workers=workers)
        elapsed = time.perf_counter() - t0
    return sum(report["counts"].values()) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--base-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label-videos", type=int, default=60)
    parser.add_argument("--label-workers", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ceiling = conv_gflops()
    print(f"machine: sustained fp32 convolution {ceiling:.0f} GFLOP/s with {args.threads} threads")
    rows = [
        ("laq_tiny", "tiny", args.steps, 32),
        ("laq_tiny, decoder 32 (former)", "tiny_dec32", args.steps, 32),
        ("laq_base (spec, 224 px)", "base", args.base_steps, 4),
    ]
    results = {}
    for label, name, steps, batch in rows:
        r = bench_model(name, steps, batch)
        results[name] = r
        train_cap = ceiling / (3 * r["gflop"])
        fwd_cap = ceiling / r["gflop"]
        print(
            f"{label:30s} {r['gflop']:.3f} GFLOP/pair fwd | train {r['train']:7.1f} pairs/s "
            f"({r['train'] / train_cap:4.0%} of ceiling {train_cap:7.1f}) | forward {r['forward']:7.1f} "
            f"pairs/s ({r['forward'] / fwd_cap:4.0%} of {fwd_cap:7.1f})  [{r['size']} px, batch {r['batch']}]"
        )
    speedup = results["tiny"]["train"] / results["tiny_dec32"]["train"]
    print(f"laq_tiny training against the former decoder width in this run: {speedup:.2f}x")
    rate = bench_label(args.label_videos, args.label_workers)
    fwd = results["tiny"]["forward"]
    print(
        f"label (laq_tiny, 64 px shards, {args.label_workers} worker): {rate:7.1f} pairs/s end to end, "
        f"{rate / fwd:.2f}x of the full-model forward rate above (labelling runs the encoder only)"
    )


if __name__ == "__main__":
    main()
