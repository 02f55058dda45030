"""Offline action MSE of the binned head's decodings (and of the bin-order targets), and their
closed-loop success, measured in one run.

The offline figure is the MSE of actions normalised to [-1, 1] by the action statistics (what
``lapa eval-offline`` reports) on held-out demonstration frames. Every row decodes the same logits
twice: ``argmax`` (the baseline: the most probable bin's centre) and ``expectation`` (the
probability-weighted mean of the bin centres).

Three modes:

    # every policy of a workflow run (policy/<arm>[/seed<N>]) on its held-out demonstrations, no training
    .venv/bin/python benchmarks/bench_decoding.py --results results/default [--experiment default]

    # the same policies in closed loop: Meta-World success with each decoding, on the same layouts
    .venv/bin/python benchmarks/bench_decoding.py --results results/default --experiment default \
        --closed-loop [--episodes 5] [--arms lapa scratch] [--seeds 0] [--tasks reach-v3] \
        [--set sim.max_steps=60] [--device cuda] [--out decoding_closed_loop.json]

    # the synthetic colour task (tests.fixtures.policy) finetuned from scratch with each target, same
    # seed and batches: one-hot (baseline), Gaussian label smoothing, L1 on the expectation
    .venv/bin/python benchmarks/bench_decoding.py --synthetic [--steps 80] [--sigma 2] [--l1 0.5]

Closed loop runs ``lapa eval-sim``'s own evaluation (``evaluate_policy``) with the experiment's
settings, read through the config loader from ``--experiment`` and the ``--set`` overrides (pass
the ones the workflow run was given): its tasks (or the ``--tasks`` subset of them), step cap,
camera, image size and observation path (``sim.eval_observation``), on the layout seeds
``sim.eval_seed + 0..N-1`` for N = ``--episodes``, i.e. the first N layouts per task the workflow
evaluates. Each policy is loaded once and run with ``policy.decoding`` set to each decoding in
turn, so both decodings meet the same layouts and the episodes pair up. Per arm and finetuning
seed (and per arm with its seeds pooled) it prints each decoding's success rate with a Wilson
interval at ``evaluation.confidence`` and the episode count, and the paired difference
expectation - argmax over the same episodes: a percentile interval from a bootstrap that
resamples episode pairs within each task x seed cell, and the two-sided exact McNemar test on
the discordant episodes (statsmodels). ``|a|`` is the mean absolute action each decoding sent to
the simulator (action units, over every step): it shows the two decodings drove differently.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def decoding_mse(policy, shards, loader_cfg) -> tuple[int, dict[str, float]]:
    """(frames, {decoding: normalised-action MSE}) over the val split, one forward pass per batch."""
    from lapa.evaluation.metrics import ActionMetrics
    from lapa.evaluation.offline import collect_predictions

    records = collect_predictions(policy, shards, loader_cfg, "val")
    out = {}
    for decoding, pred in records["pred"].items():
        acc = ActionMetrics(policy.stats)
        acc.update(records["pred_bins"], records["true"], pred_actions=pred)
        out[decoding] = acc.compute()["mse"]
    return len(records["true"]), out


def _row(name: str, frames: int, mse: dict[str, float], seconds: float) -> None:
    a, e = mse["argmax"], mse["expectation"]
    print(f"{name:28} {frames:7d} {a:14.4f} {e:14.4f} {e / a:9.2f} {seconds:8.1f}")


def _header(first: str) -> None:
    print(f"{first:28} {'frames':>7} {'argmax (base)':>14} {'expectation':>14} {'ratio':>9} {'seconds':>8}")


def run_results(results: Path, experiment: str) -> int:
    from lapa.config import load_config
    from lapa.policy import LAPAPolicy

    cfg = load_config(experiment, [], configs_root=ROOT / "configs")
    shards = results / "shards" / "demos"
    policies = sorted(p.parent for p in (results / "policy").glob("**/config.json"))
    if not policies:
        print(f"no policy directories under {results / 'policy'}", file=sys.stderr)
        return 1
    _header("policy")
    for path in policies:
        start = time.perf_counter()
        policy = LAPAPolicy.from_pretrained(path)
        frames, mse = decoding_mse(policy, shards, cfg.data.loader)
        _row(str(path.relative_to(results / "policy")), frames, mse, time.perf_counter() - start)
    return 0


# ------------------------------------------------------------------------------------ closed loop
DEFAULT_EPISODES = 5  # closed loop: layouts per task and decoding
BOOTSTRAP_DRAWS = 10_000
COMPARED = ("argmax", "expectation")  # the baseline first; differences are the second minus the first


class _ActionMeter:
    """``policy`` as ``evaluate_policy`` calls it, adding up the absolute actions it returns."""

    def __init__(self, policy) -> None:
        self.policy, self.total, self.count = policy, 0.0, 0

    def predict(self, image, instruction: str) -> np.ndarray:
        action = self.policy.predict(image, instruction)
        self.total += float(np.abs(action).sum())
        self.count += int(np.size(action))
        return action

    @property
    def mean_abs(self) -> float:
        return self.total / self.count if self.count else float("nan")


def discover_policies(results: Path, arms: list[str] | None, seeds: list[str] | None) -> list[tuple]:
    """(arm, seed label, directory) of every policy under ``results/policy`` that passes the filters.

    A directory ``policy/<arm>/seed<N>`` is seed ``N``; ``policy/<arm>`` (one finetuning run) is seed
    ``0``, as the results table reads it. Sorted by arm, then seed number.
    """
    from lapa.evaluation.results import DEFAULT_SEED

    found = []
    for config in (results / "policy").glob("**/config.json"):
        parts = config.parent.relative_to(results / "policy").parts
        if len(parts) == 1:
            arm, seed = parts[0], DEFAULT_SEED
        elif len(parts) == 2 and parts[1].startswith("seed"):
            arm, seed = parts[0], parts[1][len("seed") :]
        else:
            continue  # not a policy/<arm>[/seed<N>] directory
        if (arms is None or arm in arms) and (seeds is None or seed in seeds):
            found.append((arm, seed, config.parent))
    return sorted(found, key=lambda r: (r[0], int(r[1]) if r[1].isdigit() else r[1]))


def _rate(successes: int, episodes: int, confidence: float) -> dict:
    from lapa.evaluation.closed_loop import wilson_interval

    lo, hi = wilson_interval(successes, episodes, confidence)
    return {
        "success_rate": successes / episodes if episodes else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "successes": int(successes),
        "episodes": int(episodes),
    }


def paired_comparison(
    base: np.ndarray,
    other: np.ndarray,
    cells: list,
    *,
    confidence: float = 0.95,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> dict:
    """``other`` minus ``base`` success over the same episodes (bool [E] each, episode i paired).

    ``cells`` [E] names each episode's stratum (task x finetuning seed). ``difference`` is the mean
    of ``other - base``; its interval is the percentile interval of a bootstrap that resamples
    episode pairs with replacement within each cell (``draws`` times, seeded). ``p_value`` is the
    two-sided exact McNemar test (statsmodels): a binomial test of the discordant episodes,
    ``base_only`` (base solved, other not) against ``other_only``; 1.0 when none is discordant.
    Raises ValueError for misaligned or empty inputs.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    base, other = np.asarray(base, dtype=bool), np.asarray(other, dtype=bool)
    if base.shape != other.shape or base.ndim != 1 or len(cells) != len(base) or not len(base):
        raise ValueError(
            f"need two equally long outcome vectors and their cells, got {base.shape}, "
            f"{other.shape} and {len(cells)} cells"
        )
    both, base_only = int((base & other).sum()), int((base & ~other).sum())
    other_only, neither = int((~base & other).sum()), int((~base & ~other).sum())
    table = [[both, base_only], [other_only, neither]]
    p_value = float(mcnemar(table, exact=True).pvalue) if base_only + other_only else 1.0
    delta = other.astype(np.float64) - base.astype(np.float64)
    rng = np.random.default_rng(seed)
    boot = np.zeros(draws)
    labels = np.array([str(c) for c in cells])
    for cell in np.unique(labels):
        d = delta[labels == cell]
        boot += d[rng.integers(0, len(d), size=(draws, len(d)))].sum(1)
    boot /= len(delta)
    alpha = (1.0 - confidence) / 2.0
    return {
        "difference": float(delta.mean()),
        "ci_low": float(np.quantile(boot, alpha)),
        "ci_high": float(np.quantile(boot, 1.0 - alpha)),
        "p_value": p_value,
        "table": table,  # rows: base solved / failed; columns: other solved / failed
        "base_only": base_only,
        "other_only": other_only,
        "episodes": int(len(delta)),
        "cells": int(len(np.unique(labels))),
        "confidence": confidence,
        "test": "exact McNemar (two-sided binomial on the discordant episodes)",
        "interval": f"bootstrap of episode pairs within task x seed cells, {draws} draws",
    }


