"""The results table: success per arm and task, the paired comparison against scratch, offline
errors, LAQ diagnostics and foundation accuracy, each beside its chance level.

Inputs are evaluation directories (``sim`` or ``offline``, each with a ``metrics.json``), one per
arm and finetuning seed, named ``[ARM[@SEED]=]DIR``: without a label the arm is the folder above
``DIR`` (``.../eval/<arm>/sim``), or the one above a ``seed<N>`` folder
(``.../eval/<arm>/seed<N>/sim``, finetuning seed N). Arms must have been evaluated alike (same
tasks, episodes per task, evaluation seeds, step cap, camera, image size, observation path and
finetuning seeds) and with the same head and decoding: every evaluation, closed loop and offline,
of every arm must record the same ``head`` (``lapa.evaluation.head``: decoding, number of bins,
label smoothing sigma, L1 weight). Anything else is refused, naming the arms, the field and both
values. A setting an evaluation does not record (one written before reports recorded the head, or
a scripted policy without a binned head) counts as a value of its own, "not recorded": it matches
only another unrecorded one, so recorded and unrecorded evaluations are never mixed; evaluate
such an arm again to record it. ``results.md`` names the settings every arm shares.

Statistics:

- success per arm and task pools the episodes of every finetuning seed, with a Wilson interval;
- the paired difference of each arm against ``scratch`` is the mean over the task x finetuning-seed
  cells of (arm rate - scratch rate), with a percentile interval from a stratified bootstrap
  (episodes resampled within each cell and arm) and the two-sided p-value of the
  Cochran-Mantel-Haenszel test (continuity-corrected; strata = cells), which respects the pairing;
- LAQ diagnostics sit beside their chance levels (copy-frame-t PSNR, AMI 0 and its shuffled-code
  spread, the probe's majority-class rate), foundation top-1 beside 1/vocab.

Writes ``results.md``, ``results.csv`` (pooled), ``results_by_seed.csv``, ``comparison.csv``,
``offline.csv``, ``laq_diagnostics.csv``, ``foundation.csv`` and ``results.json`` into one
output directory, atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lapa.evaluation.closed_loop import wilson_interval
from lapa.evaluation.head import HEAD_KEYS, recorded_head
from lapa.utils.io import atomic_directory, atomic_write_json, atomic_write_text, read_json_object

log = logging.getLogger(__name__)

ARM_ORDER = ("lapa", "scratch", "action_pretrained")
REFERENCE_ARM = "scratch"
DEFAULT_SEED = "0"
# What must agree between every evaluation of a comparison (closed loop; offline).
SIM_FIELDS = (
    "tasks",
    "episodes_per_task",
    "seed_range",
    "max_steps",
    "camera",
    "image_size",
    "observation",
    "confidence",
)
OFFLINE_FIELDS = ("num_samples",)
_SEED_DIR = re.compile(r"seed[-_]?(\w+)$")
_SPEC = re.compile(r"^(?P<arm>[A-Za-z0-9_.-]+)(?:@(?P<seed>[A-Za-z0-9_.-]+))?=(?P<path>.+)$")


@dataclass
class ArmResults:
    """One arm's evaluations, keyed by finetuning seed label."""

    arm: str
    sim: dict[str, dict] = field(default_factory=dict)
    offline: dict[str, dict] = field(default_factory=dict)
    paths: dict[tuple[str, str], Path] = field(default_factory=dict)  # (kind, seed) -> directory


def parse_input(spec: str | Path) -> tuple[str, str, str, Path]:
    """``[ARM[@SEED]=]DIR`` -> (arm, seed, kind, dir); kind is the directory name, sim or offline."""
    text = str(spec)
    m = _SPEC.match(text)
    arm, seed = (m["arm"], m["seed"]) if m else (None, None)
    path = Path(m["path"] if m else text)
    kind = path.name
    if kind not in ("sim", "offline"):
        raise ValueError(f"{path}: expected an evaluation directory named 'sim' or 'offline'")
    parent = path.parent
    seed_dir = _SEED_DIR.match(parent.name)
    if arm is None:
        arm = parent.parent.name if seed_dir else parent.name
    if seed is None:
        seed = seed_dir.group(1) if seed_dir else DEFAULT_SEED
    return arm, seed, kind, path


