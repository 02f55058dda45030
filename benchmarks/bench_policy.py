"""Policy inference speed in the CPU configuration (tiny VLA, 64 px): PyTorch eager against ONNX Runtime.

Prints, for each backend, ``predict()`` latency at batch 1 end to end (preprocessing, network,
dequantisation; p50 and p99, ms) on a 64x64 image and on a 480x640 camera frame, and
``predict_batch()`` throughput at batch 32. Baselines in the same run: PyTorch eager (the
reference backend) and the bare network of each backend on preprocessed tensors (what
preprocessing and dequantisation add). The measurements take turns call by call, so load from
other processes falls on all of them alike. The goal line compares ONNX ``predict`` p50 with 3 ms.

One intra-op thread by default: at batch 1 on a 2-core machine shared with other processes,
two threads make PyTorch eager many times slower (its parallel regions wait for a descheduled
thread) and ONNX Runtime several times slower; pass --threads 2 to see it.

    .venv/bin/python benchmarks/bench_policy.py [--iters 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _timings(fns: list, iters: int, warmup: int = 10) -> list[np.ndarray]:
    """Milliseconds per call of each function, the functions taking turns call by call.

    Interleaving gives every function the same share of whatever else the machine is doing, so
    the ratios hold on a shared machine even when the absolute figures move.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    out = [np.empty(iters) for _ in fns]
    for i in range(iters):
        for fn, times in zip(fns, out):
            t = time.perf_counter()
            fn()
            times[i] = (time.perf_counter() - t) * 1000
    return out


def _row(name: str, ms: np.ndarray, batch: int) -> str:
    med = float(np.median(ms))
    return (
        f"{name:<44} batch {batch:>3}  p50 {med:7.2f} ms  p99 {np.percentile(ms, 99):7.2f} ms  "
        f"{1000 * batch / med:8.1f} actions/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch-iters", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))

    from lapa.policy import LAPAPolicy
    from lapa.policy.policy import INPUT_NAMES
    from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = tiny_config()
        path = make_untrained_policy(cfg, make_tiny_inputs(root, cfg), root / "policy")
        policies = {
            "torch": LAPAPolicy.from_pretrained(path),
            "onnx": LAPAPolicy.from_pretrained(path, backend="onnx", threads=args.threads),
        }
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        camera = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        text = "push the block to the goal"
        reference = policies["torch"]
        inputs = reference.processor(reference.prepare_images([image]), [text])
        tensors = tuple(inputs[k] for k in INPUT_NAMES)
        feed = {k: inputs[k].numpy() for k in INPUT_NAMES}
        images32 = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(32)]
        texts32 = [text] * 32

        def torch_network():
            with torch.inference_mode():
                reference.model(*tensors)

        session = policies["onnx"].session
        print(
            f"CPU configuration: {cfg.foundation.vision.image_size} px, "
            f"Llama {cfg.foundation.llm.num_hidden_layers}x{cfg.foundation.llm.hidden_size}, "
            f"{args.threads} threads, torch {torch.__version__}, "
            f"onnxruntime {__import__('onnxruntime').__version__}"
        )
        p50 = {}
        rows = [
            ("torch network only (baseline)", torch_network, 1),
            ("onnx network only", lambda: session.run(["logits"], feed), 1),
            ("prepare_images(480x640 camera frame)", lambda: reference.prepare_images([camera]), 1),
        ]
        for backend, policy in policies.items():
            rows += [
                (f"{backend} predict(64x64 image, instruction)", lambda p=policy: p.predict(image, text), 1),
                (f"{backend} predict(480x640 camera frame)", lambda p=policy: p.predict(camera, text), 1),
            ]
        for (name, _, batch), ms in zip(rows, _timings([fn for _, fn, _ in rows], args.iters)):
            p50[name] = float(np.median(ms))
            print(_row(name, ms, batch), flush=True)
        batched = [lambda p=policy: p.predict_batch(images32, texts32) for policy in policies.values()]
        for backend, ms in zip(policies, _timings(batched, args.batch_iters, warmup=2)):
            print(_row(f"{backend} predict_batch(32 images)", ms, 32), flush=True)
        for size in ("64x64 image, instruction", "480x640 camera frame"):
            t, o = p50[f"torch predict({size})"], p50[f"onnx predict({size})"]
            goal = "met" if o <= 3.0 else "NOT met"
            print(
                f"predict({size}) p50: onnx {o:.2f} ms vs torch {t:.2f} ms (x{t / o:.1f}); "
                f"goal <= 3 ms {goal}"
            )


if __name__ == "__main__":
    main()
