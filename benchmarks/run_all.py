"""Run every CPU benchmark in bounded time and write docs/benchmarks.md from what they print.

Each script prints its figures beside a baseline measured in the same run (this machine may be
shared, so the ratios are the figures that carry over). The report records the machine (cores,
CPU model, memory), the commit, the date and each command, so every figure in it can be
reproduced with the command shown next to it.

    .venv/bin/python benchmarks/run_all.py                 # all, then write docs/benchmarks.md
    .venv/bin/python benchmarks/run_all.py --only laq policy --out /tmp/b.md

GPU scripts (``benchmarks/gpu_*.py``) are not run here: they need a GPU node.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, arguments, timeout in seconds, what it measures). Sizes keep the whole run near 20
# minutes on 2 cores; the scripts' own defaults are larger.
BENCHMARKS: list[tuple[str, list[str], int, str]] = [
    (
        "laq",
        ["--steps", "10", "--base-steps", "2", "--label-videos", "60"],
        900,
        "LAQ training and labelling",
    ),
    ("foundation", ["--steps", "20"], 600, "tiny VLA training loop against the bare model step"),
    ("policy", ["--iters", "200", "--batch-iters", "10"], 600, "predict latency, PyTorch and ONNX Runtime"),
    ("serve", ["--rounds", "1"], 900, "HTTP serving throughput and latency, batched and unbatched"),
    ("loader", ["--pairs", "400"], 600, "WebDataset loader against decode-only"),
    ("shards", [], 600, "shard building pairs/s"),
    ("shard_memory", [], 1200, "peak RSS of shard building against video length"),
    ("sim", ["--frames", "100", "--episodes", "6"], 600, "Meta-World rendering and expert rollouts"),
    ("meta_init", [], 1200, "peak RSS per rank, meta-device FSDP2 loading against eager"),
    ("dag", ["--videos", "1000", "--repeats", "2"], 600, "snakemake -n planning time"),
]


def _machine() -> dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import torch

    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "lapa", "benchmarks", "configs")
    return f"{sha}{' (with uncommitted changes)' if dirty else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS], help="run only these")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()

    selected = [b for b in BENCHMARKS if not args.only or b[0] in args.only]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = dt.datetime.now(dt.timezone.utc)
    sections, failures = [], 0
    for name, extra, timeout, what in selected:
        cmd = [sys.executable, f"benchmarks/bench_{name}.py", *extra]
        shown = " ".join(shlex.quote(c) for c in [".venv/bin/python", *cmd[1:]])
        print(f"== {name}: {shown}", flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            output, status = proc.stdout.strip(), "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
            if proc.returncode != 0:
                output += "\n" + proc.stderr.strip()[-3000:]
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            output, status = out.strip(), f"stopped after {timeout} s"
        seconds = time.perf_counter() - t0
        failures += status != "ok"
        print(output, flush=True)
        sections.append(f"## {name}: {what}\n\n`{shown}` ({status}, {seconds:.0f} s)\n\n```\n{output}\n```\n")

    machine = _machine()
    header = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/run_all.py` (`make bench`); do not edit by hand. Each figure is printed",
        "beside a baseline measured in the same run; on a shared machine the ratios are what carry over.",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- commit: {_commit()}",
        f"- machine: {machine['cores']} cores, {machine['cpu']}, {machine['memory']} memory",
        f"- GPU: {machine['gpu']}",
        f"- software: Python {machine['python']}, torch {machine['torch']}",
        f"- benchmarks run: {', '.join(b[0] for b in selected)} ({len(selected)} of {len(BENCHMARKS)})",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(header) + "\n" + "\n".join(sections))
    os.replace(tmp, out)
    print(f"wrote {out} ({len(sections)} benchmarks, {failures} not ok)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
