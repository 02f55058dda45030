"""Closed-loop evaluation with real policies: the scripted experts score high, a still arm low."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from lapa.evaluation.closed_loop import wilson_interval

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = wilson_interval(10, 10, confidence=0.9)
    assert hi == 1.0 and lo == pytest.approx(0.7870, abs=1e-3)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.5)


def _sim(*overrides: str):
    from lapa.config import load_config

    base = ["sim.image_size=32", "sim.max_steps=120", "sim.save_videos=1"]
    return load_config("default", [*base, *overrides], configs_root=CONFIGS).sim


@pytest.mark.sim
def test_expert_policy_scores_high(tmp_path):
    pytest.importorskip("metaworld")
    import av

    from lapa.evaluation.closed_loop import evaluate_policy
    from lapa.sim.policies import ExpertPolicy

    sim = _sim()
    out = tmp_path / "expert"
    metrics = evaluate_policy(
        ExpertPolicy(), sim, ["reach-v3", "push-v3"], 2, sim.eval_seed, out, progress=False
    )
    assert metrics["overall"]["episodes"] == 4 and metrics["overall"]["success_rate"] >= 0.75
    assert metrics["overall"]["ci_low"] < metrics["overall"]["success_rate"] <= metrics["overall"]["ci_high"]
    assert json.loads((out / "metrics.json").read_text())["per_task"].keys() == {"reach-v3", "push-v3"}
    rows = list(csv.DictReader((out / "episodes.csv").open()))
    assert [int(r["seed"]) for r in rows] == [sim.eval_seed, sim.eval_seed + 1] * 2
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 2  # save_videos=1 per task
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    (row,) = [r for r in rows if r["video"] == f"videos/{videos[0].name}"]
    assert len(frames) == int(row["steps"]) + 1 and frames[0].shape == (32, 32, 3)


@pytest.mark.sim
def test_zero_policy_scores_low(tmp_path):
    pytest.importorskip("metaworld")
    from lapa.evaluation.closed_loop import evaluate_policy
    from lapa.sim.policies import ConstantPolicy

    sim = _sim("sim.max_steps=60", "sim.save_videos=0")
    metrics = evaluate_policy(
        ConstantPolicy(), sim, ["push-v3"], 2, sim.eval_seed, tmp_path / "zero", progress=False
    )
    assert metrics["overall"]["successes"] == 0
    assert not (tmp_path / "zero" / "videos").exists()


@pytest.mark.sim
def test_bad_policy_and_seeds(tmp_path):
    pytest.importorskip("metaworld")
    from lapa.evaluation.closed_loop import evaluate_policy
    from lapa.sim.policies import ConstantPolicy

    sim = _sim()
    with pytest.raises(ValueError, match="returned 7 values"):
        evaluate_policy(
            ConstantPolicy(np.zeros(7)), sim, ["reach-v3"], 1, sim.eval_seed, tmp_path / "a", progress=False
        )
    assert not (tmp_path / "a").exists()  # nothing that looks complete
    with pytest.raises(ValueError, match="overlap the pretrain seeds"):
        evaluate_policy(
            ConstantPolicy(), sim, ["reach-v3"], 1, sim.pretrain_seed, tmp_path / "b", progress=False
        )


@pytest.mark.sim
def test_eval_sim_command(tmp_path):
    pytest.importorskip("metaworld")
    from lapa.commands import main

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "eval-sim",
                "--baseline",
                "zero",
                "--out",
                str(out),
                "--tasks",
                "reach-v3",
                "--episodes",
                "1",
                "--no-progress",
                "-c",
                str(CONFIGS / "experiment" / "default.yaml"),
                "sim.max_steps=20",
                "sim.image_size=16",
            ]
        )
    assert exit_info.value.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["episodes"] == 1
    assert metrics["observation"] == "shards (resize 64, crop 64, jpeg 95)"  # the default config's shards
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-sim", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 1


class _Recorder:
    """The scripted experts, remembering every image they were shown."""

    needs_state = True

    def __init__(self) -> None:
        from lapa.sim.policies import ExpertPolicy

        self.expert, self.seen = ExpertPolicy(), []

    def predict(self, image, instruction, *, state):
        self.seen.append(np.array(image))
        return self.expert.predict(image, instruction, state=state)


def _shard_frames(sim, sharding, tmp_path, name: str) -> dict[int, np.ndarray]:
    """Demonstration rollouts -> LeRobot -> demo shards (the real path); frame index -> stored image."""
    from lapa.data.build import build_shards
    from lapa.data.codec import decode_jpeg
    from lapa.data.shard_reader import iter_samples
    from lapa.sim.rollouts import generate_rollouts

    generate_rollouts(sim, "demos", tmp_path / name)
    build_shards("demos", [str(tmp_path / name)], tmp_path / f"{name}_shards", sharding, progress=False)
    tars = sorted((tmp_path / f"{name}_shards" / "train").glob("*.tar"))
    return {json.loads(s["json"])["frame_index"]: decode_jpeg(s["image.jpg"]) for s in iter_samples(tars)}


@pytest.mark.sim
def test_evaluation_frames_match_training_frames(tmp_path):
    """The images a policy sees in closed loop and the training shards' images of the same rendered
    states: identical with lossless rollout videos and the shards' observation path; off by exactly
    the shards' JPEG error with raw renders; further off with the former crf-10 4:2:0 videos."""
    pytest.importorskip("metaworld")
    from lapa.config import load_config
    from lapa.data.codec import decode_jpeg, encode_jpeg
    from lapa.data.images import resize_crop
    from lapa.evaluation.closed_loop import ShardObservation, observation_for, run_episode
    from lapa.sim.env import MetaWorldEnv

    overrides = [
        "sim.tasks=[reach-v3]",
        "sim.image_size=32",
        "sim.max_steps=12",
        "sim.demo_episodes_per_task=1",
        "sim.workers=1",
        "data.sharding.resize=28",
        "data.sharding.crop=24",
        "data.sharding.val_fraction=0",
        "data.sharding.workers=1",
    ]
    cfg = load_config("default", overrides, configs_root=CONFIGS)
    sim, sharding = cfg.sim, cfg.data.sharding
    lossless = _shard_frames(sim, sharding, tmp_path, "lossless")
    cfg_crf = load_config("default", [*overrides, "sim.video_lossless=false"], configs_root=CONFIGS)
    crf10 = _shard_frames(cfg_crf.sim, sharding, tmp_path, "crf10")

    observation = observation_for(sim, sharding)
    assert isinstance(observation, ShardObservation)
    seen = {}
    with MetaWorldEnv("reach-v3", image_size=32, max_steps=12) as env:
        for name, obs in (("shards", observation), ("raw", None)):
            policy = _Recorder()
            run_episode(policy, env, int(sim.demo_seed), observation=obs)
            seen[name] = policy.seen
    n = min(len(seen["shards"]), len(lossless))
    assert n >= 10

    def mean_diff(a, b):
        return float(np.mean([np.abs(a[t].astype(int) - b[t].astype(int)).mean() for t in range(n)]))

    for t in range(n):  # lossless videos + the shards' observation path: the same pixels
        np.testing.assert_array_equal(seen["shards"][t], lossless[t])
    raw = [resize_crop(image, 28, 24) for image in seen["raw"]]
    jpeg_error = mean_diff(raw, [decode_jpeg(encode_jpeg(image, sharding.jpeg_quality)) for image in raw])
    assert mean_diff(raw, lossless) == pytest.approx(jpeg_error, abs=1e-9)  # the JPEG and nothing else
    assert 0 < jpeg_error < 3
    assert mean_diff(seen["shards"], crf10) > 1.0  # the lossy video's own error, which the test catches
    with pytest.raises(ValueError, match="sim.eval_observation"):
        observation_for(load_config("default", ["sim.eval_observation=jpeg"]).sim, sharding)


def test_results_refuse_arms_seen_through_other_observation_paths(tmp_path):
    from lapa.evaluation.results import ArmResults, check_comparable

    def arm(name, observation):
        metrics = {"per_task": {"reach-v3": {}}, "episodes_per_task": 2, "seed_range": [0, 2]}
        result = ArmResults(name, sim={"0": {**metrics, "observation": observation}})
        result.paths[("sim", "0")] = tmp_path / name
        return result

    check_comparable({"scratch": arm("scratch", "raw"), "lapa": arm("lapa", "raw")})
    with pytest.raises(ValueError, match="arm 'lapa'.*observation='raw'"):
        check_comparable(
            {"scratch": arm("scratch", "shards (resize 64, crop 64, jpeg 95)"), "lapa": arm("lapa", "raw")}
        )
