"""Expert rollouts over the configured tasks, written as a LeRobot v3 dataset.

Each split draws episode seeds from its own range (``sim.pretrain_seed``, ``demo_seed``,
``eval_seed``) so pretraining videos, demonstrations and evaluation layouts never coincide.
Episodes are rendered in a pool of processes (each keeps its environments) and streamed, in a
fixed order, into the dataset writer in the parent; the dataset only appears once complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lapa.data.episode import Episode

log = logging.getLogger(__name__)

SPLITS = ("pretrain", "demos", "eval")
_SPLIT_KEYS = {
    "pretrain": ("pretrain_seed", "pretrain_episodes_per_task"),
    "demos": ("demo_seed", "demo_episodes_per_task"),
    "eval": ("eval_seed", "eval_episodes_per_task"),
}


@dataclass(frozen=True)
class EpisodeSpec:
    task: str
    seed: int
    split: str
    number: int  # episode number within (split, task)


def seed_range(sim: Any, split: str) -> tuple[int, int]:
    """[first, last+1) of the episode seeds ``split`` uses (the same for every task)."""
    if split not in _SPLIT_KEYS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    seed_key, count_key = _SPLIT_KEYS[split]
    first, count = int(sim[seed_key]), int(sim[count_key])
    if count < 0:
        raise ValueError(f"sim.{count_key} must be >= 0, got {count}")
    return first, first + count


def check_seed_ranges(sim: Any, eval_episodes: int | None = None) -> None:
    """Raise if two splits' seed ranges overlap (a layout would leak between them)."""
    ranges = {split: seed_range(sim, split) for split in SPLITS}
    if eval_episodes is not None:
        first = ranges["eval"][0]
        ranges["eval"] = (first, first + int(eval_episodes))
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            if a0 < b1 and b0 < a1:
                ka, kb = _SPLIT_KEYS[a][0], _SPLIT_KEYS[b][0]
                raise ValueError(
                    f"sim.{ka} and sim.{kb}: seed ranges [{a0}, {a1}) of {a} and [{b0}, {b1}) of {b} overlap"
                )


def episode_specs(sim: Any, split: str) -> list[EpisodeSpec]:
    """The episodes of ``split``: every task, seeds ``first .. first+n-1``, interleaved by task
    so that a truncated run still covers every task."""
    check_seed_ranges(sim)
    first, stop = seed_range(sim, split)
    tasks = list(sim.tasks)
    if not tasks:
        raise ValueError("sim.tasks is empty")
    return [EpisodeSpec(t, first + n, split, n) for n in range(stop - first) for t in tasks]


def expert_episode(
    env: Any,
    spec: EpisodeSpec,
    steps_after_success: int,
    action_noise: float = 0.0,
    noise_correlation: float = 0.8,
) -> Episode:
    """Run the scripted expert on ``env`` for one seeded episode.

    Records frame t, the action taken at t (``actions``, float32 [T, 4]), the expert's own action
    at t (``intended_actions``, float32 [T, 4]) and whether the task counts as solved after the
    step; stops ``steps_after_success`` steps after the first success or at the step cap. With
    ``action_noise`` > 0 an AR(1) noise (stationary std ``action_noise``, seeded by the episode
    seed) is added to the expert's action before clipping, so the executed action differs from
    the intended one; the closed-loop expert corrects it. Without noise the two are equal.
    """
    from lapa.sim.policies import ScriptedExpert

    expert = ScriptedExpert(spec.task)
    image, obs = env.reset(seed=spec.seed)
    frames, actions, intended, success = [], [], [], []
    first_success: int | None = None
    rng = np.random.default_rng([spec.seed, 7919])
    rho = float(noise_correlation)
    noise = None
    while True:
        action = expert.act(obs)
        intended.append(action)
        if action_noise > 0:
            fresh = rng.normal(0.0, action_noise, size=action.shape)
            noise = fresh if noise is None else rho * noise + np.sqrt(1 - rho**2) * fresh
            action = np.clip(action + noise, -1.0, 1.0).astype(action.dtype)
        frames.append(image)
        actions.append(action)
        image, obs, solved, done = env.step(action)
        success.append(solved)
        if solved and first_success is None:
            first_success = len(success)
        if done or (first_success is not None and len(success) >= first_success + steps_after_success):
            break
    return Episode(
        episode_id=f"{spec.split}/{spec.task}/{spec.seed}",
        frames=np.stack(frames),
        fps=env.fps,
        instruction=env.instruction,
        task=spec.task,
        actions=np.stack(actions).astype(np.float32),
        intended_actions=np.stack(intended).astype(np.float32),
        success=np.asarray(success, dtype=bool),
        source=f"metaworld:{spec.task}:seed={spec.seed}",
        meta={
            "seed": spec.seed,
            "split": spec.split,
            "camera": env.camera,
            "first_success_step": first_success,
            "solved": first_success is not None,
        },
    )


