"""``lapa make-backbones`` and ``lapa train-foundation``."""

from __future__ import annotations

import argparse

from lapa.commands import add_config_arguments, add_workdir_argument, load_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-backbones",
        help="write the local backbones directory (vision towers, Llama, tokenizer)",
        description="Build the vision towers (random, or from the local timm weight files in "
        "foundation.vision.*.weights), the Llama (random of foundation.llm's shape, or linked from "
        "foundation.llm.path) and the tokenizer (trained on the shards' instructions, or linked from "
        "foundation.llm.tokenizer_path / llm.path). Reads: shard directories. Writes: DIR.",
    )
    p.add_argument("--instructions", nargs="+", required=True, metavar="SHARD_DIR", help="shard directories")
    p.add_argument("--out", required=True, help="backbones directory to write")
    add_config_arguments(p)
    p.set_defaults(func=_run_make_backbones)

    p = sub.add_parser(
        "train-foundation",
        help="pretrain the VLA on latent-labelled shards (Fabric; single, DDP or FSDP2)",
        description="Train the foundation VLA to predict latent actions. A rerun resumes the run of the same "
        "backbones and shards (by content) and settings from its newest checkpoint in "
        "WORKDIR/<run identity>/; other inputs or settings start a fresh run. Under Slurm: "
        "srun lapa train-foundation ... with "
        "foundation.training.devices (tasks per node) and num_nodes set; locally devices=N starts "
        "N processes. Reads: backbones dir, labelled shards. Writes: the consolidated checkpoint --out.",
    )
    p.add_argument("--backbones", required=True, help="directory written by lapa make-backbones")
    p.add_argument(
        "--shards", required=True, help="latent-labelled shard directory (train/, val/, info.json)"
    )
    p.add_argument("--out", required=True, help="consolidated foundation checkpoint directory to write")
    add_workdir_argument(p, "<out>.work beside --out")
    add_config_arguments(p)
    p.set_defaults(func=_run_train_foundation)


def _run_make_backbones(args: argparse.Namespace) -> int:
    from lapa.vla.backbones import make_backbones, read_instructions

    cfg = load_config_from_args(args)
    needs_text = not (cfg.foundation.llm.tokenizer_path or cfg.foundation.llm.path)
    instructions = read_instructions(args.instructions) if needs_text else []
    make_backbones(cfg.foundation, instructions, args.out)
    return 0


def _run_train_foundation(args: argparse.Namespace) -> int:
    from lapa.foundation.train import train_foundation

    cfg = load_config_from_args(args)
    train_foundation(cfg, args.backbones, args.shards, args.out, args.workdir)
    return 0