def _read_episodes(out_dir: Path) -> list[dict]:
    import csv

    with open(out_dir / "episodes.csv", newline="") as fh:
        return [
            {
                "task": r["task"],
                "layout_seed": int(r["seed"]),
                "success": r["success"] == "True",
                "steps": int(r["steps"]),
            }
            for r in csv.DictReader(fh)
        ]


def closed_loop_policy(policy, cfg, tasks: list[str], episodes: int, work: Path, name: str) -> dict:
    """Both decodings of one loaded policy through ``evaluate_policy``; per decoding its metrics,
    episodes (task, layout seed, success, steps) and mean |action|, in ``evaluate_policy``'s order."""
    from lapa.evaluation.closed_loop import evaluate_policy, observation_for

    observation = observation_for(cfg.sim, cfg.data.sharding)
    recorded = policy.decoding
    out = {}
    try:
        for decoding in COMPARED:
            policy.decoding = decoding
            meter = _ActionMeter(policy)
            start = time.perf_counter()
            metrics = evaluate_policy(
                meter,
                cfg.sim,
                tasks,
                episodes,
                int(cfg.sim.eval_seed),
                work / decoding,
                save_videos=0,
                confidence=float(cfg.evaluation.confidence),
                policy_name=f"{name} ({decoding})",
                progress=False,
                observation=observation,
            )
            out[decoding] = {
                "metrics": metrics,
                "episodes": _read_episodes(work / decoding),
                "mean_abs_action": meter.mean_abs,
                "seconds": time.perf_counter() - start,
            }
    finally:
        policy.decoding = recorded
    return out