def collect(inputs: list[str | Path]) -> dict[str, ArmResults]:
    """Group evaluation directories by arm and finetuning seed (see the module notes). A
    metrics.json without a figure the table reads, or with one that cannot be a count or rate, is
    refused with a ValueError naming the file and the field."""
    arms: dict[str, ArmResults] = {}
    for spec in inputs:
        arm, seed, kind, path = parse_input(spec)
        entry = arms.setdefault(arm, ArmResults(arm))
        runs = getattr(entry, kind)
        if seed in runs:
            raise ValueError(
                f"{path}: arm {arm!r} finetuning seed {seed!r} already has "
                f"{'an' if kind == 'offline' else 'a'} {kind} evaluation "
                f"({entry.paths[(kind, seed)]}); label the inputs ARM@SEED=DIR"
            )
        metrics = path / "metrics.json"
        runs[seed] = read_json_object(
            metrics, missing=f"{metrics}: missing (expected an evaluation metrics.json)"
        )
        entry.paths[(kind, seed)] = path
    for entry in arms.values():
        for (kind, seed), path in entry.paths.items():
            problem = _report_problem(kind, getattr(entry, kind)[seed])
            if problem:
                what = "a closed-loop" if kind == "sim" else "an offline"
                raise ValueError(f"{path / 'metrics.json'}: not {what} evaluation report: {problem}")
    order = {name: i for i, name in enumerate(ARM_ORDER)}
    return dict(sorted(arms.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _count_problem(entry, where: str) -> str | None:
    if not isinstance(entry, dict):
        return f"{where} must be an object with successes and episodes, got {entry!r}"
    for key in ("episodes", "successes"):
        value = entry.get(key)
        if value is None:
            return f"{where}.{key} is missing"
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{where}.{key} must be a count (an integer >= 0), got {value!r}"
    if entry["successes"] > entry["episodes"]:
        return f"{where} has {entry['successes']} successes in {entry['episodes']} episodes"
    return None


def _report_problem(kind: str, metrics: dict) -> str | None:
    """What makes a metrics.json unusable for the table (a missing or malformed figure the table
    reads), or None. Closed loop: ``overall`` and every ``per_task`` entry hold integer
    ``successes`` <= ``episodes``; offline: finite ``mse`` >= 0 and ``bin_accuracy`` in [0, 1]."""
    if kind == "offline":
        for key, high in (("mse", math.inf), ("bin_accuracy", 1.0)):
            value = _num(metrics.get(key))
            if value is None or not 0.0 <= value <= high:
                bound = ">= 0" if high == math.inf else "in [0, 1]"
                return f"{key} must be a finite number {bound}, got {metrics.get(key)!r}"
        return None
    per_task = metrics.get("per_task")
    if not isinstance(per_task, dict) or not per_task:
        return f"per_task must map each task to its successes and episodes, got {per_task!r}"
    for where, entry in [("overall", metrics.get("overall"))] + [
        (f"per_task[{task!r}]", value) for task, value in per_task.items()
    ]:
        problem = _count_problem(entry, where)
        if problem:
            return problem
    return None


def _field(metrics: dict, name: str):
    if name == "tasks":
        return sorted(metrics.get("per_task", {}))
    value = metrics.get(name)
    return list(value) if isinstance(value, tuple) else value


def _seed_key(seed: str):
    return (0, int(seed), "") if seed.isdigit() else (1, 0, seed)


def check_comparable(arms: dict[str, ArmResults]) -> None:
    """Refuse arms evaluated differently: a ValueError names the arm, its directory and the field
    (compared with scratch's first evaluation, or the first arm's without scratch)."""
    for kind, fields in (("sim", SIM_FIELDS), ("offline", OFFLINE_FIELDS)):
        runs = [(a, s, m) for a, r in arms.items() for s, m in sorted(getattr(r, kind).items())]
        if not runs:
            continue
        runs.sort(key=lambda run: run[0] != REFERENCE_ARM)  # stable: the reference arm first, if any
        ref_arm, ref_seed, ref = runs[0]
        ref_path = arms[ref_arm].paths[(kind, ref_seed)]
        for arm, seed, metrics in runs[1:]:
            for name in fields:
                got, want = _field(metrics, name), _field(ref, name)
                if got != want:
                    raise ValueError(
                        f"{arms[arm].paths[(kind, seed)]}: arm {arm!r} (finetuning seed {seed}) was "
                        f"evaluated with {name}={got!r}, but arm {ref_arm!r} (finetuning seed {ref_seed}, "
                        f"{ref_path}) with {name}={want!r}; every arm must be evaluated alike"
                    )
        seeds = {a: sorted(getattr(r, kind), key=_seed_key) for a, r in arms.items() if getattr(r, kind)}
        ref_seeds = seeds[ref_arm]
        for arm, have in seeds.items():
            if have != ref_seeds:
                raise ValueError(
                    f"arm {arm!r} has {kind} evaluations for finetuning seeds {have}, but arm {ref_arm!r} "
                    f"for {ref_seeds}; every arm must be finetuned and evaluated on the same seeds"
                )
    check_heads(arms)


def _head_runs(arms: dict[str, ArmResults]) -> list[tuple[str, str, str, dict]]:
    """(arm, kind, seed, recorded head) of every evaluation: the reference arm's first (closed
    loop before offline, seeds in order), then the other arms' in their order."""
    runs = [
        (arm, kind, seed, recorded_head(metrics))
        for arm, res in arms.items()
        for kind in ("sim", "offline")
        for seed, metrics in sorted(getattr(res, kind).items(), key=lambda kv: _seed_key(kv[0]))
    ]
    runs.sort(key=lambda run: run[0] != REFERENCE_ARM)  # stable
    return runs


def _setting(key: str, value) -> str:
    return f"{key} not recorded" if value is None else f"{key}={value!r}"


def check_heads(arms: dict[str, ArmResults]) -> None:
    """Refuse evaluations whose policies differ in any of ``HEAD_KEYS`` (decoding, bins, targets).

    A ValueError names both evaluations (arm, finetuning seed, kind, directory), the key and both
    values; an unrecorded value (None) differs from every recorded one.
    """
    runs = _head_runs(arms)
    if not runs:
        return
    ref_arm, ref_kind, ref_seed, ref = runs[0]
    ref_path = arms[ref_arm].paths[(ref_kind, ref_seed)]
    for arm, kind, seed, head in runs[1:]:
        for key in HEAD_KEYS:
            if head[key] != ref[key]:
                hint = (
                    " (an evaluation that does not record it was written before evaluations recorded "
                    "the policy's head, or is of a policy without a binned head: evaluate it again)"
                    if head[key] is None or ref[key] is None
                    else ""
                )
                raise ValueError(
                    f"{arms[arm].paths[(kind, seed)]}: arm {arm!r} (finetuning seed {seed}, {kind}) "
                    f"evaluated a policy with {_setting(key, head[key])}, but arm {ref_arm!r} (finetuning "
                    f"seed {ref_seed}, {ref_kind}, {ref_path}) a policy with {_setting(key, ref[key])}"
                    f"{hint}; every arm must use the same head and decoding"
                )


def shared_head(arms: dict[str, ArmResults]) -> dict | None:
    """The head settings every evaluation shares (after ``check_heads``); None without evaluations."""
    runs = _head_runs(arms)
    return dict(runs[0][3]) if runs else None


_HEAD_TEXT = (
    ("decoding", "decoding", ""),
    ("num_bins", "bins per action dimension", ""),
    ("label_sigma", "label smoothing sigma", " bins"),
    ("l1_weight", "L1 weight", ""),
)


def describe_head(head: dict | None) -> str:
    """The sentence of results.md naming the decoding and head settings every arm shares."""
    if head is None:
        return ""
    if all(head[key] is None for key in HEAD_KEYS):
        return "Policies: decoding and head settings not recorded by these evaluations (for any arm)."
    parts = []
    for key, text, unit in _HEAD_TEXT:
        value = head[key]
        shown = value if isinstance(value, str) or value is None else f"{value:g}"
        parts.append(f"{text} not recorded" if value is None else f"{text} {shown}{unit}")
    return f"Policies, the same for every arm: {', '.join(parts)}."


# ------------------------------------------------------------------------------------------ success
def _rate(successes: int, episodes: int, confidence: float) -> dict:
    lo, hi = wilson_interval(successes, episodes, confidence)
    return {
        "success_rate": successes / episodes if episodes else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "successes": int(successes),
        "episodes": int(episodes),
    }


def _confidence(arms: dict[str, ArmResults]) -> float:
    for r in arms.values():
        for m in r.sim.values():
            return float(m.get("confidence", 0.95))
    return 0.95


def success_rows(arms: dict[str, ArmResults]) -> list[dict]:
    """Per arm and task (``overall`` first), episodes pooled over finetuning seeds."""
    conf = _confidence(arms)
    rows = []
    for arm, res in arms.items():
        if not res.sim:
            continue
        runs = list(res.sim.values())
        tasks = sorted(runs[0]["per_task"])
        total_k = sum(m["overall"]["successes"] for m in runs)
        total_n = sum(m["overall"]["episodes"] for m in runs)
        rows.append({"arm": arm, "task": "overall", **_rate(total_k, total_n, conf), "seeds": len(runs)})
        for task in tasks:
            k = sum(m["per_task"][task]["successes"] for m in runs)
            n = sum(m["per_task"][task]["episodes"] for m in runs)
            rows.append({"arm": arm, "task": task, **_rate(k, n, conf), "seeds": len(runs)})
    return rows


def seed_rows(arms: dict[str, ArmResults]) -> list[dict]:
    """Per arm, finetuning seed and task (``overall`` first)."""
    conf = _confidence(arms)
    rows = []
    for arm, res in arms.items():
        for seed in sorted(res.sim, key=_seed_key):
            m = res.sim[seed]
            rows.append({"arm": arm, "seed": seed, "task": "overall", **_rate_of(m["overall"], conf)})
            for task in sorted(m["per_task"]):
                rows.append({"arm": arm, "seed": seed, "task": task, **_rate_of(m["per_task"][task], conf)})
    return rows


def _rate_of(entry: dict, conf: float) -> dict:
    return _rate(entry["successes"], entry["episodes"], conf)


# ------------------------------------------------------------------------------- paired comparison
def _cells(res: ArmResults) -> dict[tuple[str, str], tuple[int, int]]:
    return {
        (task, seed): (int(v["successes"]), int(v["episodes"]))
        for seed, m in res.sim.items()
        for task, v in m["per_task"].items()
    }


def paired_difference(
    arm_cells: dict[tuple[str, str], tuple[int, int]],
    ref_cells: dict[tuple[str, str], tuple[int, int]],
    *,
    confidence: float = 0.95,
    draws: int = 10_000,
    seed: int = 0,
) -> dict:
    """Arm minus reference success rate over matched (task, seed) cells of (successes, episodes).

    ``difference`` is the mean over cells of the rate difference (cells weigh alike); the interval
    is the percentile interval of a stratified bootstrap (each arm's episodes resampled within
    each cell: binomial draws at the cell's observed rate, ``draws`` times, seeded); ``p_value`` is
    the two-sided Cochran-Mantel-Haenszel test with continuity correction (statsmodels), strata =
    cells, None when no cell is informative (both arms all-success or all-failure everywhere);
    ``odds_ratio`` the Mantel-Haenszel common odds ratio. Raises ValueError for unmatched cells.
    """
    from statsmodels.stats.contingency_tables import StratifiedTable

    if set(arm_cells) != set(ref_cells):
        missing = sorted(set(arm_cells) ^ set(ref_cells))[:5]
        raise ValueError(f"the arms' task x seed cells differ (e.g. {missing}); they cannot be paired")
    keys = sorted(ref_cells)
    ka = np.array([arm_cells[c][0] for c in keys], dtype=np.int64)
    na = np.array([arm_cells[c][1] for c in keys], dtype=np.int64)
    kr = np.array([ref_cells[c][0] for c in keys], dtype=np.int64)
    nr = np.array([ref_cells[c][1] for c in keys], dtype=np.int64)
    if (na <= 0).any() or (nr <= 0).any():
        raise ValueError("a task x seed cell has no episodes")
    diff = float(np.mean(ka / na - kr / nr))
    rng = np.random.default_rng(seed)
    boot = (rng.binomial(na, ka / na, size=(draws, len(keys))) / na).mean(1) - (
        rng.binomial(nr, kr / nr, size=(draws, len(keys))) / nr
    ).mean(1)
    alpha = (1 - confidence) / 2
    tables = [np.array([[a, n - a], [r, m - r]]) for a, n, r, m in zip(ka, na, kr, nr)]
    informative = [t for t in tables if 0 < t[:, 0].sum() < t.sum()]
    p_value = odds = None
    if informative:
        st = StratifiedTable(informative)
        p_value = float(st.test_null_odds(correction=True).pvalue)
        odds = float(st.oddsratio_pooled)
    return {
        "difference": diff,
        "ci_low": float(np.quantile(boot, alpha)),
        "ci_high": float(np.quantile(boot, 1 - alpha)),
        "p_value": p_value,
        "odds_ratio": odds if odds is not None and math.isfinite(odds) else None,
        "cells": len(keys),
        "informative_cells": len(informative),
        "episodes_per_arm": int(na.sum()),
        "confidence": confidence,
        "test": "Cochran-Mantel-Haenszel (continuity-corrected), strata = task x finetuning seed",
        "interval": f"stratified bootstrap, {draws} draws",
    }


def comparison_rows(arms: dict[str, ArmResults], reference: str = REFERENCE_ARM) -> list[dict]:
    if reference not in arms or not arms[reference].sim:
        return []
    ref_cells = _cells(arms[reference])
    conf = _confidence(arms)
    return [
        {"arm": arm, "reference": reference, **paired_difference(_cells(r), ref_cells, confidence=conf)}
        for arm, r in arms.items()
        if arm != reference and r.sim
    ]


# -------------------------------------------------------------------------------------- diagnostics
def _flatten(blob: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in blob.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# (label, value key, ci low key, ci high key, p key, chance key or fixed chance, chance text)
_LAQ_SPECS = (
    ("reconstruction PSNR (dB)", "psnr", None, None, None, "psnr_copy", "copying frame t"),
    ("reconstruction SSIM", "ssim", None, None, None, "ssim_copy", "copying frame t"),
    ("code utilisation", "utilisation", None, None, None, None, ""),
    ("distinct code tuples", "distinct_tuples", None, None, None, None, ""),
    (
        "code-action AMI",
        "code_action_ami",
        "code_action_ami_ci_low",
        "code_action_ami_ci_high",
        "code_action_ami_p",
        0.0,
        "independent codes",
    ),
    ("code-action AMI, joint action", "code_action_ami_joint", None, None, None, 0.0, "independent codes"),
    ("probe accuracy from codes", "probe_acc_codes", None, None, None, "probe_chance", "majority bin"),
    ("probe accuracy from frame t", "probe_acc_frame", None, None, None, "probe_chance", "majority bin"),
    (
        "probe gain, codes - frame t",
        "probe_gain",
        "probe_gain_ci_low",
        "probe_gain_ci_high",
        None,
        0.0,
        "codes no better than frame t",
    ),
    (
        "probe accuracy from codes and frame t",
        "probe_acc_codes_and_frame",
        None,
        None,
        None,
        "probe_chance",
        "majority bin",
    ),
    (
        "probe gain, codes and frame t - frame t",
        "probe_gain_over_frame",
        "probe_gain_over_frame_ci_low",
        "probe_gain_over_frame_ci_high",
        None,
        0.0,
        "codes add nothing to frame t",
    ),
)
# The label report's names for the same figures (code_action.<key>; the summary at the top level).
_LABEL_NAMES = {
    "code_action_ami": "code_action.ami",
    "code_action_ami_ci_low": "code_action.ami_ci_low",
    "code_action_ami_ci_high": "code_action.ami_ci_high",
    "code_action_ami_p": "code_action.ami_p",
    "code_action_ami_joint": "code_action.ami_joint_action",
    "probe_acc_codes": "code_action.probe_acc_codes",
    "probe_acc_frame": "code_action.probe_acc_frame",
    "probe_chance": "code_action.probe_chance",
    "probe_gain": "code_action.probe_gain",
    "probe_gain_ci_low": "code_action.probe_gain_ci_low",
    "probe_gain_ci_high": "code_action.probe_gain_ci_high",
    "probe_acc_codes_and_frame": "code_action.probe_acc_codes_and_frame",
    "probe_gain_over_frame": "code_action.probe_gain_over_frame",
    "probe_gain_over_frame_ci_low": "code_action.probe_gain_over_frame_ci_low",
    "probe_gain_over_frame_ci_high": "code_action.probe_gain_over_frame_ci_high",
    "utilisation": "utilisation_mean",
    "distinct_tuples": "distinct_tuples",
}


def laq_rows(laq_metrics: dict | None, label_report: dict | None) -> list[dict]:
    """The LAQ diagnostics with their chance levels: the LAQ run's validation (``laq.val``) and its
    labelling of every pair (``labels.train``, ``labels.val``)."""
    sources = []
    if laq_metrics:
        flat = _flatten(laq_metrics.get("val", {}))
        sources.append(("laq.val", lambda k, f=flat: f.get(f"val/{k}")))
    for split in ("train", "val"):
        blob = (label_report or {}).get(split)
        if isinstance(blob, dict):
            flat = _flatten(blob)
            sources.append((f"labels.{split}", lambda k, f=flat: f.get(_LABEL_NAMES.get(k, "\0"))))
    rows = []
    for source, get in sources:
        for label, key, lo_key, hi_key, p_key, chance, chance_text in _LAQ_SPECS:
            value = _num(get(key))
            if value is None:
                continue
            rows.append(
                {
                    "source": source,
                    "metric": label,
                    "value": value,
                    "ci_low": _num(get(lo_key)) if lo_key else None,
                    "ci_high": _num(get(hi_key)) if hi_key else None,
                    "p_value": _num(get(p_key)) if p_key else None,
                    "chance": chance if isinstance(chance, float) else _num(get(chance)) if chance else None,
                    "chance_is": chance_text,
                }
            )
    return rows


def parse_foundation(spec: str | Path) -> tuple[str, Path]:
    """``[ARM=]DIR`` -> (arm, foundation directory); the arm defaults to the directory's name."""
    m = _SPEC.match(str(spec))
    if m and m["seed"] is None:
        return m["arm"], Path(m["path"])
    path = Path(spec)
    return path.name, path


def foundation_rows(specs: list[str | Path]) -> list[dict]:
    """Each foundation's validation top-1 (``head.json`` metrics) beside chance: 1/vocab, and the
    majority-class rate where the run recorded one (a ``val/`` metric naming majority or chance)."""
    rows = []
    for spec in specs:
        arm, path = parse_foundation(spec)
        head = read_json_object(path / "head.json", missing=f"{path}/head.json: missing (not a foundation)")
        metrics = head.get("metrics") or {}
        top1 = _num(metrics.get("val/top1_acc"))
        vocab = head.get("vocab_size")
        if top1 is None or not isinstance(vocab, int) or vocab <= 0:
            raise ValueError(f"{path}/head.json: needs metrics['val/top1_acc'] and vocab_size")
        majority = [
            _num(v)
            for k, v in sorted(metrics.items())
            if k.startswith("val/") and ("majority" in k or "chance" in k) and _num(v) is not None
        ]
        rows.append(
            {
                "arm": arm,
                "top1": top1,
                "top3": _num(metrics.get("val/top3_acc")),
                "chance_uniform": 1.0 / vocab,
                "chance_majority": majority[0] if majority else None,
                "vocab_size": vocab,
                "num_tokens": head.get("num_tokens"),
                "samples": _num(metrics.get("val/samples")),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- rendering
def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _rate_cell(rate: dict) -> str:
    return (
        f"{_pct(rate['success_rate'])}% [{_pct(rate['ci_low'])}, {_pct(rate['ci_high'])}] "
        f"({rate['successes']}/{rate['episodes']})"
    )


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def render_markdown(
    arms: dict[str, ArmResults],
    success: list[dict],
    by_seed: list[dict],
    comparison: list[dict],
    laq: list[dict],
    foundation: list[dict],
    title: str,
) -> str:
    lines = [f"# {title}", ""]
    head = describe_head(shared_head(arms))
    if head:
        lines += [head, ""]
    sim_arms = [a for a, r in arms.items() if r.sim]
    if sim_arms:
        first = next(iter(arms[sim_arms[0]].sim.values()))
        seeds = sorted(arms[sim_arms[0]].sim, key=_seed_key)
        conf = int(round(100 * first.get("confidence", 0.95)))
        s0, s1 = first["seed_range"]
        lines += [
            f"Closed-loop success rate in the simulator, {conf}% Wilson interval, episodes pooled over "
            f"{len(seeds)} finetuning seed(s) ({', '.join(seeds)}): "
            f"{first['episodes_per_task']} episodes per task per seed on evaluation seeds {s0}-{s1 - 1}, "
            f"step cap {first.get('max_steps', 'n/a')}, "
            f"{len(first['per_task'])} task(s), the same for every arm.",
            "",
            "| task | " + " | ".join(sim_arms) + " |",
            "|---|" + "---|" * len(sim_arms),
        ]
        cell = {(r["arm"], r["task"]): r for r in success}
        tasks = ["overall"] + sorted(first["per_task"])
        for task in tasks:
            name = "**overall**" if task == "overall" else task
            lines.append(f"| {name} | " + " | ".join(_rate_cell(cell[(a, task)]) for a in sim_arms) + " |")
        lines.append("")
        if len(seeds) > 1:
            lines += [
                "Overall success per finetuning seed:",
                "",
                "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                "|---|" + "---|" * len(seeds),
            ]
            per = {(r["arm"], r["seed"]): r for r in by_seed if r["task"] == "overall"}
            for a in sim_arms:
                lines.append(
                    f"| {a} | " + " | ".join(_pct(per[(a, s)]["success_rate"]) for s in seeds) + " |"
                )
            lines.append("")
    if comparison:
        conf = int(round(100 * comparison[0]["confidence"]))
        lines += [
            f"Paired difference against {comparison[0]['reference']} (success-rate points, mean over the "
            f"task x finetuning-seed cells), {conf}% interval from a stratified bootstrap, two-sided p "
            "from the Cochran-Mantel-Haenszel test over the same cells:",
            "",
            "| arm | difference | interval | p | MH odds ratio | cells |",
            "|---|---|---|---|---|---|",
        ]
        for c in comparison:
            lines.append(
                f"| {c['arm']} | {100 * c['difference']:+.1f} | [{100 * c['ci_low']:+.1f}, "
                f"{100 * c['ci_high']:+.1f}] | {_p(c['p_value'])} | {_fmt(c['odds_ratio'], 3)} | "
                f"{c['cells']} ({c['informative_cells']} informative) |"
            )
        lines.append("")
    off_arms = [a for a, r in arms.items() if r.offline]
    if off_arms:
        lines += [
            "Offline, on held-out demonstrations (actions normalised to [-1, 1]; mean over "
            "finetuning seeds):",
            "",
            "| arm | mean MSE | bin accuracy | chance (commonest bin) | seeds |",
            "|---|---|---|---|---|",
        ]
        for a in off_arms:
            runs = list(arms[a].offline.values())
            mse = float(np.mean([o["mse"] for o in runs]))
            acc = float(np.mean([o["bin_accuracy"] for o in runs]))
            chance = [
                o["bin_accuracy_chance"] for o in runs if _num(o.get("bin_accuracy_chance")) is not None
            ]
            chance_cell = f"{np.mean(chance):.3f}" if chance else "n/a"
            lines.append(f"| {a} | {mse:.4f} | {acc:.3f} | {chance_cell} | {len(runs)} |")
        lines.append("")
    if laq:
        lines += [
            "LAQ diagnostics (laq.val: the LAQ run's validation; labels: its labelling of every pair), "
            "each beside its chance level:",
            "",
            "| source | metric | value | interval | p | chance | chance is |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in laq:
            interval = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if r["ci_low"] is not None else ""
            lines.append(
                f"| {r['source']} | {r['metric']} | {_fmt(r['value'])} | {interval} | "
                f"{_p(r['p_value']) if r['p_value'] is not None else ''} | {_fmt(r['chance'])} | "
                f"{r['chance_is']} |"
            )
        lines.append("")
    if foundation:
        lines += [
            "Foundation validation accuracy (latent or action tokens), beside chance:",
            "",
            "| arm | top-1 | chance (1/vocab) | chance (majority) | top-3 | vocab |",
            "|---|---|---|---|---|---|",
        ]
        for f in foundation:
            lines.append(
                f"| {f['arm']} | {f['top1']:.3f} | {f['chance_uniform']:.3f} | "
                f"{_fmt(f['chance_majority'], 3)} | {_fmt(f['top3'], 3)} | {f['vocab_size']} |"
            )
        lines.append("")
    return "\n".join(lines)


def _csv(rows: list[dict], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_results(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    laq_metrics: str | Path | None = None,
    label_report: str | Path | None = None,
    foundations: list[str | Path] | None = None,
    title: str = "Results",
) -> dict:
    """Read, check and tabulate (see the module notes); returns the ``results.json`` summary."""
    arms = collect(inputs)
    check_comparable(arms)
    laq_blob = read_json_object(Path(laq_metrics)) if laq_metrics else None
    label_blob = read_json_object(Path(label_report)) if label_report else None
    laq = laq_rows(laq_blob, label_blob)
    found = foundation_rows(list(foundations or []))
    success = success_rows(arms)
    by_seed = seed_rows(arms)
    comparison = comparison_rows(arms)
    offline = [
        {
            "arm": a,
            "seed": s,
            "mse": o["mse"],
            "bin_accuracy": o["bin_accuracy"],
            "bin_accuracy_chance": o.get("bin_accuracy_chance"),
        }
        for a, r in arms.items()
        for s, o in sorted(r.offline.items(), key=lambda kv: _seed_key(kv[0]))
    ]
    markdown = render_markdown(arms, success, by_seed, comparison, laq, found, title)
    rate_fields = ["success_rate", "ci_low", "ci_high", "successes", "episodes"]
    with atomic_directory(out_dir) as tmp:
        atomic_write_text(tmp / "results.md", markdown)
        atomic_write_text(tmp / "results.csv", _csv(success, ["arm", "task", *rate_fields, "seeds"]))
        atomic_write_text(tmp / "results_by_seed.csv", _csv(by_seed, ["arm", "seed", "task", *rate_fields]))
        comp_fields = [
            "arm",
            "reference",
            "difference",
            "ci_low",
            "ci_high",
            "p_value",
            "odds_ratio",
            "cells",
            "informative_cells",
            "episodes_per_arm",
        ]
        atomic_write_text(tmp / "comparison.csv", _csv(comparison, comp_fields))
        atomic_write_text(
            tmp / "offline.csv", _csv(offline, ["arm", "seed", "mse", "bin_accuracy", "bin_accuracy_chance"])
        )
        laq_fields = ["source", "metric", "value", "ci_low", "ci_high", "p_value", "chance", "chance_is"]
        atomic_write_text(tmp / "laq_diagnostics.csv", _csv(laq, laq_fields))
        found_fields = ["arm", "top1", "chance_uniform", "chance_majority", "top3", "vocab_size", "samples"]
        atomic_write_text(tmp / "foundation.csv", _csv(found, found_fields))
        summary = {
            "arms": list(arms),
            "head": shared_head(arms),
            "success": success,
            "success_by_seed": by_seed,
            "comparison": comparison,
            "offline": offline,
            "laq": laq,
            "foundation": found,
        }
        atomic_write_json(tmp / "results.json", summary)
    log.info("results for arms %s -> %s", ", ".join(arms), out_dir)
    return summary
