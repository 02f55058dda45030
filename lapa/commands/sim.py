"""``lapa rollouts`` (expert episodes as a LeRobot dataset) and ``lapa eval-sim`` (closed loop)."""

from __future__ import annotations

import argparse
import json

from lapa.commands import add_config_arguments, load_config_from_args

_ROLLOUTS_EPILOG = """\
Records Meta-World's scripted experts on every task in sim.tasks, sim.<split>_episodes_per_task
episodes each, with layout seeds from the split's own range (sim.pretrain_seed, sim.demo_seed,
sim.eval_seed; overlapping ranges are an error). Frames come from sim.camera at sim.image_size;
an episode stops sim.steps_after_success steps after the first success or at sim.max_steps.

output: a LeRobot v3.0 dataset (meta/info.json, meta/tasks.parquet, meta/episodes/, data/,
videos/observation.image/) plus meta/rollouts.json (expert success per task). Features:
observation.image, action (executed, with the split's exploration noise), action.intended (the
expert's action before noise), next.success. Videos are lossless by default (sim.video_lossless:
RGB H.264 at qp 0), so they hold the rendered pixels exactly. DIR appears only when complete;
rerunning rebuilds it.
"""

_EVAL_EPILOG = """\
The policy sees the rendered image (sim.camera, sim.image_size) and the task's instruction and
returns a 4-D action. With sim.eval_observation=shards (the default) the image first goes the
way training frames went into shards (data.sharding resize and crop, JPEG at
data.sharding.jpeg_quality), so it matches them pixel for pixel; sim.eval_observation=raw gives
the render as it is. Per task, N episodes (--episodes, else evaluation.episodes_per_task, else
sim.eval_episodes_per_task) on layout seeds sim.eval_seed + 0..N-1; an episode succeeds at its
first success within sim.max_steps steps.

output: DIR/metrics.json (success per task and overall with Wilson intervals at
evaluation.confidence, the observation path), DIR/episodes.csv, DIR/videos/*.mp4
(sim.save_videos per task). DIR appears only when complete.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollouts",
        help="record scripted-expert Meta-World episodes as a LeRobot v3 dataset",
        description="Record scripted-expert Meta-World episodes as a LeRobot v3 dataset.",
        epilog=_ROLLOUTS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--split", required=True, choices=["pretrain", "demos", "eval"], help="which seed range")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: sim.workers)")
    add_config_arguments(p)
    p.set_defaults(func=_run_rollouts)

    p = sub.add_parser(
        "eval-sim",
        help="closed-loop success rate of a policy in Meta-World",
        description="Run a policy in the Meta-World simulator and measure its success rate.",
        epilog=_EVAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", metavar="DIR", help="policy directory (written by `lapa finetune`)")
    which.add_argument(
        "--baseline",
        choices=["expert", "zero"],
        help="a reference policy instead: the scripted experts (upper bound) or a motionless arm",
    )
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK", help="tasks (default: sim.tasks)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p)
    p.set_defaults(func=_run_eval_sim)


def _run_rollouts(args: argparse.Namespace) -> int:
    from lapa.sim.rollouts import generate_rollouts

    cfg = load_config_from_args(args)
    summary = generate_rollouts(cfg.sim, args.split, args.out, workers=args.workers)
    print(json.dumps(summary, indent=2))
    return 0


def _load_policy(args: argparse.Namespace):
    if args.baseline == "expert":
        from lapa.sim.policies import ExpertPolicy

        return ExpertPolicy(), "expert"
    if args.baseline == "zero":
        from lapa.sim.policies import ConstantPolicy

        return ConstantPolicy(), "zero"
    from pathlib import Path

    if not Path(args.policy).is_dir():
        raise FileNotFoundError(f"policy directory not found: {args.policy}")
    from lapa.policy import LAPAPolicy

    return LAPAPolicy.from_pretrained(args.policy), str(args.policy)


def _run_eval_sim(args: argparse.Namespace) -> int:
    from lapa.evaluation.closed_loop import evaluate_policy, observation_for

    cfg = load_config_from_args(args)
    observation = observation_for(cfg.sim, cfg.data.sharding)
    episodes = args.episodes or cfg.evaluation.episodes_per_task or cfg.sim.eval_episodes_per_task
    policy, name = _load_policy(args)
    metrics = evaluate_policy(
        policy,
        cfg.sim,
        args.tasks,
        int(episodes),
        int(cfg.sim.eval_seed),
        args.out,
        confidence=float(cfg.evaluation.confidence),
        policy_name=name,
        progress=not args.no_progress,
        observation=observation,
    )
    print(json.dumps({"overall": metrics["overall"], "out": args.out}, indent=2))
    return 0