def _summary(runs: list[dict], confidence: float) -> dict:
    """Each decoding's pooled success and the paired comparison over the episodes of ``runs``."""
    base, other = COMPARED
    pairs = [
        (a, e, f"{run['seed']}/{a['task']}")
        for run in runs
        for a, e in zip(run["decodings"][base]["episodes"], run["decodings"][other]["episodes"])
    ]
    for a, e, _ in pairs:
        if (a["task"], a["layout_seed"]) != (e["task"], e["layout_seed"]):
            raise RuntimeError(f"unpaired episodes: {a} against {e}")
    out = {"policies": len(runs)}
    for decoding in COMPARED:
        outcomes = [e["success"] for r in runs for e in r["decodings"][decoding]["episodes"]]
        out[decoding] = _rate(sum(outcomes), len(outcomes), confidence)
        out[decoding]["mean_abs_action"] = float(
            np.mean([r["decodings"][decoding]["mean_abs_action"] for r in runs])
        )
    out["paired"] = paired_comparison(
        np.array([a["success"] for a, _, _ in pairs]),
        np.array([e["success"] for _, e, _ in pairs]),
        [c for _, _, c in pairs],
        confidence=confidence,
    )
    return out


def _cl_header() -> None:
    print(
        f"{'policy':22} {'episodes':>8} {'argmax (base)':>22} {'|a|':>5} {'expectation':>22} {'|a|':>5} "
        f"{'exp - argmax':>24} {'disc':>5} {'McNemar p':>9} {'seconds':>8}"
    )


def _cl_row(name: str, s: dict, seconds: float) -> None:
    def rate(r: dict) -> str:
        return f"{r['success_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

    p = s["paired"]
    a, e = s["argmax"], s["expectation"]
    diff = f"{p['difference']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
    disc = f"{p['base_only']}/{p['other_only']}"
    print(
        f"{name:22} {p['episodes']:8d} {rate(a):>22} {a['mean_abs_action']:5.2f} {rate(e):>22} "
        f"{e['mean_abs_action']:5.2f} {diff:>24} {disc:>5} {p['p_value']:9.3f} {seconds:8.1f}"
    )


