"""Simulator throughput: rendered frames/s, environment steps/s, and expert-rollout steps/s with 1 and
N workers; and how far the frames a policy sees in closed-loop evaluation lie from its training frames.

The rendering baseline is MuJoCo's default quality (shadow maps, 4x multisampling, reflections),
which is what gymnasium's renderer uses; ours turns those off and leaves out of each frame the
geoms wholly outside the camera's view (``cull_offscreen``, the same pixels). Environment steps
(``MetaWorldEnv.step``: physics, Meta-World's observation and success, the frame) are timed on the
experiment's tasks with one fixed random action sequence, with every geom drawn and with the
offscreen ones left out, the two alternated over rounds; CPU ms/step counts the rasteriser's
threads too and is the steadier figure on a busy machine. The image-fidelity baseline is the
former path (x264 crf 10 in 4:2:0 for the rollout videos, raw renders in evaluation) beside
lossless videos with raw renders and with the shards' observation path, plus the cost of each
video (encode time, bytes per frame). Run:

    .venv/bin/python benchmarks/bench_sim.py [--sizes 64 224] [--frames 200] [--episodes 6] [--workers 2]
        [--experiment metaworld_small] [--env-steps 150] [--env-rounds 2]
    .venv/bin/python benchmarks/bench_sim.py --fidelity [--experiment metaworld_small] [--fidelity-episodes 1]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")


def render_fps(task: str, camera: str, size: int, frames: int, fast: bool, cull: bool = True) -> float:
    import mujoco

    from lapa.sim.env import MetaWorldEnv

    with MetaWorldEnv(task, camera=camera, image_size=size, cull_offscreen=cull) as env:
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


def env_steps_per_s(sim, steps: int, rounds: int) -> dict[bool, tuple[float, float, int]]:
    """{cull_offscreen: (steps/s, CPU ms/step, steps)} of ``MetaWorldEnv.step`` on every task of
    ``sim``, one env per task and setting, the same uniform random actions for both settings,
    episodes of ``steps`` steps from layout seed ``sim.eval_seed``; the order alternates by round."""
    import numpy as np

    from lapa.sim.env import MetaWorldEnv

    actions = np.random.default_rng(0).uniform(-1.0, 1.0, size=(steps, 4))
    kwargs = {"camera": sim.camera, "image_size": int(sim.image_size), "max_steps": steps, "zoom": sim.zoom}
    envs = {
        cull: [MetaWorldEnv(t, cull_offscreen=cull, **kwargs) for t in sim.tasks] for cull in (False, True)
    }
    totals = {cull: [0.0, 0.0, 0] for cull in envs}
    try:
        for r in range(rounds):
            for cull in (False, True) if r % 2 == 0 else (True, False):
                for env in envs[cull]:
                    env.reset(seed=sim.eval_seed + r)
                    wall, cpu = time.perf_counter(), time.process_time()
                    for action in actions:
                        env.step(action)
                    totals[cull][0] += time.perf_counter() - wall
                    totals[cull][1] += time.process_time() - cpu
                    totals[cull][2] += steps
    finally:
        for group in envs.values():
            for env in group:
                env.close()
    return {cull: (n / wall, 1000.0 * cpu / n, n) for cull, (wall, cpu, n) in totals.items()}


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


def _shard_images(raw, out, sharding) -> dict:
    """(episode index, frame index) -> the image the demonstration shards store (``lapa shards``'s code)."""
    import json

    from lapa.data.build import build_shards
    from lapa.data.codec import decode_jpeg
    from lapa.data.shard_reader import iter_samples

    build_shards("demos", [str(raw)], out, sharding, progress=False)
    images = {}
    for split in ("train", "val"):
        for s in iter_samples(sorted((out / split).glob("*.tar"))):
            meta = json.loads(s["json"])  # episode ids are "<dataset>/<episode index>"
            images[(int(meta["episode_id"].rsplit("/", 1)[-1]), meta["frame_index"])] = decode_jpeg(
                s["image.jpg"]
            )
    return images


class _Recorder:
    """The scripted experts, keeping every image they are shown."""

    needs_state = True

    def __init__(self) -> None:
        from lapa.sim.policies import ExpertPolicy

        self.expert, self.seen = ExpertPolicy(), []

    def predict(self, image, instruction, *, state):
        self.seen.append(image)
        return self.expert.predict(image, instruction, state=state)


def fidelity(experiment: str, episodes: int) -> None:
    """Mean |difference| (grey levels) between the images a policy gets in closed loop and the
    training shards' images of the same rendered states, for the former and the current paths."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from lapa.config import load_config
    from lapa.config.data import ShardingConfig
    from lapa.data.images import resize_crop
    from lapa.data.lerobot import write_lerobot_dataset
    from lapa.data.shards import plain_settings
    from lapa.evaluation.closed_loop import ShardObservation, run_episode
    from lapa.sim.env import MetaWorldEnv
    from lapa.sim.rollouts import episode_specs, iter_expert_episodes

    cfg = load_config(experiment, [f"sim.demo_episodes_per_task={episodes}", "sim.demo_action_noise=0.0"])
    sim = cfg.sim
    settings = {**plain_settings(cfg.data.sharding), "val_fraction": 0.0, "workers": 1}
    sharding = ShardingConfig(**{**settings, "train_episodes_per_task": None})
    specs = episode_specs(sim, "demos")
    eps = list(iter_expert_episodes(sim, specs, 1))
    frames = sum(e.num_frames for e in eps)
    print(
        f"image fidelity: {experiment}, {len(eps)} expert episodes, {frames} frames at {sim.image_size} px; "
        f"shards: resize {sharding.resize}, crop {sharding.crop}, jpeg {sharding.jpeg_quality}"
    )
    observe = ShardObservation.from_sharding(sharding)
    seen: dict[str, dict] = {"raw": {}, "shards": {}}
    for i, (ep, spec) in enumerate(zip(eps, specs)):
        with MetaWorldEnv(
            spec.task, camera=sim.camera, image_size=sim.image_size, max_steps=ep.num_frames, zoom=sim.zoom
        ) as env:
            for name, obs in (("raw", None), ("shards", observe)):
                policy = _Recorder()
                run_episode(policy, env, spec.seed, observation=obs)
                for t, image in enumerate(policy.seen[: ep.num_frames]):
                    seen[name][(i, t)] = resize_crop(image, sharding.resize, sharding.crop)

    stored = {}
    with tempfile.TemporaryDirectory() as tmp:
        for video, kwargs in (("crf 10 4:2:0", {"crf": 10}), ("lossless", {"lossless": True})):
            raw = Path(tmp) / ("lossless" if kwargs.get("lossless") else "crf10")
            start = time.perf_counter()
            write_lerobot_dataset(raw, iter(eps), eps[0].fps, **kwargs)
            ms = 1000 * (time.perf_counter() - start) / frames
            kib = sum(f.stat().st_size for f in (raw / "videos").rglob("*.mp4")) / frames / 1024
            stored[video] = _shard_images(raw, Path(tmp) / f"{raw.name}_shards", sharding)
            print(f"  video {video:13s}: dataset written in {ms:5.2f} ms/frame, {kib:5.2f} KiB/frame")
    print("  |image a policy sees - training shard image| in grey levels: mean, per-channel bias, > 16")
    for video, observation, note in (
        ("crf 10 4:2:0", "raw", "baseline: the former path"),
        ("lossless", "raw", "the shards' JPEG alone"),
        ("lossless", "shards", "current: sim.eval_observation=shards"),
    ):
        keys = [k for k in stored[video] if k in seen[observation]]
        d = np.stack([seen[observation][k] for k in keys]).astype(np.int16)
        d -= np.stack([stored[video][k] for k in keys]).astype(np.int16)
        bias = np.round(d.mean(axis=(0, 1, 2)), 2).tolist()
        print(
            f"    {video:13s} video, {observation:6s} eval: {np.abs(d).mean():6.3f}  {bias}  "
            f"{100 * (np.abs(d) > 16).mean():5.2f}%  ({len(keys)} frames; {note})"
        )
    moves = np.mean([np.abs(np.diff(e.frames.astype(np.int16), axis=0)).mean() for e in eps])
    print(f"  for scale: consecutive raw frames differ by {moves:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--camera", default="zoom")
    parser.add_argument("--fidelity", action="store_true", help="only the image-fidelity comparison")
    parser.add_argument(
        "--experiment", default="metaworld_small", help="config of the env-step and fidelity comparisons"
    )
    parser.add_argument("--env-steps", type=int, default=150, help="steps per task and round (0: skip)")
    parser.add_argument("--env-rounds", type=int, default=2, help="rounds, alternating the two settings")
    parser.add_argument("--fidelity-episodes", type=int, default=1, help="expert episodes per task")
    args = parser.parse_args()
    if args.fidelity:
        fidelity(args.experiment, args.fidelity_episodes)
        return

    from lapa.config import load_config

    print(f"cpus: {os.cpu_count()}  MUJOCO_GL={os.environ.get('MUJOCO_GL')}  camera={args.camera}")
    print("render frames/s (push-v3)")
    for size in args.sizes:
        base = render_fps("push-v3", args.camera, size, max(20, args.frames // 10), fast=False)
        plain = render_fps("push-v3", args.camera, size, args.frames, fast=True, cull=False)
        fast = render_fps("push-v3", args.camera, size, args.frames, fast=True)
        print(
            f"  {size:4d} px  default quality {base:7.1f}   no shadows/AA {plain:7.1f}   "
            f"+ offscreen cull (lapa) {fast:7.1f}   x{fast / base:.1f}"
        )

    if args.env_steps > 0:
        sim = load_config(args.experiment).sim
        print(
            f"env steps ({args.experiment}: {len(sim.tasks)} tasks, {sim.camera} camera, "
            f"{sim.image_size} px, {args.env_steps} random-action steps per task x {args.env_rounds} rounds)"
        )
        rates = env_steps_per_s(sim, args.env_steps, args.env_rounds)
        for cull, label in ((False, "every geom drawn"), (True, "offscreen cull (lapa)")):
            rate, ms, n = rates[cull]
            print(f"  {label:22s}: {rate:7.1f} steps/s, {ms:6.3f} CPU ms/step ({n} steps)")
        (full, full_ms, _), (culled, culled_ms, _) = rates[False], rates[True]
        print(f"  speed-up x{culled / full:.2f} (CPU x{full_ms / culled_ms:.2f})")

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
