"""Policy latency of the 7B configuration (SigLIP-SO400M + DINOv2-L at 224 px, Llama-2-7B) on a GPU.

Spec target: under 100 ms for one image + instruction (OpenVLA reports ~6 actions/s on an RTX 4090).
The network is built from configs/model/vla_7b.yaml with random weights in bf16 directly on the
GPU (latency does not depend on the weights); preprocessing, the forward pass and dequantisation
run exactly as in ``LAPAPolicy.predict``. Prints predict() latency at batch 1 (median, p99),
throughput at batch 32, the bare network as a baseline, and peak GPU memory. Without a GPU it
prints a message and exits 0.

    .venv/bin/python benchmarks/gpu_policy_7b.py [--iters 50] [--action-dim 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _compose_7b_config():
    from lapa.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    with tempfile.TemporaryDirectory() as tmp:
        exp = Path(tmp) / "experiment" / "vla7b_bench.yaml"
        exp.parent.mkdir()
        exp.write_text(
            "defaults:\n  - data/metaworld_small\n  - model/laq_tiny\n  - model/vla_7b\n  - cluster/local\n"
            "name: vla7b_bench\n"
        )
        return load_config(exp, configs_root=root)


def _timings(fn, iters: int, warmup: int) -> np.ndarray:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = np.empty(iters)
    for i in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out[i] = (time.perf_counter() - t) * 1000
    return out


def _row(name: str, ms: np.ndarray, batch: int) -> str:
    med = float(np.median(ms))
    return (
        f"{name:<36} batch {batch:>3}  median {med:8.2f} ms  p99 {np.percentile(ms, 99):8.2f} ms  "
        f"{1000 * batch / med:8.1f} actions/s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--batch-iters", type=int, default=10)
    parser.add_argument("--action-dim", type=int, default=7)
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_policy_7b: no CUDA GPU available; this benchmark needs one (nothing measured).")
        return 0

    from lapa.data.action_codec import ActionStats
    from lapa.policy.build import build_policy_model
    from lapa.policy.policy import INPUT_NAMES, LAPAPolicy
    from lapa.vla.tokenizer import train_llama_tokenizer

    cfg = _compose_7b_config()
    fcfg = cfg.foundation
    instructions = [
        "pick up the red block",
        "open the top drawer",
        "push the button",
        "put the cup in the sink",
    ]
    tokenizer = train_llama_tokenizer(instructions * 8, 400)
    stats = ActionStats.from_actions(np.random.default_rng(0).uniform(-1, 1, (1000, args.action_dim)))
    t0 = time.perf_counter()
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = build_policy_model(
                fcfg, stats.action_dim, stats.num_bins, vocab_size=int(fcfg.llm.vocab_size)
            )
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval()
    build_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    pre = {
        "shard_resize": 224,
        "shard_crop": 224,
        "loader_image_size": 224,
        "image_size": int(fcfg.vision.image_size),
        "max_text_tokens": int(fcfg.max_text_tokens),
    }
    policy = LAPAPolicy(model, tokenizer, stats, pre, {}, device="cuda")

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16")
    print(
        f"7B policy: {params / 1e9:.2f} B parameters, {model.num_image_tokens} image tokens, "
        f"built in {build_s:.1f} s"
    )
    rng = np.random.default_rng(0)
    camera = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    text = instructions[0]
    inputs = policy.processor(policy.prepare_images([camera]), [text])
    tensors = tuple(inputs[k].to("cuda") for k in INPUT_NAMES)

    def bare():
        with torch.inference_mode():
            model(*tensors)

    torch.cuda.reset_peak_memory_stats()
    print(_row("network only (baseline)", _timings(bare, args.iters, 5), 1))
    b1 = _timings(lambda: policy.predict(camera, text), args.iters, 5)
    print(_row("predict(480x640 frame, instruction)", b1, 1))
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(32)]
    print(
        _row(
            "predict_batch(32)",
            _timings(lambda: policy.predict_batch(images, [text] * 32), args.batch_iters, 2),
            32,
        )
    )
    print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    verdict = "meets" if np.median(b1) < 100 else "misses"
    print(f"spec target < 100 ms at batch 1: {verdict} (median {np.median(b1):.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
