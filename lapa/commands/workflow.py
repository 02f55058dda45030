"""Commands about the experiment config itself (used by the Snakemake workflow)."""

from __future__ import annotations

import argparse
import json

from lapa.commands import add_config_arguments, load_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the composed experiment config (YAML or JSON), whole or selected keys",
        description="Compose configs/experiment/<name>.yaml with its defaults and overrides and print it. "
        "Reads: config files. Writes: stdout.",
    )
    add_config_arguments(p)
    p.add_argument("--section", action="append", default=[], help="print only these sections (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    p.set_defaults(func=_run_config)
    register_plot_curves(sub)


def _run_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    cfg = load_config_from_args(args)
    if args.section:
        data = {}
        missing = object()
        for section in args.section:
            value = OmegaConf.select(cfg, section, default=missing)
            if value is missing:
                raise ValueError(f"no config key {section!r}")
            data[section] = (
                OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            )
    else:
        data = OmegaConf.to_container(cfg, resolve=True)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(OmegaConf.to_yaml(OmegaConf.create(data)), end="")
    return 0


def register_plot_curves(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot-curves",
        help="plot the loss curves of training runs from their CSV logs (PNG per run)",
        description="Read each run's CSV metric logs (a 'step' column and columns with 'loss' in their "
        "name; a CSV file or a folder searched recursively) and plot every loss against the step. "
        "Reads: CSV logs. Writes: OUT/<name>.png.",
    )
    p.add_argument(
        "--logs",
        nargs="+",
        required=True,
        metavar="[NAME=]PATH",
        help="a run's CSV log or folder of logs (searched recursively); NAME (default: the file or folder "
        "name without suffix) names the figure",
    )
    p.add_argument("--out", required=True, help="output folder for the PNG figures")
    p.set_defaults(func=_run_plot_curves)


def _run_plot_curves(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lapa.evaluation.curves import plot_loss_curves

    runs = {}
    for entry in args.logs:
        name, sep, source = entry.partition("=")
        source = source if sep else name
        name = name if sep else Path(source).stem
        if name in runs:
            raise ValueError(f"--logs names the run {name!r} twice")
        runs[name] = source
    written = plot_loss_curves(runs, args.out)
    print(f"wrote {len(written)} figures to {args.out}")
    return 0
