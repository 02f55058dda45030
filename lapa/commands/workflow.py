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
        description="Find the CSV metric logs (a 'step' column and columns with 'loss' in their name) under "
        "each run folder and plot every loss against the step. Reads: CSV logs. Writes: OUT/<name>.png.",
    )
    p.add_argument(
        "--logs",
        nargs="+",
        required=True,
        metavar="[NAME=]DIR",
        help="run folders searched recursively for *.csv; NAME (default: the folder name) names the figure",
    )
    p.add_argument("--out", required=True, help="output folder for the PNG figures")
    p.set_defaults(func=_run_plot_curves)


def _loss_tables(folder):
    """Every CSV under ``folder`` with a step column and at least one loss column."""
    import pandas as pd

    tables = []
    for path in sorted(folder.rglob("*.csv")):
        try:
            frame = pd.read_csv(path)
        except Exception as exc:  # a half-written log is reported, not skipped silently
            raise ValueError(f"cannot read CSV log {path}: {exc}") from exc
        losses = [c for c in frame.columns if "loss" in str(c).lower()]
        if "step" in frame.columns and losses:
            tables.append((path, frame, losses))
    return tables


def _run_plot_curves(args: argparse.Namespace) -> int:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lapa.utils.io import atomic_directory

    runs = []
    for entry in args.logs:
        name, sep, folder = entry.partition("=")
        folder = Path(folder if sep else name)
        name = name if sep else folder.name
        if not folder.is_dir():
            raise FileNotFoundError(f"run folder not found: {folder}")
        tables = _loss_tables(folder)
        if not tables:
            raise ValueError(f"no CSV log with 'step' and a loss column under {folder}")
        runs.append((name, tables))
    with atomic_directory(args.out) as tmp:
        for name, tables in runs:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for path, frame, losses in tables:
                for column in losses:
                    series = frame[["step", column]].dropna()
                    if len(series):
                        label = column if len(tables) == 1 else f"{path.parent.name}/{column}"
                        ax.plot(
                            series["step"],
                            series[column],
                            marker="." if len(series) < 30 else None,
                            label=label,
                        )
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(tmp / f"{name}.png", dpi=100)
            plt.close(fig)
    print(f"wrote {len(runs)} figures to {args.out}")
    return 0
