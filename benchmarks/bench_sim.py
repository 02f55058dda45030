"""Simulator throughput: rendered frames/s and expert-rollout steps/s with 1 and N workers.

The rendering baseline is MuJoCo's default quality (shadow maps, 4x multisampling, reflections),
which is what gymnasium's renderer uses; ours turns those off. Run:

    .venv/bin/python benchmarks/bench_sim.py [--sizes 64 224] [--frames 200] [--episodes 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")


def render_fps(task: str, camera: str, size: int, frames: int, fast: bool) -> float:
    import mujoco

    from lapa.sim.env import MetaWorldEnv

    with MetaWorldEnv(task, camera=camera, image_size=size) as env:
        env.reset(seed=0)
        if not fast:  # a second renderer at MuJoCo's default quality, on the same scene
            model = env._env.model
            model.vis.quality.shadowsize = 4096
            model.vis.quality.offsamples = 4
            renderer = mujoco.Renderer(model, size, size)
            cam = env._camera
        start = time.perf_counter()
        for _ in range(frames):
            if fast:
                env.render()
            else:
                renderer.update_scene(env._env.data, camera=cam)
                renderer.render()
        elapsed = time.perf_counter() - start
        if not fast:
            renderer.close()
    return frames / elapsed


def rollout_steps_per_s(sim, episodes: int, workers: int) -> tuple[float, float, int]:
    """(steps/s overall, steps/s once every worker has delivered an episode, steps)."""
    from lapa.sim.rollouts import EpisodeSpec, iter_expert_episodes

    tasks = list(sim.tasks)
    specs = [
        EpisodeSpec(tasks[i % len(tasks)], sim.pretrain_seed + i, "pretrain", i) for i in range(episodes)
    ]
    start = time.perf_counter()
    arrivals = []
    for ep in iter_expert_episodes(sim, specs, workers):
        arrivals.append((time.perf_counter(), ep.num_frames))
    end = time.perf_counter()
    total = sum(n for _, n in arrivals)
    warm_t = arrivals[workers - 1][0]
    warm_steps = sum(n for _, n in arrivals[workers:])
    return total / (end - start), warm_steps / max(end - warm_t, 1e-9), total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--camera", default="zoom")
    args = parser.parse_args()

    from lapa.config import load_config

    print(f"cpus: {os.cpu_count()}  MUJOCO_GL={os.environ.get('MUJOCO_GL')}  camera={args.camera}")
    print("render frames/s (push-v3)")
    for size in args.sizes:
        base = render_fps("push-v3", args.camera, size, max(20, args.frames // 10), fast=False)
        fast = render_fps("push-v3", args.camera, size, args.frames, fast=True)
        print(f"  {size:4d} px  default quality {base:7.1f}   lapa settings {fast:7.1f}   x{fast / base:.1f}")

    for size in args.sizes[:1]:
        sim = load_config("default", [f"sim.image_size={size}", f"sim.camera={args.camera}"]).sim
        print(
            f"expert rollouts, tasks {list(sim.tasks)}, {args.episodes} episodes at {size} px "
            "(including process start-up)"
        )
        for workers in sorted({1, args.workers}):
            rate, warm, steps = rollout_steps_per_s(sim, args.episodes, workers)
            print(
                f"  workers={workers}: {rate:7.1f} steps/s overall, {warm:7.1f} after start-up "
                f"({steps} steps)"
            )


if __name__ == "__main__":
    main()
