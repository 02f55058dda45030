"""Loader throughput (pairs/s at 224x224, 0/1/2 workers) beside the decode-only rate of the same JPEGs,
and where a loader worker's time goes.

    .venv/bin/python benchmarks/bench_loader.py [--pairs 960] [--size 224] [--batch 32]

The baseline is decode-only: simplejpeg on the shards' own JPEG bytes, in this process, in this run
(measured before and after the loader runs; their mean is the baseline). Each loader run is timed by
the wall clock and by CPU time: the workers' from the kernel's accounting of reaped children, the
main process's own. A loader's rate per worker against decode-only then splits into two factors:

    per-worker ratio = CPU efficiency x core share
    CPU efficiency   = decode-only CPU per pair / loader CPU per pair (a worker's, or the main
                       process's at 0 workers); 1.0 would mean the loader costs nothing beyond decoding
    core share       = (a worker's CPU time / wall time) / (the same for the decode-only run)

The efficiency is the loader's own cost; the share is arithmetic: W workers and a main process on
C shared cores (and whatever else runs there) each get at most C / (W + 1 + others) of a core.

Where the time goes: the pipeline's stages timed by per-thread CPU clocks wrapped around them
while the runs above execute (tar read, JPEG decode, augmentation or resize, collate, the pickling
of each batch in the worker's queue thread, its unpickling in the main process); "other" is the
rest of the processes' CPU time (per-sample Python, shuffle buffer, queue and fd-sharing threads,
worker start).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import torch

import lapa.data.codec as codec
import lapa.data.pipeline as pipeline
from lapa.config.data import LoaderConfig, ShardingConfig
from lapa.data.codec import decode_jpeg
from lapa.data.episode import Episode
from lapa.data.pipeline import list_shards, make_loader
from lapa.data.shard_reader import iter_samples
from lapa.data.shards import write_pair_shards
from lapa.data.transforms import FrameAugment

WORKER_STAGES = ("read", "decode", "augment", "collate", "send")
STAGES = (*WORKER_STAGES, "receive")
MAX_WORKERS = 2


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


class StageClock:
    """Per-process CPU seconds spent in each stage; slots live in shared memory so forked loader
    workers add to them (slot 0: the main process, 1 + i: worker i)."""

    def __init__(self, slots: int = MAX_WORKERS + 1):
        self.acc = mp.RawArray("d", slots * len(STAGES))
        self.slots = slots

    def reset(self) -> None:
        for i in range(len(self.acc)):
            self.acc[i] = 0.0

    def add(self, stage: str, seconds: float) -> None:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id
        self.acc[slot * len(STAGES) + STAGES.index(stage)] += seconds

    def total(self, stage: str, workers: bool) -> float:
        slots = range(1, self.slots) if workers else range(1)
        return sum(self.acc[s * len(STAGES) + STAGES.index(stage)] for s in slots)

    def timed(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.thread_time() - start)

        return wrapper

    def timed_iter(self, stage: str, fn):
        def wrapper(*args, **kwargs):
            iterator = iter(fn(*args, **kwargs))
            while True:
                start = time.thread_time()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.add(stage, time.thread_time() - start)
                    return
                self.add(stage, time.thread_time() - start)
                yield item

        return wrapper

    def install(self) -> None:
        """Wrap the pipeline's stages (before any worker forks, so workers inherit the wrappers)."""
        pipeline.stream_samples = self.timed_iter("read", pipeline.stream_samples)
        for module in (codec, pipeline):  # the pipeline decodes through the codec's decode_jpeg
            if hasattr(module, "decode_jpeg"):
                module.decode_jpeg = self.timed("decode", module.decode_jpeg)
        pipeline.resize_square = self.timed("augment", pipeline.resize_square)
        FrameAugment.__call__ = self.timed("augment", FrameAugment.__call__)
        pipeline.collate = self.timed("collate", pipeline.collate)
        dumps, loads = ForkingPickler.dumps.__func__, ForkingPickler.loads
        ForkingPickler.dumps = classmethod(self.timed("send", dumps))
        ForkingPickler.loads = staticmethod(self.timed("receive", loads))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def decode_only(shards: list[str]) -> tuple[float, float]:
    """(pairs/s, CPU seconds per pair) of decoding both JPEGs of every pair, in this process."""
    jpegs = [(s["t.jpg"], s["t1.jpg"]) for s in iter_samples(shards, exts=("t.jpg", "t1.jpg"))]
    wall, cpu = time.perf_counter(), time.process_time()
    for a, b in jpegs:
        torch.from_numpy(decode_jpeg(a)).permute(2, 0, 1)
        torch.from_numpy(decode_jpeg(b)).permute(2, 0, 1)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(jpegs) / wall, cpu / len(jpegs)


