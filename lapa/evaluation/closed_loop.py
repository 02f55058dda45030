"""Closed-loop evaluation: a policy drives the simulator from rendered images and instructions.

A policy is any object with ``predict(image_uint8_hwc, instruction) -> action[4]``; one that
sets ``needs_state = True`` is also given ``state=`` (the scripted experts), and an optional
``reset()`` is called before each episode. Layouts come from the evaluation seed range, never
used for pretraining videos or demonstrations. An episode counts as solved at its first success.

The observation path: a policy sees the rendered frame, or with an ``observation`` transform
(``ShardObservation``, what ``lapa eval-sim`` uses under ``sim.eval_observation: shards``) the
frame as the shard writer would have stored it: resized and cropped like ``data.sharding`` and
through the same JPEG round trip. Rollout videos are lossless (``sim.video_lossless``), so the
frames a policy is trained on and the frames it sees here are then identical for the same
rendered state.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from lapa.utils.io import atomic_directory, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sane at 0/n and n/n, unlike the normal one)."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"evaluation.confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return (lo, hi)


def _rate(successes: int, trials: int, confidence: float) -> dict:
    lo, hi = wilson_interval(successes, trials, confidence)
    return {
        "success_rate": successes / trials if trials else float("nan"),
        "successes": successes,
        "episodes": trials,
        "ci_low": lo,
        "ci_high": hi,
    }


def _check_eval_seeds(sim: Any, seed: int, episodes: int) -> None:
    from lapa.sim.rollouts import seed_range

    for split, key in (("pretrain", "pretrain_seed"), ("demos", "demo_seed")):
        a0, a1 = seed_range(sim, split)
        if seed < a1 and a0 < seed + episodes:
            raise ValueError(
                f"evaluation seeds [{seed}, {seed + episodes}) overlap the {split} seeds [{a0}, {a1}) "
                f"(sim.{key}): evaluation layouts must be unseen"
            )


class ShardObservation:
    """A rendered frame as the shards store it: ``resize_crop(resize, crop)``, then JPEG (4:4:4) at
    ``quality`` and back. ``__call__``: uint8 [H, W, 3] -> uint8 [crop, crop, 3]."""

    def __init__(self, resize: int, crop: int, quality: int) -> None:
        if crop > resize:
            raise ValueError(f"data.sharding.crop ({crop}) must not exceed data.sharding.resize ({resize})")
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"data.sharding.jpeg_quality must be in [1, 100], got {quality}")
        self.resize, self.crop, self.quality = int(resize), int(crop), int(quality)

    @classmethod
    def from_sharding(cls, sharding: Any) -> ShardObservation:
        """The path of ``data.sharding`` (its ``resize``, ``crop`` and ``jpeg_quality``)."""
        return cls(sharding.resize, sharding.crop, sharding.jpeg_quality)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        from lapa.data.codec import decode_jpeg, encode_jpeg
        from lapa.data.images import resize_crop

        return decode_jpeg(encode_jpeg(resize_crop(image, self.resize, self.crop), self.quality))

    def describe(self) -> str:
        return f"shards (resize {self.resize}, crop {self.crop}, jpeg {self.quality})"


def observation_for(sim: Any, sharding: Any) -> ShardObservation | None:
    """The observation transform ``sim.eval_observation`` asks for: ``shards`` or ``raw`` (None)."""
    mode = str(getattr(sim, "eval_observation", "shards"))
    if mode == "raw":
        return None
    if mode == "shards":
        return ShardObservation.from_sharding(sharding)
    raise ValueError(f"sim.eval_observation must be 'shards' or 'raw', got {mode!r}")


def _act(policy: Any, image: np.ndarray, instruction: str, obs: np.ndarray) -> np.ndarray:
    if getattr(policy, "needs_state", False):
        action = policy.predict(image, instruction, state=obs)
    else:
        action = policy.predict(image, instruction)
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    return action


def run_episode(
    policy: Any,
    env: Any,
    seed: int,
    keep_frames: bool = False,
    observation: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """One closed-loop episode on ``env``; stops at the first success or the step cap.

    The policy is given ``observation(frame)`` (the rendered frame when None); kept frames are
    the renders.
    """
    from lapa.sim.env import ACTION_DIM

    if hasattr(policy, "reset"):
        policy.reset()
    image, obs = env.reset(seed=seed)
    frames = [image] if keep_frames else []
    success, first_success, predict_s = False, None, 0.0
    while True:
        t0 = time.perf_counter()
        seen = image if observation is None else observation(image)
        action = _act(policy, seen, env.instruction, obs)
        predict_s += time.perf_counter() - t0
        if action.shape != (ACTION_DIM,):
            raise ValueError(
                f"policy {type(policy).__name__} returned {action.shape[0]} values, need {ACTION_DIM}"
            )
        if not np.isfinite(action).all():
            raise ValueError(f"policy {type(policy).__name__} returned a non-finite action {action.tolist()}")
        image, obs, success, done = env.step(action)
        if keep_frames:
            frames.append(image)
        if success:
            first_success = env.steps
        if success or done:
            break
    return {
        "task": env.task,
        "seed": seed,
        "success": bool(success),
        "steps": env.steps,
        "first_success_step": first_success,
        "predict_ms": 1000.0 * predict_s / max(env.steps, 1),
        "frames": np.stack(frames) if keep_frames else None,
    }


def evaluate_policy(
    policy: Any,
    cfg_sim: Any,
    tasks: list[str] | None,
    episodes_per_task: int,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    max_steps: int | None = None,
    save_videos: int | None = None,
    confidence: float = 0.95,
    policy_name: str = "",
    progress: bool = True,
    observation: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Evaluate ``policy`` on ``tasks`` x ``episodes_per_task`` seeded layouts; write the results.

    Episode j of every task uses layout seed ``seed + j``. ``out_dir`` receives ``metrics.json``
    (per-task and overall success with Wilson intervals), ``episodes.csv`` and the first
    ``save_videos`` rollouts of each task under ``videos/``; it appears only when complete. The
    policy sees ``observation(frame)`` (e.g. ``ShardObservation``), else the rendered frame;
    ``metrics.json`` records which under ``observation``, and the policy's decoding and head
    settings under ``head`` (``lapa.evaluation.head``).
    """
    from tqdm import tqdm

    from lapa.evaluation.head import head_settings
    from lapa.sim.env import MetaWorldEnv
    from lapa.sim.video import write_mp4

    tasks = list(cfg_sim.tasks if tasks is None else tasks)
    if not tasks:
        raise ValueError("no tasks to evaluate (sim.tasks is empty)")
    if episodes_per_task <= 0:
        raise ValueError(f"episodes per task must be positive, got {episodes_per_task}")
    _check_eval_seeds(cfg_sim, int(seed), int(episodes_per_task))
    max_steps = int(cfg_sim.max_steps if max_steps is None else max_steps)
    save_videos = int(cfg_sim.save_videos if save_videos is None else save_videos)

    rows: list[dict] = []
    started = time.time()
    bar = tqdm(total=len(tasks) * episodes_per_task, desc="eval-sim", disable=not progress)
    with atomic_directory(out_dir) as tmp:
        for task in tasks:
            with MetaWorldEnv(
                task,
                camera=cfg_sim.camera,
                image_size=int(cfg_sim.image_size),
                max_steps=max_steps,
                zoom=cfg_sim.zoom,
            ) as env:
                for j in range(episodes_per_task):
                    keep = j < save_videos
                    result = run_episode(
                        policy, env, int(seed) + j, keep_frames=keep, observation=observation
                    )
                    frames = result.pop("frames")
                    if keep:
                        outcome = "success" if result["success"] else "fail"
                        name = f"videos/{task}_seed{result['seed']}_{outcome}.mp4"
                        write_mp4(tmp / name, frames, fps=env.fps)
                        result["video"] = name
                    rows.append(result)
                    bar.update(1)
                    bar.set_postfix(task=task, success=f"{np.mean([r['success'] for r in rows]):.2f}")
        bar.close()

        per_task = {}
        for task in tasks:
            rs = [r for r in rows if r["task"] == task]
            per_task[task] = _rate(sum(r["success"] for r in rs), len(rs), confidence)
            steps = [r["steps"] for r in rs if r["success"]]
            per_task[task]["mean_steps_to_success"] = float(np.mean(steps)) if steps else None
        metrics = {
            "policy": policy_name or type(policy).__name__,
            "head": head_settings(policy),  # decoding and head settings; None: no binned head
            "overall": _rate(sum(r["success"] for r in rows), len(rows), confidence),
            "per_task": per_task,
            "confidence": confidence,
            "episodes_per_task": episodes_per_task,
            "seed_range": [int(seed), int(seed) + episodes_per_task],
            "max_steps": max_steps,
            "camera": cfg_sim.camera,
            "image_size": int(cfg_sim.image_size),
            "observation": "raw"
            if observation is None
            else getattr(observation, "describe", lambda: type(observation).__name__)(),
            "mean_predict_ms": float(np.mean([r["predict_ms"] for r in rows])),
            "wall_s": time.time() - started,
        }
        atomic_write_json(Path(tmp) / "metrics.json", metrics)
        fields = ["task", "seed", "success", "steps", "first_success_step", "predict_ms", "video"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in fields})
        atomic_write_text(Path(tmp) / "episodes.csv", buf.getvalue())
    overall = metrics["overall"]
    log.info(
        "eval-sim: success %.3f (%d/%d, %.0f%% CI %.3f-%.3f) -> %s",
        overall["success_rate"],
        overall["successes"],
        overall["episodes"],
        100 * confidence,
        overall["ci_low"],
        overall["ci_high"],
        out_dir,
    )
    return metrics
