"""``lapa action-stats``: per-dimension quantiles and bins of the demonstration actions.

A module of its own, importing only the action codec and the shard reader, so that the
workflow's fingerprint of this command does not follow the finetuning code.
"""

from __future__ import annotations

import argparse
import logging

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