def loader_run(shards, size: int, batch: int, workers: int, augment: bool, clock: StageClock) -> dict:
    """One epoch through ``make_loader``: rate, CPU per pair and per-stage CPU per pair."""
    cfg = LoaderConfig(
        batch_size=batch, num_workers=workers, shuffle_buffer=256, image_size=size, augment=augment
    )
    loader = make_loader(shards, "laq", cfg, train=True)
    clock.reset()
    children, cpu, wall = _children_cpu(), time.process_time(), time.perf_counter()
    pairs = sum(len(b["key"]) for b in loader)  # the iterator joins its workers when exhausted
    wall, cpu, children = time.perf_counter() - wall, time.process_time() - cpu, _children_cpu() - children
    loader_cpu = children if workers else cpu  # the processes that read and decode
    stages = {s: clock.total(s, workers=workers > 0) / pairs for s in WORKER_STAGES}
    stages["other"] = loader_cpu / pairs - sum(stages.values())
    return {
        "workers": workers,
        "augment": augment,
        "rate": pairs / wall,
        "cpu": loader_cpu / pairs,  # all workers together, per pair
        "share": loader_cpu / (max(1, workers) * wall),
        "stages": stages,
        "main_cpu": cpu / pairs,
        "receive": clock.total("receive", workers=False) / pairs if workers else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=960)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = StageClock()
    clock.install()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pairs"
        cfg = ShardingConfig(resize=args.size, crop=args.size, samples_per_shard=100, val_fraction=0.0)
        info = write_pair_shards(synthetic_episodes(args.pairs, args.size), out, cfg)
        shards = list_shards(out, "train")
        mb = sum(Path(s).stat().st_size for s in shards) / 2**20
        cores = len(os.sched_getaffinity(0))
        print(
            f"{info['counts']['train']} pairs at {args.size}x{args.size} in {len(shards)} shards "
            f"({mb:.1f} MiB), batch {args.batch}; {cores} cores, load average {os.getloadavg()[0]:.1f}"
        )
        before = decode_only(shards)
        runs = [
            loader_run(shards, args.size, args.batch, w, augment, clock)
            for augment in (False, True)
            for w in (0, 1, MAX_WORKERS)
        ]
        after = decode_only(shards)
        rate, dec_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        dec_share = rate * dec_cpu
        print(
            f"decode only (simplejpeg, 2 JPEGs per pair, 1 process): {rate:7.1f} pairs/s "
            f"(before {before[0]:.1f}, after {after[0]:.1f}), {1e3 * dec_cpu:.2f} ms CPU per pair, "
            f"core share {dec_share:.2f}; load average now {os.getloadavg()[0]:.1f}"
        )
        print()
        print("per-worker ratio = CPU efficiency x core share (both relative to decode-only)")
        for r in runs:
            per_worker = r["rate"] / max(1, r["workers"])
            eff, share = dec_cpu / r["cpu"], r["share"] / dec_share
            print(
                f"loader workers={r['workers']} augment={str(r['augment']):5}: {r['rate']:7.1f} pairs/s  "
                f"per worker {per_worker:6.1f}  ratio to decode-only {per_worker / rate:4.2f} "
                f"= {eff:4.2f} x {share:4.2f}   ({1e3 * r['cpu']:.2f} ms CPU/pair, "
                f"{r['share']:.2f} of a core each)"
            )
        print()
        print("where the loader's CPU goes: ms per pair and share of the reading processes' CPU")
        print(_row("", [f"w={r['workers']} aug={'y' if r['augment'] else 'n'}" for r in runs]))
        for stage in (*WORKER_STAGES, "other"):
            print(_row(stage, [_cell(r["stages"][stage], r["cpu"]) for r in runs]))
        print(_row("total", [_cell(r["cpu"], r["cpu"]) for r in runs]))
        print(_row("not decode", [_cell(r["cpu"] - r["stages"]["decode"], r["cpu"]) for r in runs]))
        print(_row("main proc", [f"{1e3 * r['main_cpu']:5.2f}" if r["workers"] else "(above)" for r in runs]))
        print(_row(" unpickle", [f"{1e3 * r['receive']:5.2f}" if r["workers"] else "" for r in runs]))
        print(
            "read: tar parsing and file reads; decode: simplejpeg; augment: crop, resize and colour "
            "jitter (resize only without augmentation); collate: stacking into the batch (new shared memory "
            "in workers); send: pickling a batch in the worker's queue thread; other: per-sample Python, "
            "shuffle buffer, queue and fd-sharing threads, worker start; main proc: the main process's "
            "CPU per pair with workers, unpickle: its part spent receiving batches."
        )


def _cell(seconds: float, total: float) -> str:
    return f"{1e3 * seconds:5.2f} {100 * seconds / total:4.0f}%"


def _row(label: str, cells: list[str]) -> str:
    return f"{label:11}" + "".join(f"{c:>14}  " for c in cells)


if __name__ == "__main__":
    main()
