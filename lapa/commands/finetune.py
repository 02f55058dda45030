"""``lapa finetune`` (``lapa action-stats`` is in ``lapa.commands.stats``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from lapa.commands import add_config_arguments, add_workdir_argument, load_config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="finetune a foundation checkpoint (or a scratch model) to binned robot actions",
        description="Replace the latent head with a continuous action head and train on demonstration "
        "shards (Fabric: one process, DDP or FSDP2 by finetune.training.{devices,num_nodes,strategy}). "
        "A rerun resumes the run of the same inputs (by content) and settings from its newest checkpoint "
        "in WORKDIR/<run identity>/; other inputs or settings start a fresh run. Reads: foundation dir "
        "(omit with finetune.init=scratch), backbones dir, action statistics, demonstration shards. "
        "Writes: a policy directory.",
    )
    p.add_argument(
        "--foundation", default=None, help="foundation checkpoint directory (not with init=scratch)"
    )
    p.add_argument("--backbones", required=True, help="local backbones + tokenizer directory")
    p.add_argument("--action-stats", required=True, help="action statistics JSON (lapa action-stats)")
    p.add_argument("--shards", required=True, help="demonstration shard directory (train/ and val/)")
    p.add_argument("--out", required=True, help="policy directory to write")
    add_workdir_argument(p, "<out>.work beside --out")
    add_config_arguments(p)
    p.set_defaults(func=run_finetune)


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
