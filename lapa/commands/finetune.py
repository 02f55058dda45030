"""``lapa action-stats`` and ``lapa finetune``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lapa.commands import add_config_arguments, load_config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "action-stats",
        help="per-dimension action quantiles and 256-bin discretisation of demonstration actions",
        description="Compute the low/high quantiles of every action dimension over the training "
        "demonstrations (finetune.stats). Reads: demonstration shards. Writes: action statistics JSON.",
    )
    p.add_argument("--shards", required=True, help="demonstration shard directory")
    p.add_argument("--out", required=True, help="output JSON file (e.g. action_stats.json)")
    add_config_arguments(p)
    p.set_defaults(func=run_action_stats)

    p = sub.add_parser(
        "finetune",
        help="finetune a foundation checkpoint (or a scratch model) to binned robot actions",
        description="Replace the latent head with a continuous action head and train on demonstration "
        "shards. Reads: foundation dir (omit with finetune.init=scratch), backbones dir, action "
        "statistics, demonstration shards. Writes: a policy directory.",
    )
    p.add_argument(
        "--foundation", default=None, help="foundation checkpoint directory (not with init=scratch)"
    )
    p.add_argument("--backbones", required=True, help="local backbones + tokenizer directory")
    p.add_argument("--action-stats", required=True, help="action statistics JSON (lapa action-stats)")
    p.add_argument("--shards", required=True, help="demonstration shard directory (train/ and val/)")
    p.add_argument("--out", required=True, help="policy directory to write")
    p.add_argument("--workdir", default=None, help="checkpoints and logs (default: <out>.work beside --out)")
    add_config_arguments(p)
    p.set_defaults(func=run_finetune)


def run_action_stats(args: argparse.Namespace) -> int:
    from lapa.data.action_codec import ActionStats
    from lapa.data.shard_reader import read_shard_actions

    cfg = load_config_from_args(args)
    sc = cfg.finetune.stats
    actions, report = read_shard_actions(args.shards, sc.split, on_error=cfg.data.loader.on_error)
    stats = ActionStats.from_actions(actions, sc.low_quantile, sc.high_quantile, sc.num_bins)
    stats.save(args.out)
    log.info(
        "action statistics of %d samples (%d skipped) from %d shards -> %s: %s",
        report["samples"],
        report["skipped"],
        report["shards"],
        args.out,
        stats,
    )
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from lapa.finetune.train import finetune

    cfg = load_config_from_args(args)
    finetune(
        cfg,
        foundation_dir=args.foundation,
        backbones_dir=args.backbones,
        action_stats_path=args.action_stats,
        shards_dir=args.shards,
        out_dir=Path(args.out),
        workdir=Path(args.workdir) if args.workdir else None,
    )
    return 0
