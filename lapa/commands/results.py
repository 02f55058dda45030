"""``lapa results``: the table comparing the arms of an experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from lapa.commands import add_config_arguments, load_config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "results",
        help="tabulate success rates per arm and task, offline errors and LAQ diagnostics",
        description="Reads evaluation directories (.../eval/<arm>/sim and .../eval/<arm>/offline, each with "
        "a metrics.json) and optionally the LAQ metrics and label report. Writes OUT/results.md, results.csv "
        "(success rate with confidence interval per arm and task), offline.csv, laq_diagnostics.csv and "
        "results.json.",
    )
    add_config_arguments(p)
    p.add_argument("--inputs", nargs="+", required=True, help="evaluation directories named sim or offline")
    p.add_argument("--laq-metrics", default=None, help="the LAQ's metrics JSON (laq.metrics.json)")
    p.add_argument("--label-report", default=None, help="the labelling report (label_report.json)")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from lapa.evaluation.results import write_results

    cfg = load_config_from_args(args)
    write_results(
        args.inputs,
        args.out,
        laq_metrics=args.laq_metrics,
        label_report=args.label_report,
        title=f"Results: {cfg.name}",
    )
    print(Path(args.out, "results.md").read_text())
    return 0
