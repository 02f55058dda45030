"""How long `snakemake -n` takes to plan the DAG, default experiment against 1000 video inputs.

Shards are directory outputs, so the DAG has the same jobs however many shards there are; what
grows with the data is the input list of the shards rule (one file per user video). This plans
the default experiment (simulator source) and the same experiment reading 1000 videos, from an
empty results tree and from an up-to-date one (the state after a finished run).

    .venv/bin/python benchmarks/bench_dag.py [--videos 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "lib"))

from lapa_workflow.runner import fake_existing_outputs, planned_jobs, run_snakemake  # noqa: E402


def timed_plan(workdir: Path, config: dict, overrides: list[str] | None, repeats: int) -> tuple[float, int]:
    times, jobs = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = run_snakemake(workdir, "-n", config=config, overrides=overrides).stdout
        times.append(time.perf_counter() - start)
        jobs = sum(planned_jobs(out).values())
    return statistics.median(times), jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = {"experiment": "default"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = root / "videos"
        videos.mkdir()
        for i in range(args.videos):
            (videos / f"clip{i:05d}.mp4").write_bytes(b"")
        many = ["data.source=videos", f"data.videos=[{videos}/*.mp4]"]
        rows = []
        for label, overrides in [("default (simulator)", None), (f"{args.videos} videos", many)]:
            work = root / f"work-{len(rows)}"
            empty, jobs = timed_plan(work, config, overrides, args.repeats)
            fake_existing_outputs(work, config, overrides)
            done, left = timed_plan(work, config, overrides, args.repeats)
            rows.append((label, jobs, empty, done, left))
    print(f"snakemake -n, median of {args.repeats} (seconds, includes interpreter start-up):")
    print(f"{'DAG':<22} {'jobs':>5} {'empty tree':>11} {'up to date':>11} {'jobs left':>10}")
    for label, jobs, empty, done, left in rows:
        print(f"{label:<22} {jobs:>5} {empty:>11.2f} {done:>11.2f} {left:>10}")


if __name__ == "__main__":
    main()
