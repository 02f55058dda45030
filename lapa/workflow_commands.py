"""Commands about the experiment config itself (used by the Snakemake workflow)."""

from __future__ import annotations

import argparse
import json

from lapa.cli import add_config_arguments, load_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the composed experiment config (YAML), or one section's fingerprint",
        description="Compose configs/experiment/<name>.yaml with its defaults and overrides and print it. "
        "Reads: config files. Writes: stdout.",
    )
    add_config_arguments(p)
    p.add_argument("--section", action="append", default=[], help="print only these sections (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    cfg = load_config_from_args(args)
    if args.section:
        data = {s: OmegaConf.to_container(OmegaConf.select(cfg, s), resolve=True) for s in args.section}
    else:
        data = OmegaConf.to_container(cfg, resolve=True)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(OmegaConf.to_yaml(OmegaConf.create(data)), end="")
    return 0
