"""Offline action MSE of the binned head's decodings (and of the bin-order targets), measured in one run.

The figure is the MSE of actions normalised to [-1, 1] by the action statistics (what
``lapa eval-offline`` reports) on held-out demonstration frames. Every row decodes the same logits
twice: ``argmax`` (the baseline: the most probable bin's centre) and ``expectation`` (the
probability-weighted mean of the bin centres).

Two modes:

    # every policy of a workflow run (policy/<arm>[/seed<N>]) on its held-out demonstrations, no training
    .venv/bin/python benchmarks/bench_decoding.py --results results/default [--experiment default]

    # the synthetic colour task (tests.fixtures.policy) finetuned from scratch with each target, same
    # seed and batches: one-hot (baseline), Gaussian label smoothing, L1 on the expectation
    .venv/bin/python benchmarks/bench_decoding.py --synthetic [--steps 80] [--sigma 2] [--l1 0.5]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def decoding_mse(policy, shards, loader_cfg) -> tuple[int, dict[str, float]]:
    """(frames, {decoding: normalised-action MSE}) over the val split, one forward pass per batch."""
    from lapa.evaluation.metrics import ActionMetrics
    from lapa.evaluation.offline import collect_predictions

    records = collect_predictions(policy, shards, loader_cfg, "val")
    out = {}
    for decoding, pred in records["pred"].items():
        acc = ActionMetrics(policy.stats)
        acc.update(records["pred_bins"], records["true"], pred_actions=pred)
        out[decoding] = acc.compute()["mse"]
    return len(records["true"]), out


def _row(name: str, frames: int, mse: dict[str, float], seconds: float) -> None:
    a, e = mse["argmax"], mse["expectation"]
    print(f"{name:28} {frames:7d} {a:14.4f} {e:14.4f} {e / a:9.2f} {seconds:8.1f}")


def _header(first: str) -> None:
    print(f"{first:28} {'frames':>7} {'argmax (base)':>14} {'expectation':>14} {'ratio':>9} {'seconds':>8}")


def run_results(results: Path, experiment: str) -> int:
    from lapa.config import load_config
    from lapa.policy import LAPAPolicy

    cfg = load_config(experiment, [], configs_root=ROOT / "configs")
    shards = results / "shards" / "demos"
    policies = sorted(p.parent for p in (results / "policy").glob("**/config.json"))
    if not policies:
        print(f"no policy directories under {results / 'policy'}", file=sys.stderr)
        return 1
    _header("policy")
    for path in policies:
        start = time.perf_counter()
        policy = LAPAPolicy.from_pretrained(path)
        frames, mse = decoding_mse(policy, shards, cfg.data.loader)
        _row(str(path.relative_to(results / "policy")), frames, mse, time.perf_counter() - start)
    return 0


def run_synthetic(steps: int, sigma: float, l1: float, episodes: int, seed: int) -> int:
    sys.path.insert(0, str(ROOT))
    from lapa.finetune.train import finetune
    from lapa.policy import LAPAPolicy
    from tests.fixtures.policy import make_tiny_inputs, tiny_config

    base = [
        f"finetune.training.max_steps={steps}",
        "finetune.training.val_every_steps=0",
        f"finetune.training.checkpoint_every_steps={steps}",
        "finetune.training.cpu_threads=1",
        "finetune.init=scratch",
        f"seed={seed}",
    ]
    targets = {
        "one-hot (base)": [],
        f"label_sigma={sigma:g}": [f"finetune.label_sigma={sigma}"],
        f"l1_weight={l1:g}": [f"finetune.l1_weight={l1}"],
        f"sigma={sigma:g}+l1={l1:g}": [f"finetune.label_sigma={sigma}", f"finetune.l1_weight={l1}"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = tiny_config(base)
        inputs = make_tiny_inputs(root, cfg, num_episodes=episodes)
        print(f"synthetic colour task: {episodes} episodes, {steps} steps from scratch, seed {seed}")
        _header("target")
        for i, (name, extra) in enumerate(targets.items()):
            start = time.perf_counter()
            cfg = tiny_config([*base, *extra])
            out = root / f"policy-{i}"
            finetune(
                cfg,
                foundation_dir=None,
                backbones_dir=inputs["backbones"],
                action_stats_path=inputs["action_stats"],
                shards_dir=inputs["shards"],
                out_dir=out,
            )
            frames, mse = decoding_mse(LAPAPolicy.from_pretrained(out), inputs["shards"], cfg.data.loader)
            _row(name, frames, mse, time.perf_counter() - start)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--results", type=Path, help="a workflow output directory (holds policy/ and shards/)")
    mode.add_argument("--synthetic", action="store_true", help="finetune the synthetic task per target")
    parser.add_argument("--experiment", default="default", help="config whose data.loader reads the shards")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--l1", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    np.set_printoptions(precision=4)
    if args.results is not None:
        return run_results(args.results, args.experiment)
    return run_synthetic(args.steps, args.sigma, args.l1, args.episodes, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
