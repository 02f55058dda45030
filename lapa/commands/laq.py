"""``lapa train-laq`` and ``lapa label`` (see docs/commands.md)."""

from __future__ import annotations

import argparse
import logging

from lapa.commands import (
    add_config_arguments,
    add_device_argument,
    add_workdir_argument,
    device_from_args,
    load_config_from_args,
)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-laq",
        help="train the latent action quantizer on frame-pair shards",
        description="Train the LAQ. A rerun resumes the run of the same shards (by content) and settings "
        "from its newest checkpoint in WORKDIR/<run identity>/; other shards or settings start a fresh run. "
        "Reads: frame-pair shards. Writes: the checkpoint --out, <stem>.metrics.json, <stem>.recon.png.",
    )
    p.add_argument("--shards", required=True, help="frame-pair shard directory")
    p.add_argument("--out", required=True, help="output checkpoint path (e.g. laq/laq.ckpt)")
    add_workdir_argument(p, "<out dir>/work")
    add_config_arguments(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "label",
        help="label frame-pair shards with latent actions (or binned true actions)",
        description="Label every frame pair with the LAQ's latent codes of (t, t+k) (--targets laq) or with "
        "the binned true action (--targets actions, the action-pretrained arm). Reads: frame-pair shards, "
        "the LAQ checkpoint or the action statistics. Writes: labelled shards in --out (train/, val/, "
        "info.json) and label_report.json (code histograms, code-action diagnostics, action source).",
    )
    p.add_argument("--shards", required=True, help="frame-pair shard directory")
    p.add_argument("--out", required=True, help="output labelled shard directory")
    p.add_argument("--checkpoint", default=None, help="LAQ checkpoint (targets=laq)")
    p.add_argument(
        "--targets",
        choices=["laq", "actions"],
        default="laq",
        help="label with the LAQ's latent codes (laq) or with the binned true actions (actions: the "
        "action-pretrained comparison arm; needs --action-stats and pairs that carry actions)",
    )
    p.add_argument(
        "--action-source",
        choices=["auto", "intended", "executed"],
        default="auto",
        help="targets=actions: which action of a pair is binned: auto (the intended action, the "
        "controller's before exploration noise, where the pair records one, else the executed one), "
        "intended (required on every pair), executed. label_report.json says which was used "
        "(action_source, action_source_counts)",
    )
    p.add_argument("--action-stats", default=None, help="action statistics JSON (targets=actions)")
    add_device_argument(p)
    add_config_arguments(p)
    p.set_defaults(func=run_label)


def run_train(args: argparse.Namespace) -> int:
    from lapa.laq.train import train_laq

    cfg = load_config_from_args(args)
    train_laq(cfg, args.shards, args.out, args.workdir)
    return 0


def run_label(args: argparse.Namespace) -> int:
    from lapa.laq.checkpoint import load_laq
    from lapa.laq.label import LAQTarget, label_shards

    cfg = load_config_from_args(args)
    if args.targets == "actions":
        from lapa.data.action_codec import ActionStats
        from lapa.laq.label import ActionTarget

        if args.action_stats is None:
            raise ValueError("--action-stats is required with --targets actions")
        target, source = (
            ActionTarget(ActionStats.load(args.action_stats), source=args.action_source),
            {"action_stats": args.action_stats},
        )
    else:
        if args.checkpoint is None:
            raise ValueError("--checkpoint is required with --targets laq")
        target = LAQTarget(load_laq(args.checkpoint), device_from_args(args))
        source = {"checkpoint": str(args.checkpoint)}
    report = label_shards(
        args.shards,
        args.out,
        target,
        batch_size=cfg.laq.label_batch_size,
        num_workers=cfg.laq.label_workers,
        on_error=cfg.data.loader.on_error,
        action_bins=cfg.laq.training.action_bins,
        samples_per_shard=cfg.data.sharding.samples_per_shard,
        max_shard_bytes=cfg.data.sharding.max_shard_bytes,
        extra_info=source,
    )
    log.info("labelled %s into %s", report["counts"], args.out)
    if "action_source" in report:
        log.info(
            "action targets from %s actions: %s", report["action_source"], report["action_source_counts"]
        )
    return 0
