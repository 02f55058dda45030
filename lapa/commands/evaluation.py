"""Evaluation commands."""

from __future__ import annotations

import argparse

from lapa.commands import add_config_arguments, load_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-offline",
        help="action MSE and bin accuracy of a policy on held-out demonstration shards",
        description="Predict actions on one split of demonstration shards (--split, default val). "
        "Reads: policy directory, demonstration shards. "
        "Writes: metrics.json and actions.png in the output directory.",
    )
    p.add_argument("--policy", required=True, help="policy directory (lapa finetune)")
    p.add_argument(
        "--shards", required=True, help="demonstration shard directory (the --split subfolder is read)"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--split", default="val", help="which split to evaluate (default: val)")
    add_config_arguments(p)
    p.set_defaults(func=run_eval_offline)


def run_eval_offline(args: argparse.Namespace) -> int:
    import torch

    from lapa.evaluation.offline import evaluate_offline
    from lapa.policy import LAPAPolicy

    cfg = load_config_from_args(args)
    policy = LAPAPolicy.from_pretrained(args.policy, device="cuda" if torch.cuda.is_available() else "cpu")
    evaluate_offline(
        policy,
        args.shards,
        args.out,
        cfg.data.loader,
        plot_episodes=cfg.evaluation.plot_episodes,
        split=args.split,
    )
    return 0
