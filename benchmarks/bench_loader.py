"""Loader throughput (pairs/s at 224x224, 0/1/2 workers) next to the decode-only rate of the same JPEGs.

    .venv/bin/python benchmarks/bench_loader.py [--pairs 600] [--size 224] [--batch 32]

The decode-only rate is simplejpeg on the shards' own JPEG bytes, in this process, in this run;
the goal is a loader rate per worker of at least 80% of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lapa.config.data import LoaderConfig, ShardingConfig
from lapa.data.codec import decode_jpeg
from lapa.data.episode import Episode
from lapa.data.pipeline import list_shards, make_loader
from lapa.data.shard_reader import iter_samples
from lapa.data.shards import write_pair_shards


def synthetic_episodes(pairs: int, size: int, frames_per_episode: int = 51):
    """Textured frames with moving shapes: JPEG sizes like camera frames, not flat colour."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    texture = (rng.normal(0, 12, (size, size, 3))).astype(np.float32)
    made = 0
    episode = 0
    while made < pairs:
        n = min(frames_per_episode, pairs - made + 1)
        frames = np.empty((n, size, size, 3), np.uint8)
        for t in range(n):
            base = np.stack([xx * 0.8 + 20 * episode, yy * 0.9, (xx + yy) * 0.4 + 3 * t], -1)
            img = (base + texture) % 255
            x, y = (7 * t + 13 * episode) % (size - 40), (5 * t) % (size - 40)
            img[y : y + 40, x : x + 40] = (220, 50, 40)
            frames[t] = img.astype(np.uint8)
        yield Episode(f"bench{episode}", frames, fps=10)
        made += n - 1
        episode += 1


def decode_only_rate(shards: list[str], repeats: int = 2) -> float:
    jpegs = [(s["t.jpg"], s["t1.jpg"]) for s in iter_samples(shards, exts=("t.jpg", "t1.jpg"))]
    start = time.perf_counter()
    for _ in range(repeats):
        for a, b in jpegs:
            torch.from_numpy(decode_jpeg(a)).permute(2, 0, 1)
            torch.from_numpy(decode_jpeg(b)).permute(2, 0, 1)
    return repeats * len(jpegs) / (time.perf_counter() - start)


def loader_rate(shards: list[str], size: int, batch: int, workers: int, augment: bool) -> float:
    cfg = LoaderConfig(
        batch_size=batch, num_workers=workers, shuffle_buffer=256, image_size=size, augment=augment
    )
    loader = make_loader(shards, "laq", cfg, train=True)
    count, start = 0, None
    for i, b in enumerate(loader):
        if i == 0:  # worker start-up is not throughput
            start = time.perf_counter()
            continue
        count += len(b["key"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pairs"
        cfg = ShardingConfig(resize=args.size, crop=args.size, samples_per_shard=100, val_fraction=0.0)
        info = write_pair_shards(synthetic_episodes(args.pairs, args.size), out, cfg)
        shards = list_shards(out, "train")
        mb = sum(Path(s).stat().st_size for s in shards) / 2**20
        print(
            f"{info['counts']['train']} pairs at {args.size}x{args.size} in {len(shards)} shards "
            f"({mb:.1f} MiB)"
        )
        decode = decode_only_rate(shards)
        print(f"decode only (simplejpeg, 2 JPEGs per pair, 1 process): {decode:8.1f} pairs/s")
        for augment in (False, True):
            for workers in (0, 1, 2):
                rate = loader_rate(shards, args.size, args.batch, workers, augment)
                per_worker = rate / max(1, workers)
                print(
                    f"loader workers={workers} augment={str(augment):5}: {rate:8.1f} pairs/s  "
                    f"per worker {per_worker:7.1f}  ratio to decode-only {per_worker / decode:5.2f}"
                )


if __name__ == "__main__":
    main()