def run_closed_loop(
    results: Path,
    experiment: str,
    overrides: list[str],
    episodes: int,
    arms: list[str] | None,
    seeds: list[str] | None,
    tasks: list[str] | None,
    device: str,
    out: Path | None,
) -> int:
    from lapa.config import load_config
    from lapa.evaluation.closed_loop import observation_for
    from lapa.policy import LAPAPolicy
    from lapa.utils.io import atomic_write_json, read_json_object

    cfg = load_config(experiment, overrides, configs_root=ROOT / "configs")
    if tasks is not None:
        unknown = [t for t in tasks if t not in cfg.sim.tasks]
        if unknown:
            print(
                f"--tasks {' '.join(unknown)}: not in the experiment's sim.tasks "
                f"({', '.join(cfg.sim.tasks)})",
                file=sys.stderr,
            )
            return 2
    tasks = list(cfg.sim.tasks if tasks is None else tasks)
    policies = discover_policies(results, arms, seeds)
    if not policies:
        print(
            f"no policy directories under {results / 'policy'} match --arms {arms} --seeds {seeds}",
            file=sys.stderr,
        )
        return 1
    confidence = float(cfg.evaluation.confidence)
    observation = observation_for(cfg.sim, cfg.data.sharding)
    setting = {
        "tasks": tasks,
        "episodes_per_task": episodes,
        "seed_range": [int(cfg.sim.eval_seed), int(cfg.sim.eval_seed) + episodes],
        "max_steps": int(cfg.sim.max_steps),
        "camera": cfg.sim.camera,
        "image_size": int(cfg.sim.image_size),
        "observation": "raw" if observation is None else observation.describe(),
        "confidence": confidence,
    }
    print(
        f"closed loop, experiment {cfg.name}: {len(tasks)} task(s) x {episodes} episode(s) per decoding, "
        f"layout seeds {setting['seed_range'][0]}..{setting['seed_range'][1] - 1}, "
        f"max {setting['max_steps']} steps, camera {setting['camera']} at {setting['image_size']} px, "
        f"observation {setting['observation']}; success [Wilson {100 * confidence:g}% CI], "
        f"paired difference [bootstrap CI], discordant episodes argmax-only/expectation-only"
    )
    _cl_header()
    runs, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-decoding-") as tmp:
        for i, (arm, seed, path) in enumerate(policies):
            start = time.perf_counter()
            name = f"{arm}/seed{seed}"
            policy = LAPAPolicy.from_pretrained(path, device=device)
            run = {
                "arm": arm,
                "seed": seed,
                "path": str(path),
                "recorded_decoding": policy.decoding,
                "decodings": closed_loop_policy(policy, cfg, tasks, episodes, Path(tmp) / str(i), name),
            }
            del policy
            workflow_eval = results / "eval" / arm / f"seed{seed}" / "sim" / "metrics.json"
            if workflow_eval.is_file():
                m = read_json_object(workflow_eval)
                run["workflow_eval"] = {
                    "path": str(workflow_eval),
                    "overall": m.get("overall"),
                    "episodes_per_task": m.get("episodes_per_task"),
                }
            run["summary"] = _summary([run], confidence)
            run["seconds"] = time.perf_counter() - start
            runs.append(run)
            _cl_row(name, run["summary"], run["seconds"])
            sys.stdout.flush()
    by_arm = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        by_arm[arm] = _summary(mine, confidence)
        if len(mine) > 1:
            _cl_row(f"{arm} (seeds pooled)", by_arm[arm], sum(r["seconds"] for r in mine))
    wall = time.perf_counter() - started
    print(f"{len(runs)} policies in {wall:.1f} s")
    if out is not None:
        for run in runs:
            for d in run["decodings"].values():
                d["metrics"] = {
                    k: d["metrics"][k] for k in ("overall", "per_task", "mean_predict_ms", "wall_s")
                }
        atomic_write_json(
            out,
            {
                "mode": "closed-loop",
                "results": str(results),
                "experiment": cfg.name,
                "overrides": overrides,
                "device": device,
                **setting,
                "runs": runs,
                "arms": by_arm,
                "wall_s": wall,
            },
        )
        print(f"wrote {out}")
    return 0


