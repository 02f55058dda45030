"""What a workflow run cost, job by job: Snakemake's ``benchmark:`` files summed per rule.

Every rule writes ``logs/<experiment>/bench/<job>.tsv`` (Snakemake's benchmark format: one
header line, then one row per repeat with ``s`` = wall seconds, ``cpu_time`` = CPU seconds,
``max_rss`` = peak resident set in MB of the job's process tree). This module reads them::

    python -m lapa_workflow.times logs/metaworld_small/bench        # or: --markdown

and prints, per rule, the number of jobs, their wall and CPU seconds summed, and the largest
peak RSS of any one job, then the totals. Jobs that ran at the same time overlap in wall time,
so the summed wall is not the run's elapsed time (``/usr/bin/time`` around ``make run`` gives
that); the summed CPU seconds are what the run costs a machine. A file that is not a Snakemake
benchmark file is refused naming it; an empty directory is an error.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# job files are named <rule>[_<wildcards...>].tsv; the rule is the longest known prefix
_RULES = (
    "rollouts",
    "shards_pairs",
    "shards_demos",
    "make_backbones",
    "train_laq",
    "label_latent",
    "label_actions",
    "train_foundation",
    "action_stats",
    "finetune",
    "eval_offline",
    "eval_sim",
    "results",
    "plot_curves",
)


@dataclass
class JobTime:
    """One job's figures: ``wall_s`` and ``cpu_s`` in seconds, ``max_rss_mb`` in MB."""

    name: str
    rule: str
    wall_s: float
    cpu_s: float
    max_rss_mb: float


@dataclass
class RuleTotal:
    """One rule's jobs summed (wall and CPU seconds) and their largest peak RSS (MB)."""

    rule: str
    jobs: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    names: list[str] = field(default_factory=list)


def rule_of(name: str) -> str:
    """The rule a benchmark file belongs to: the longest known rule name that ``name`` starts
    with (followed by ``_`` or nothing), else ``name`` up to its first ``_seed``/wildcard part."""
    for rule in sorted(_RULES, key=len, reverse=True):
        if name == rule or name.startswith(rule + "_"):
            return rule
    return re.split(r"_seed\d+", name)[0]


def read_job(path: Path) -> JobTime:
    """One Snakemake benchmark file -> ``JobTime`` (the mean over its repeats).

    Raises ``ValueError`` naming the file when it lacks the ``s``, ``cpu_time`` or ``max_rss``
    columns, holds no row, or holds a value that is neither a number nor Snakemake's ``NA``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"s", "cpu_time", "max_rss"} <= set(rows[0]):
        raise ValueError(f"{path}: not a Snakemake benchmark file (need columns s, cpu_time, max_rss)")

    def mean(key: str) -> float:
        vals = []
        for i, r in enumerate(rows, start=2):
            value = (r.get(key) or "").strip()
            if value in ("", "NA", "-"):  # Snakemake writes NA when it could not measure
                continue
            try:
                vals.append(float(value))
            except ValueError:
                raise ValueError(f"{path}: line {i}, column {key}: {value!r} is not a number") from None
        return sum(vals) / len(vals) if vals else 0.0

    return JobTime(path.stem, rule_of(path.stem), mean("s"), mean("cpu_time"), mean("max_rss"))


def summarise(bench_dir: str | Path) -> tuple[list[RuleTotal], RuleTotal]:
    """(per-rule totals in pipeline order, the total over all jobs) of ``bench_dir/*.tsv``.

    Raises ``FileNotFoundError`` when the directory holds no ``.tsv`` file."""
    files = sorted(Path(bench_dir).glob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"{bench_dir}: no Snakemake benchmark files (*.tsv)")
    by_rule: dict[str, RuleTotal] = {}
    total = RuleTotal("total")
    for path in files:
        job = read_job(path)
        for agg in (by_rule.setdefault(job.rule, RuleTotal(job.rule)), total):
            agg.jobs += 1
            agg.wall_s += job.wall_s
            agg.cpu_s += job.cpu_s
            agg.max_rss_mb = max(agg.max_rss_mb, job.max_rss_mb)
            agg.names.append(job.name)
    order = {r: i for i, r in enumerate(_RULES)}
    rules = sorted(by_rule.values(), key=lambda t: (order.get(t.rule, len(order)), t.rule))
    return rules, total


def format_table(rules: list[RuleTotal], total: RuleTotal, markdown: bool = False) -> str:
    """The summary as aligned text, or as a Markdown table with ``markdown``."""
    head = ("rule", "jobs", "wall (min, summed)", "CPU (min)", "peak RSS of one job (GB)")
    rows = [
        (t.rule, str(t.jobs), f"{t.wall_s / 60:.1f}", f"{t.cpu_s / 60:.1f}", f"{t.max_rss_mb / 1024:.2f}")
        for t in [*rules, total]
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)) for r in [head, *rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m lapa_workflow.times",
        description="Sum a workflow run's Snakemake benchmark files per rule (wall, CPU, peak RSS).",
    )
    ap.add_argument("bench_dir", help="the run's benchmark directory, e.g. logs/metaworld_small/bench")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    try:
        rules, total = summarise(args.bench_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rules, total, markdown=args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
