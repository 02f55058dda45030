"""HTTP serving throughput: requests/s and latency at 1, 4 and 16 concurrent clients on loopback.

Starts ``lapa serve`` on the tiny policy in a subprocess (the clients run in this process, on
the same machine), posts 640x480 PNG camera frames with instructions as multipart requests, and
checks every answer is a 200 with an action. Each server mode is measured in the same run:

- ``unbatched``: ``serve.max_batch_size=1``, one request per forward pass (the baseline);
- ``batched``: the configured batching (``serve.max_batch_size``, ``serve.max_wait_ms``).

Both servers run at once and take turns (``--rounds``) at each client count, so load from other
processes on a shared machine falls on both alike.

``--before CHECKOUT`` adds the server of another checkout (a git worktree of the commit before
batching) as mode ``before``, with no serving override, measured in the same run. Request
counts are bounded (``--requests`` per client count).

    .venv/bin/python benchmarks/bench_serve.py [--clients 1 4 16] [--requests 60 160 320] [--rounds 2]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODES = {"unbatched": ["serve.max_batch_size=1"], "batched": []}


def camera_frames(count: int, seed: int = 0) -> list[bytes]:
    """640x480 PNGs of smooth colour fields with sensor noise (about 0.5 MB each, like a camera frame)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.BILINEAR), dtype=np.float32)
        frame = np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def make_policy(source: Path, root: Path) -> Path:
    """The tiny untrained test policy, written by the checkout ``source`` (in its own format)."""
    code = (
        "import sys; from pathlib import Path; "
        "from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config; "
        "root = Path(sys.argv[1]); cfg = tiny_config(); "
        "make_untrained_policy(cfg, make_tiny_inputs(root, cfg), root / 'policy')"
    )
    env = dict(os.environ, PYTHONPATH=str(source))
    subprocess.run(
        [sys.executable, "-c", code, str(root)], cwd=source, env=env, check=True, capture_output=True
    )
    return root / "policy"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lapa serve`` in a subprocess, on a free loopback port."""

    def __init__(self, policy: Path, overrides: list[str], threads: int, cwd: Path) -> None:
        self.port = _free_port()
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(cwd))
        cmd = [sys.executable, "-m", "lapa", "serve", "--policy", str(policy), "--port", str(self.port)]
        cmd += ["--device", "cpu", "-c", "tiny", *overrides]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"lapa serve exited:\n{self.log.read().decode(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("lapa serve did not answer /health in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def load(url: str, frames: list[bytes], texts: list[str], clients: int, total: int) -> dict:
    """``clients`` threads each with its own connection post ``total`` requests in all."""
    import httpx

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            # one untimed request opens the connection
            client.post("/act", files={"image": ("f.png", frames[0])}, data={"instruction": texts[0]})
            barrier.wait()
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                r = client.post(
                    "/act",
                    files={"image": ("f.png", frames[i % len(frames)], "image/png")},
                    data={"instruction": texts[i % len(texts)]},
                )
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    if r.status_code == 200 and len(r.json()["action"]) > 0:
                        latencies.append(ms)
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[0]}")
    ms = np.asarray(latencies)
    return {"ms": ms, "wall": wall}


def _pool(runs: list[dict]) -> dict:
    """Requests/s over all rounds (requests over summed wall time) and latency percentiles of all requests."""
    ms = np.concatenate([r["ms"] for r in runs])
    return {
        "rps": len(ms) / sum(r["wall"] for r in runs),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "n": len(ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, nargs="+", default=[60, 160, 320], help="per client count")
    parser.add_argument("--modes", nargs="+", default=["unbatched", "batched"], choices=list(MODES))
    parser.add_argument("--rounds", type=int, default=2, help="turns each mode takes per client count")
    parser.add_argument("--threads", type=int, default=1, help="the server's network threads (serve.threads)")
    parser.add_argument("--source", default=str(ROOT), help="checkout whose lapa serves (default: this one)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every server mode")
    parser.add_argument(
        "--before",
        default=None,
        help="another checkout (e.g. a git worktree of an earlier commit) served as mode 'before', as it is",
    )
    args = parser.parse_args()
    if len(args.requests) != len(args.clients):
        parser.error("--requests needs one count per --clients entry")
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.policy import INSTRUCTIONS

    frames = camera_frames(8)
    texts = list(INSTRUCTIONS)
    print(
        f"lapa serve, tiny policy, {len(frames)} distinct 640x480 PNG frames "
        f"(mean {np.mean([len(f) for f in frames]) / 1e3:.0f} kB), multipart, loopback, "
        f"{os.cpu_count()} CPUs, server torch threads {args.threads}"
    )
    modes = [*args.modes, *(["before"] if args.before else [])]
    results: dict[str, dict[int, dict]] = {mode: {} for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        policy = make_policy(Path(args.source), Path(tmp) / "now")
        # every server up at once (an idle one costs nothing); the modes take turns on each client
        # count, round after round, so load from other processes falls on them alike
        servers = {
            mode: Server(
                policy,
                [f"serve.threads={args.threads}", *MODES[mode], *args.extra],
                args.threads,
                Path(args.source),
            )
            for mode in args.modes
        }
        if args.before:
            # no serving override (an earlier checkout may not know them); OMP_NUM_THREADS sets its threads
            before = make_policy(Path(args.before), Path(tmp) / "before")  # in the format it reads
            servers["before"] = Server(before, [], args.threads, Path(args.before))
        try:
            for server in servers.values():
                server.wait()
            for clients, total in zip(args.clients, args.requests):
                runs: dict[str, list[dict]] = {mode: [] for mode in modes}
                for _ in range(args.rounds):
                    for mode, server in servers.items():
                        runs[mode].append(load(server.url, frames, texts, clients, total // args.rounds))
                for mode in modes:
                    r = _pool(runs[mode])
                    results[mode][clients] = r
                    print(
                        f"{mode:<10} {clients:>3} clients  {r['rps']:7.1f} requests/s  "
                        f"p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  ({r['n']} requests)",
                        flush=True,
                    )
        finally:
            for server in servers.values():
                server.stop()
    for base in ("unbatched", "before"):
        if base not in results or "batched" not in results:
            continue
        print(f"batched against {base} (same run):")
        for clients in args.clients:
            b, u = results["batched"][clients], results[base][clients]
            print(
                f"  {clients:>3} clients: throughput x{b['rps'] / u['rps']:.2f}, "
                f"p50 {b['p50'] - u['p50']:+.2f} ms"
            )


if __name__ == "__main__":
    main()
