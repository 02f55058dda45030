"""Policy inference speed in the CPU configuration (tiny VLA, 64 px).

Prints predict() latency at batch 1 (median and p99, ms) and predict_batch() throughput at
batch 32 (actions/s). Baselines in the same run: the bare network on preprocessed tensors (what
preprocessing and dequantisation add) and the exported ONNX graph under onnxruntime.

    .venv/bin/python benchmarks/bench_policy.py [--iters 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _timings(fn, iters: int, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1000
    return out


def _row(name: str, ms: np.ndarray, batch: int) -> str:
    med = float(np.median(ms))
    return (
        f"{name:<38} batch {batch:>3}  median {med:8.2f} ms  p99 {np.percentile(ms, 99):8.2f} ms  "
        f"{1000 * batch / med:9.1f} actions/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lapa.policy import LAPAPolicy
    from lapa.policy.export import INPUT_NAMES, export_onnx
    from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = tiny_config()
        policy = LAPAPolicy.from_pretrained(
            make_untrained_policy(cfg, make_tiny_inputs(root, cfg), root / "policy")
        )
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        camera = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        text = "push the block to the goal"
        inputs = policy.processor(policy.prepare_images([image]), [text])
        tensors = tuple(inputs[k] for k in INPUT_NAMES)

        def bare():
            with torch.inference_mode():
                policy.model(*tensors)

        print(
            f"CPU configuration: {cfg.foundation.vision.image_size} px, "
            f"Llama {cfg.foundation.llm.num_hidden_layers}x{cfg.foundation.llm.hidden_size}, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}"
        )
        print(_row("network only (baseline)", _timings(bare, args.iters), 1))
        print(
            _row(
                "predict(64x64 image, instruction)",
                _timings(lambda: policy.predict(image, text), args.iters),
                1,
            )
        )
        print(
            _row(
                "predict(480x640 camera frame)", _timings(lambda: policy.predict(camera, text), args.iters), 1
            )
        )

        import onnxruntime as ort

        onnx_path = export_onnx(policy, root / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {k: inputs[k].numpy() for k in INPUT_NAMES}
        print(_row("onnxruntime network only", _timings(lambda: session.run(None, feed), args.iters), 1))

        images32 = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(32)]
        texts32 = [text] * 32
        batch_ms = _timings(lambda: policy.predict_batch(images32, texts32), args.batch_iters, warmup=2)
        print(_row("predict_batch(32 images)", batch_ms, 32))


if __name__ == "__main__":
    main()
