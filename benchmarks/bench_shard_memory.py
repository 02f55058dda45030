"""Peak memory of `lapa shards pairs` against video length, and shard-building pairs/s.

    .venv/bin/python benchmarks/bench_shard_memory.py [--lengths 30,180,900] [--hold-up-to 180]

Synthetic 640x480 30 fps H.264 videos of each length (seconds) are built into frame-pair shards
at 224 px, native rate (``fps=None``, ``frame_offset=1``), each in a fresh child process with
``workers=1`` so decoding happens in that process. Its peak RSS is the kernel's ``ru_maxrss``
for the child (``os.wait4``); its anonymous memory (heap and stacks, where data lives) is
sampled from ``/proc`` too, as much of the RSS of a process that imported torch is library
pages. Baselines measured in the same run: the same child holding the whole video in memory
first (``lapa.data.sources.read_video``, the way videos were read before streaming) for lengths
up to ``--hold-up-to``, and PyAV's decode-only frame rate on the shortest video. The goal: the
longest video's peak within 1.2x of the shortest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
mode, video, out = sys.argv[1:4]
import torch
from lapa.config.data import ShardingConfig
from lapa.data.build import build_shards
from lapa.data.sources import read_video
start = time.perf_counter()  # after the imports: pairs/s is the steady rate
if mode == "stream":
    cfg = ShardingConfig(fps=None, resize=224, crop=224, workers=1, val_fraction=0.0, samples_per_shard=1000)
    info = build_shards("pairs", [video], out, cfg, progress=False)
    pairs = sum(info["counts"].values())
else:
    episode = read_video(video, "v", fps=None, resize=224, crop=224)
    pairs = episode.num_frames - 1
print(json.dumps({"pairs": pairs, "seconds": time.perf_counter() - start}))
"""


def write_video(path: Path, seconds: int, fps: int = 30, width: int = 640, height: int = 480) -> int:
    """Textured frames with a moving block (x264 ultrafast, crf 23); returns the frame count."""
    import av

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (
        (np.stack([xx * 0.3, yy * 0.4, (xx + yy) * 0.2], -1) + rng.normal(0, 10, (height, width, 3))) % 255
    ).astype(np.uint8)
    n = seconds * fps
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_type = "AUTO"
        for t in range(n):
            img = np.roll(base, 2 * t, axis=1)
            x = (5 * t) % (width - 64)
            img[200:264, x : x + 64] = (220, 60, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def _anonymous_mib(pid: int) -> float | None:
    """Anonymous memory (heap, stacks: what data can grow) of a process from /proc/<pid>/smaps_rollup, MiB."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
    return int(fields["Anonymous"].split()[0]) / 1024 if "Anonymous" in fields else None


def run_child(mode: str, video: Path, out: Path) -> tuple[dict, float, float]:
    """(the child's JSON report, its peak RSS and its peak anonymous memory (sampled every 50 ms), MiB)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, str(video), str(out)], stdout=subprocess.PIPE, env=env, text=True
    )
    peak_anon = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            value = _anonymous_mib(proc.pid)
            if value is not None:
                peak_anon[0] = max(peak_anon[0], value)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed ({proc.returncode})")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1024, peak_anon[0]  # kB


def decode_rate(video: Path) -> float:
    import av

    start, n = time.perf_counter(), 0
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="30,180,900", help="video lengths in seconds")
    parser.add_argument(
        "--hold-up-to", type=int, default=180, help="longest video for the in-memory baseline"
    )
    args = parser.parse_args()
    lengths = sorted(int(x) for x in args.lengths.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seconds in lengths:
            video = tmp / f"video{seconds}.mp4"
            start = time.perf_counter()
            frames = write_video(video, seconds)
            made = time.perf_counter() - start
            report, peak, anon = run_child("stream", video, tmp / f"pairs{seconds}")
            hold = run_child("hold", video, tmp / "none")[1:] if seconds <= args.hold_up_to else None
            rows.append((seconds, frames, report, peak, anon))
            print(
                f"{seconds:5d} s ({frames} frames, encoded in {made:.0f} s): streamed build peak RSS "
                f"{peak:6.0f} MiB (anonymous {anon:5.0f}), "
                f"{report['pairs'] / report['seconds']:6.1f} pairs/s "
                f"({report['pairs']} pairs in {report['seconds']:.0f} s)"
                + (
                    f"; baseline, whole video in memory: {hold[0]:6.0f} MiB (anonymous {hold[1]:5.0f})"
                    if hold
                    else ""
                ),
                flush=True,
            )
        rate = decode_rate(tmp / f"video{lengths[0]}.mp4")
        print(f"decode only (PyAV, 640x480, {lengths[0]} s video): {rate:.0f} frames/s")
    first, last = rows[0], rows[-1]
    print(
        f"peak RSS {last[0]} s / {first[0]} s: {last[3] / first[3]:.2f} (goal <= 1.2); "
        f"anonymous memory {last[0]} s / {first[0]} s: {last[4] / first[4]:.2f}"
    )


if __name__ == "__main__":
    main()