def run_synthetic(steps: int, sigma: float, l1: float, episodes: int, seed: int) -> int:
    sys.path.insert(0, str(ROOT))
    from lapa.finetune.train import finetune
    from lapa.policy import LAPAPolicy
    from tests.fixtures.policy import make_tiny_inputs, tiny_config

    base = [
        f"finetune.training.max_steps={steps}",
        "finetune.training.val_every_steps=0",
        f"finetune.training.checkpoint_every_steps={steps}",
        "finetune.training.cpu_threads=1",
        "finetune.init=scratch",
        f"seed={seed}",
    ]
    targets = {
        "one-hot (base)": [],
        f"label_sigma={sigma:g}": [f"finetune.label_sigma={sigma}"],
        f"l1_weight={l1:g}": [f"finetune.l1_weight={l1}"],
        f"sigma={sigma:g}+l1={l1:g}": [f"finetune.label_sigma={sigma}", f"finetune.l1_weight={l1}"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = tiny_config(base)
        inputs = make_tiny_inputs(root, cfg, num_episodes=episodes)
        print(f"synthetic colour task: {episodes} episodes, {steps} steps from scratch, seed {seed}")
        _header("target")
        for i, (name, extra) in enumerate(targets.items()):
            start = time.perf_counter()
            cfg = tiny_config([*base, *extra])
            out = root / f"policy-{i}"
            finetune(
                cfg,
                foundation_dir=None,
                backbones_dir=inputs["backbones"],
                action_stats_path=inputs["action_stats"],
                shards_dir=inputs["shards"],
                out_dir=out,
            )
            frames, mse = decoding_mse(LAPAPolicy.from_pretrained(out), inputs["shards"], cfg.data.loader)
            _row(name, frames, mse, time.perf_counter() - start)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--results", type=Path, help="a workflow output directory (holds policy/ and shards/)")
    mode.add_argument("--synthetic", action="store_true", help="finetune the synthetic task per target")
    parser.add_argument(
        "--experiment",
        default="default",
        help="experiment config (name or YAML path): data.loader for the shards; closed loop: sim, "
        "data.sharding and evaluation.confidence",
    )
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--l1", type=float, default=0.5)
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help=f"--synthetic: demonstration episodes (default 16); --closed-loop: layouts per task and "
        f"decoding (default {DEFAULT_EPISODES})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    loop = parser.add_argument_group("closed loop (with --results)")
    loop.add_argument(
        "--closed-loop",
        action="store_true",
        help="success in the simulator with each decoding instead of the offline MSE",
    )
    loop.add_argument("--arms", nargs="+", metavar="ARM", help="only these arms (default: every arm)")
    loop.add_argument(
        "--seeds", nargs="+", metavar="N", help="only these finetuning seeds (policy/<arm>/seed<N>)"
    )
    loop.add_argument("--tasks", nargs="+", metavar="TASK", help="a subset of sim.tasks (default: all)")
    loop.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override, repeatable (those the workflow run was given; e.g. sim.max_steps=60)",
    )
    loop.add_argument("--device", default="cpu", help="where the policy runs (default: cpu)")
    loop.add_argument("--out", type=Path, help="also write the figures and every episode to this JSON")
    args = parser.parse_args(argv)
    if not args.closed_loop:
        extra = [f"--{k.replace('_', '-')}" for k in ("arms", "seeds", "tasks", "out") if getattr(args, k)]
        extra += ["--set"] if args.overrides else []
        extra += ["--device"] if args.device != "cpu" else []
        if extra:
            parser.error(f"{', '.join(extra)} only apply with --closed-loop")
    elif args.results is None:
        parser.error("--closed-loop needs --results")
    if args.episodes is not None and args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    np.set_printoptions(precision=4)
    if args.closed_loop:
        return run_closed_loop(
            args.results,
            args.experiment,
            args.overrides,
            args.episodes or DEFAULT_EPISODES,
            args.arms,
            args.seeds,
            args.tasks,
            args.device,
            args.out,
        )
    if args.results is not None:
        return run_results(args.results, args.experiment)
    return run_synthetic(args.steps, args.sigma, args.l1, args.episodes or 16, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
