"""LAQ throughput on this machine: training pairs/s (tiny and base configs) and labelling pairs/s.

Usage: .venv/bin/python benchmarks/bench_laq.py [--steps 20] [--base-steps 2] [--threads 2]
The baseline printed beside each figure is the data-free forward-only (inference) rate of the
same model in the same run, so figures from a busy machine stay comparable.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _arch(model: str) -> dict:
    from lapa.config import load_config
    from lapa.laq.model import architecture_from_config

    cfg = load_config("default", [])
    arch = architecture_from_config(cfg.laq)
    if model == "base":
        from omegaconf import OmegaConf

        base = OmegaConf.to_container(OmegaConf.load(Path("configs/model/laq_base.yaml")).laq)
        arch = {k: ({**arch[k], **base[k]} if isinstance(base[k], dict) else base[k]) for k in arch}
    return arch


def bench_train(model_name: str, steps: int, batch: int) -> tuple[float, float]:
    from lapa.laq.model import LAQModel, to_model_range

    arch = _arch(model_name)
    model = LAQModel(arch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    s = arch["image_size"]
    ft = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8)
    ft1 = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8)

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
    train_rate = steps * batch / (time.perf_counter() - t0)
    model.eval()
    with torch.inference_mode():
        model.predict_indices(ft, ft1)
        t0 = time.perf_counter()
        for _ in range(steps):
            model.predict_indices(ft, ft1)
    infer_rate = steps * batch / (time.perf_counter() - t0)
    return train_rate, infer_rate


def bench_label(pairs_videos: int, workers: int) -> float:
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
        write_pair_shards(sprite_episodes(pairs_videos, length=17, size=64), shards, cfg.data.sharding)
        target = LAQTarget(LAQModel(_arch("tiny")).eval())
        t0 = time.perf_counter()
        report = label_shards(shards, Path(tmp) / "latent", target, batch_size=256, num_workers=workers)
        elapsed = time.perf_counter() - t0
    return sum(report["counts"].values()) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--base-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label-videos", type=int, default=125)
    parser.add_argument("--label-workers", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tr, inf = bench_train("tiny", args.steps, 32)
    print(f"laq_tiny  64px batch 32 : train {tr:8.1f} pairs/s | inference baseline {inf:8.1f} pairs/s")
    tr, inf = bench_train("base", args.base_steps, 4)
    print(f"laq_base 224px batch 4  : train {tr:8.1f} pairs/s | inference baseline {inf:8.1f} pairs/s")
    rate = bench_label(args.label_videos, args.label_workers)
    print(f"label (laq_tiny, 64px shards, {args.label_workers} worker): {rate:8.1f} pairs/s end to end")


if __name__ == "__main__":
    main()