# -- worker processes ----------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _worker_init(sim: dict) -> None:
    _WORKER["sim"] = sim
    _WORKER["envs"] = {}


def _worker_env(task: str):
    from lapa.config.sim import ZoomCameraConfig
    from lapa.sim.env import MetaWorldEnv

    envs: dict = _WORKER["envs"]
    if task not in envs:
        if len(envs) >= 4:  # bound the renderers a worker holds open
            envs.pop(next(iter(envs))).close()
        sim = _WORKER["sim"]
        envs[task] = MetaWorldEnv(
            task,
            camera=sim["camera"],
            image_size=sim["image_size"],
            max_steps=sim["max_steps"],
            zoom=ZoomCameraConfig(**sim["zoom"]),
        )
    return envs[task]


def _worker_run(spec: EpisodeSpec) -> Episode:
    sim = _WORKER["sim"]
    noise = {"pretrain": sim["pretrain_action_noise"], "demos": sim["demo_action_noise"]}.get(spec.split, 0.0)
    return expert_episode(
        _worker_env(spec.task),
        spec,
        int(sim["steps_after_success"]),
        action_noise=float(noise),
        noise_correlation=float(sim["action_noise_correlation"]),
    )


def iter_expert_episodes(sim: Any, specs: list[EpisodeSpec], workers: int) -> Iterator[Episode]:
    """Episodes of ``specs`` in order, rendered by ``workers`` processes (in-process if <= 1)."""
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(sim, resolve=True) if isinstance(sim, DictConfig) else dict(sim)
    if workers <= 1:
        _worker_init(plain)
        try:
            for spec in specs:
                yield _worker_run(spec)
        finally:
            for env in _WORKER.pop("envs", {}).values():
                env.close()
        return
    import multiprocessing as mp

    # spawn: a forked child would inherit the parent's OpenGL/EGL state
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, initargs=(plain,)) as pool:
        yield from pool.imap(_worker_run, specs, chunksize=1)


def generate_rollouts(sim: Any, split: str, out: str | os.PathLike, *, workers: int | None = None) -> dict:
    """Record the expert episodes of ``split`` into the LeRobot dataset ``out``; return a summary.

    Features: ``observation.image`` (the rendered frames), ``action`` (executed, noise included),
    ``action.intended`` (the expert's action before noise; the action-pretrained arm's target),
    ``next.success``. With ``sim.video_lossless`` (the default) the video stores the rendered
    frames exactly (RGB H.264 at qp 0), so shards built from it hold the renderer's pixels up to
    their own JPEG step, the pixels closed-loop evaluation renders; otherwise x264 at
    ``sim.video_crf`` in 4:2:0 (a mean error of about 2.7 grey levels at 64 px, crf 10).
    """
    from itertools import chain

    from tqdm import tqdm

    from lapa.data.lerobot import write_lerobot_dataset

    specs = episode_specs(sim, split)
    if not specs:
        raise ValueError(f"split {split!r} has no episodes: sim.{_SPLIT_KEYS[split][1]} is 0")
    workers = int(sim.workers if workers is None else workers)
    episodes = iter_expert_episodes(sim, specs, workers)
    first = next(episodes)  # the dataset's frame rate is the simulator's, known from any episode
    fps = first.fps
    counts: dict[str, list[int]] = {}

    def stream() -> Iterator[Episode]:
        for ep in tqdm(chain([first], episodes), total=len(specs), desc=f"rollouts {split}"):
            c = counts.setdefault(ep.task, [0, 0])
            c[0] += 1
            c[1] += int(bool(ep.meta["solved"]))
            yield ep

    def summary() -> dict:
        per_task = {t: {"episodes": n, "solved": k, "success_rate": k / n} for t, (n, k) in counts.items()}
        return {
            "split": split,
            "episodes": len(specs),
            "fps": fps,
            "seed_range": list(seed_range(sim, split)),
            "camera": sim.camera,
            "image_size": int(sim.image_size),
            "video": "lossless" if sim.video_lossless else f"crf {int(sim.video_crf)}",
            "per_task": per_task,
        }

    try:
        write_lerobot_dataset(
            Path(out),
            stream(),
            fps,
            crf=int(sim.video_crf),
            lossless=bool(sim.video_lossless),
            extra_json={"meta/rollouts.json": summary},
        )
    finally:
        episodes.close()  # stops the rendering processes if writing failed
    result = summary()
    for task, c in result["per_task"].items():
        if c["success_rate"] < 0.5:
            log.warning("%s: the expert solved only %d of %d episodes", task, c["solved"], c["episodes"])
    return result
