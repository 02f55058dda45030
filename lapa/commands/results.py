"""``lapa results``: the table comparing the arms of an experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from lapa.commands import add_config_arguments, load_config_from_args

DESCRIPTION = """\
Reads closed-loop and offline evaluation directories (each a folder named sim or offline holding
a metrics.json), optionally the LAQ metrics, the labelling report and foundation checkpoints, and
writes into OUT: results.md (the table), results.csv (success per arm and task, episodes pooled
over finetuning seeds, Wilson interval), results_by_seed.csv, comparison.csv (each arm against
scratch: mean paired difference over task x finetuning-seed cells, stratified-bootstrap interval,
Cochran-Mantel-Haenszel p-value), offline.csv, laq_diagnostics.csv and foundation.csv (each figure
beside its chance level) and results.json.

Each --inputs entry is [ARM[@SEED]=]DIR. Without a label the arm is the folder above DIR
(.../eval/<arm>/sim); a folder named seed<N> between them gives the finetuning seed
(.../eval/<arm>/seed<N>/sim); otherwise the seed is 0. Pass one directory per arm and finetuning
seed, e.g.
  --inputs lapa@0=runs/s0/eval/lapa/sim lapa@1=runs/s1/eval/lapa/sim \\
           scratch@0=runs/s0/eval/scratch/sim scratch@1=runs/s1/eval/scratch/sim

Arms evaluated differently are refused with an error naming the arm and the field: tasks,
episodes per task, evaluation seed range, step cap, camera, image size, confidence, the set of
finetuning seeds (and for offline evaluations the number of held-out samples). So are arms whose
policies turn logits into actions differently or were trained with another head: every
evaluation records the policy's decoding, number of bins, label smoothing sigma and L1 weight
(metrics.json "head"), and all must agree; the error names both arms, the key and both values.
An evaluation that records none of these (written before they were recorded, or of a scripted
policy) matches only others that record none: evaluate it again to compare it with recorded ones.
results.md names the decoding and head settings the arms share.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "results",
        help="tabulate success per arm and task, the paired comparison against scratch, offline errors "
        "and LAQ and foundation diagnostics beside their chance levels",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument(
        "--inputs",
        nargs="+",
        required=True,
        metavar="[ARM[@SEED]=]DIR",
        help="evaluation directories named sim or offline, one per arm and finetuning seed",
    )
    p.add_argument("--laq-metrics", default=None, help="the LAQ's metrics JSON (laq.metrics.json)")
    p.add_argument("--label-report", default=None, help="the labelling report (label_report.json)")
    p.add_argument(
        "--foundation",
        nargs="+",
        default=[],
        metavar="[ARM=]DIR",
        help="foundation checkpoint directories (head.json): validation top-1 beside chance; "
        "the arm defaults to the directory name",
    )
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
        foundations=args.foundation,
        title=f"Results: {cfg.name}",
    )
    print(Path(args.out, "results.md").read_text())
    return 0
