"""Shard-writing throughput: videos into frame-pair shards (decode + resize + JPEG + tar), 1 and 2 workers.

    .venv/bin/python benchmarks/bench_shards.py [--videos 6] [--frames 60] [--size 320x240]

Also reports the tar writing alone (ShardWriter on pre-encoded samples) for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lapa.config.data import ShardingConfig
from lapa.data.build import build_shards
from lapa.data.shards import ShardWriter, encode_jpeg


def write_videos(root: Path, videos: int, frames: int, width: int, height: int) -> None:
    import av

    rng = np.random.default_rng(0)
    texture = rng.normal(0, 12, (height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    for v in range(videos):
        with av.open(str(root / f"video{v}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(frames):
                img = (np.stack([xx * 0.7 + 9 * v, yy * 0.9, (xx + yy) * 0.3 + 2 * t], -1) + texture) % 255
                x = (6 * t) % (width - 50)
                img[100:150, x : x + 50] = (220, 60, 30)
                frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="320x240")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        root.mkdir()
        write_videos(root, args.videos, args.frames, width, height)
        print(
            f"{args.videos} videos of {args.frames} frames at {width}x{height}, 30 fps, "
            "sampled at the native rate"
        )
        for workers in (1, 2):
            cfg = ShardingConfig(fps=None, resize=256, crop=224, workers=workers, samples_per_shard=100)
            start = time.perf_counter()
            info = build_shards("pairs", [str(root)], Path(tmp) / f"pairs{workers}", cfg, progress=False)
            elapsed = time.perf_counter() - start
            pairs = sum(info["counts"].values())
            print(
                f"videos -> pair shards, workers={workers}: {pairs / elapsed:7.1f} pairs/s "
                f"({pairs} in {elapsed:.1f} s)"
            )
        image = np.random.default_rng(1).integers(0, 255, (224, 224, 3)).astype(np.uint8)
        sample_jpeg = encode_jpeg(image)
        start = time.perf_counter()
        n = 2000
        with ShardWriter(tmp, "train", "tar_only", samples_per_shard=500) as writer:
            for i in range(n):
                writer.write(
                    {"__key__": f"k{i:06d}", "t.jpg": sample_jpeg, "t1.jpg": sample_jpeg, "json": {"i": i}}
                )
        elapsed = time.perf_counter() - start
        print(f"ShardWriter alone (pre-encoded 224 px pairs): {n / elapsed:7.1f} pairs/s")
        start = time.perf_counter()
        for _ in range(200):
            encode_jpeg(image)
        print(
            f"encode_jpeg at 224 px (noise, worst case): {(time.perf_counter() - start) / 200 * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
