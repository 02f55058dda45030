"""The results table: success rates per arm and task, offline action errors, LAQ diagnostics.

Reads the evaluation directories the workflow produces (``.../eval/<arm>/sim`` and
``.../eval/<arm>/offline``) and the LAQ's metrics, and writes ``results.md`` and
``results.csv`` (plus ``laq_diagnostics.csv``) into one output directory, atomically.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from lapa.utils.io import atomic_directory, atomic_write_json, atomic_write_text, read_json_object

log = logging.getLogger(__name__)

ARM_ORDER = ("lapa", "scratch", "action_pretrained")


@dataclass
class ArmResults:
    arm: str
    sim: dict | None = None
    offline: dict | None = None


def collect(inputs: list[str | Path]) -> dict[str, ArmResults]:
    """Group evaluation directories by arm; the arm is the folder above ``sim``/``offline``."""
    arms: dict[str, ArmResults] = {}
    for raw in inputs:
        path = Path(raw)
        kind = path.name
        if kind not in ("sim", "offline"):
            raise ValueError(f"{path}: expected an evaluation directory named 'sim' or 'offline'")
        arm = path.parent.name
        entry = arms.setdefault(arm, ArmResults(arm))
        metrics = path / "metrics.json"
        setattr(
            entry,
            kind,
            read_json_object(metrics, missing=f"{metrics}: missing (expected an evaluation metrics.json)"),
        )
    order = {name: i for i, name in enumerate(ARM_ORDER)}
    return dict(sorted(arms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _rate_cell(rate: dict) -> str:
    return (
        f"{_pct(rate['success_rate'])}% [{_pct(rate['ci_low'])}, {_pct(rate['ci_high'])}] "
        f"({rate['successes']}/{rate['episodes']})"
    )


def success_rows(arms: dict[str, ArmResults]) -> list[dict]:
    rows = []
    for arm, res in arms.items():
        if res.sim is None:
            continue
        entries = [("overall", res.sim["overall"])] + sorted(res.sim["per_task"].items())
        for task, rate in entries:
            rows.append(
                {
                    "arm": arm,
                    "task": task,
                    "success_rate": rate["success_rate"],
                    "ci_low": rate["ci_low"],
                    "ci_high": rate["ci_high"],
                    "successes": rate["successes"],
                    "episodes": rate["episodes"],
                }
            )
    return rows


def laq_rows(laq_metrics: dict | None, label_report: dict | None) -> list[tuple[str, str]]:
    """Flatten the scalar LAQ diagnostics worth a line in the table."""
    rows: list[tuple[str, str]] = []
    for source, blob, keep in (("laq", laq_metrics, LAQ_KEYS), ("labels", label_report, LABEL_KEYS)):
        if not blob:
            continue
        flat = _flatten(blob)
        for key in keep:
            value = flat.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append((f"{source}.{key}", f"{value:.4g}"))
    return rows


# The diagnostics that tell whether the latent actions carry the robot's motion: reconstruction
# against the copy baseline, code usage, and how much the codes say about the true actions.
LAQ_KEYS = (
    "val.val/psnr",
    "val.val/psnr_copy",
    "val.val/ssim",
    "val.val/ssim_copy",
    "val.val/utilisation",
    "train.train/perplexity_mean",
    "val.val/distinct_tuples",
    "val.val/action_nmi_mean",
    "val.val/action_nmi_joint",
)
LABEL_KEYS = (
    "train.utilisation_mean",
    "train.action_nmi.nmi_mean",
    "train.action_nmi.nmi_joint_action",
    "val.utilisation_mean",
    "val.action_nmi.nmi_mean",
    "val.action_nmi.nmi_joint_action",
)


def _flatten(blob: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in blob.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def render_markdown(arms: dict[str, ArmResults], laq: list[tuple[str, str]], title: str) -> str:
    lines = [f"# {title}", ""]
    sim_arms = [a for a, r in arms.items() if r.sim is not None]
    if sim_arms:
        first = arms[sim_arms[0]].sim
        conf = int(round(100 * first.get("confidence", 0.95)))
        tasks = sorted(first["per_task"])
        lines += [
            f"Closed-loop success rate in the simulator, {conf}% Wilson interval, "
            f"{first['episodes_per_task']} episodes per task (evaluation seeds "
            f"{first['seed_range'][0]}-{first['seed_range'][1] - 1}).",
            "",
            "| task | " + " | ".join(sim_arms) + " |",
            "|---|" + "---|" * len(sim_arms),
            "| **overall** | " + " | ".join(_rate_cell(arms[a].sim["overall"]) for a in sim_arms) + " |",
        ]
        for task in tasks:
            cells = []
            for a in sim_arms:
                rate = arms[a].sim["per_task"].get(task)
                cells.append(_rate_cell(rate) if rate else "n/a")
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("")
    off_arms = [a for a, r in arms.items() if r.offline is not None]
    if off_arms:
        lines += [
            "Offline, on held-out demonstrations (actions normalised to [-1, 1]):",
            "",
            "| arm | mean MSE | bin accuracy |",
            "|---|---|---|",
        ]
        for a in off_arms:
            o = arms[a].offline
            lines.append(f"| {a} | {o['mse']:.4f} | {o['bin_accuracy']:.3f} |")
        lines.append("")
    if laq:
        lines += [
            "LAQ diagnostics (train/val: the LAQ run; labels: its labelling of every pair):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in laq]
        lines.append("")
    return "\n".join(lines)


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    laq_metrics: str | Path | None = None,
    label_report: str | Path | None = None,
    title: str = "Results",
) -> dict:
    arms = collect(inputs)
    laq_blob = read_json_object(Path(laq_metrics)) if laq_metrics else None
    label_blob = read_json_object(Path(label_report)) if label_report else None
    laq = laq_rows(laq_blob, label_blob)
    rows = success_rows(arms)
    offline = [
        {"arm": a, "mse": r.offline["mse"], "bin_accuracy": r.offline["bin_accuracy"]}
        for a, r in arms.items()
        if r.offline is not None
    ]
    markdown = render_markdown(arms, laq, title)
    with atomic_directory(out_dir) as tmp:
        atomic_write_text(tmp / "results.md", markdown)
        fields = ["arm", "task", "success_rate", "ci_low", "ci_high", "successes", "episodes"]
        atomic_write_text(tmp / "results.csv", _csv(rows, fields))
        atomic_write_text(tmp / "offline.csv", _csv(offline, ["arm", "mse", "bin_accuracy"]))
        atomic_write_text(
            tmp / "laq_diagnostics.csv",
            _csv([{"metric": k, "value": v} for k, v in laq], ["metric", "value"]),
        )
        summary = {"arms": list(arms), "success": rows, "offline": offline, "laq": dict(laq)}
        atomic_write_json(tmp / "results.json", summary)
    log.info("results for arms %s -> %s", ", ".join(arms), out_dir)
    return summary
