"""Training throughput of the CPU foundation configuration (model/vla_tiny + training/vla_cpu).

Prints samples/s of the full training loop (shards -> loader -> processor -> forward/backward/AdamW)
against a baseline measured in the same run: the model step alone on ready tensors. The gap is
the cost of data loading and preprocessing.

    .venv/bin/python benchmarks/bench_foundation.py [--steps 40] [--batch 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENT = """defaults:
  - data/metaworld_small
  - model/vla_tiny
  - training/vla_cpu
  - cluster/local
name: bench_foundation
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    from lapa.config import load_config
    from lapa.foundation.train import train_foundation
    from lapa.utils.optim import make_optimizer
    from lapa.vla.backbones import load_backbones, make_backbones, read_instructions
    from lapa.vla.heads import LatentActionHead
    from lapa.vla.model import VLAModel
    from lapa.vla.processor import VLAProcessor
    from tests.fixtures.foundation import write_labelled_shards

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "exp").mkdir()
        (root / "exp" / "b.yaml").write_text(EXPERIMENT)
        overrides = [
            f"foundation.training.max_steps={args.steps}",
            f"foundation.training.batch_size_per_device={args.batch}",
            f"foundation.training.effective_batch_size={args.batch}",
            f"foundation.training.cpu_threads={args.threads}",
            "foundation.training.val_samples=0",
            "foundation.training.checkpoint_every_steps=0",
            f"logging.log_every_steps={max(1, args.steps // 2)}",  # the second window is steady state
            f"data.loader.num_workers={args.workers}",
        ]
        cfg = load_config(root / "exp" / "b.yaml", overrides, configs_root=CONFIGS)
        shards = root / "shards"
        write_labelled_shards(
            shards, num_train=256, samples_per_shard=64, image_size=cfg.data.loader.image_size
        )
        make_backbones(cfg.foundation, read_instructions([shards]), root / "bb")

        # baseline: the model step alone on one ready batch
        bb = load_backbones(root / "bb")
        fcfg = cfg.foundation
        model = VLAModel(
            fcfg, num_queries=4, head=LatentActionHead(bb.llm.config.hidden_size, 4, 8), llm=bb.llm
        )
        model.vision.load_state_dict(bb.vision_state)
        optimizer, _ = make_optimizer(model, fcfg.training)
        processor = VLAProcessor(bb.tokenizer, fcfg.vision.image_size, fcfg.max_text_tokens)
        images = torch.randint(
            0, 256, (args.batch, 3, fcfg.vision.image_size, fcfg.vision.image_size), dtype=torch.uint8
        )
        inputs = processor(images, ["push the puck to the goal"] * args.batch)
        targets = torch.randint(0, 8, (args.batch, 4))

        def step() -> None:
            logits = model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(3):
            step()
        start = time.perf_counter()
        for _ in range(args.steps // 2):
            step()
        model_only = args.batch * (args.steps // 2) / (time.perf_counter() - start)

        result = train_foundation(cfg, root / "bb", shards, root / "out")
        full = result["train/samples_per_s"]

    print(f"threads={args.threads} batch={args.batch} steps={args.steps} loader_workers={args.workers}")
    print(f"model step only (baseline): {model_only:8.1f} samples/s")
    print(f"full training loop:         {full:8.1f} samples/s  ({full / model_only:.2f} x baseline)")


if __name__ == "__main__":
    main()
