"""Expert rollouts: every split writes a readable LeRobot dataset from its own seed range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="needs the 'sim' extra (metaworld)")

from lapa.config import load_config  # noqa: E402
from lapa.data.lerobot import load_info, read_lerobot_dataset  # noqa: E402
from lapa.sim.env import MetaWorldEnv  # noqa: E402
from lapa.sim.rollouts import check_seed_ranges, episode_specs, generate_rollouts  # noqa: E402

pytestmark = pytest.mark.sim
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _sim(*overrides: str):
    base = [
        "sim.tasks=[reach-v3]",
        "sim.image_size=32",
        "sim.max_steps=100",
        "sim.steps_after_success=3",
        "sim.pretrain_episodes_per_task=1",
        "sim.demo_episodes_per_task=1",
        "sim.eval_episodes_per_task=1",
        "sim.workers=1",
    ]
    return load_config("default", [*base, *overrides], configs_root=CONFIGS).sim


@pytest.mark.parametrize("split", ["pretrain", "demos", "eval"])
def test_rollout_split_writes_dataset(tmp_path, split):
    sim = _sim()
    out = tmp_path / split
    summary = generate_rollouts(sim, split, out)
    assert summary["per_task"]["reach-v3"]["solved"] == 1
    info = load_info(out)
    assert info["total_episodes"] == 1 and info["fps"] == 80
    assert info["features"]["observation.image"]["shape"] == [32, 32, 3]
    (ep,) = list(read_lerobot_dataset(out))
    assert ep.instruction == "reach the goal position" and ep.task == "reach-v3"
    assert ep.actions.shape == (ep.num_frames, 4) and np.abs(ep.actions).max() <= 1.0
    first = int(np.argmax(ep.success))
    assert ep.success[first] and not ep.success[:first].any()
    assert ep.num_frames == first + 1 + 3  # stops steps_after_success steps after the first success
    assert ep.frames.std() > 10
    seed = {"pretrain": sim.pretrain_seed, "demos": sim.demo_seed, "eval": sim.eval_seed}[split]
    assert ep.meta["seed"] == seed
    provenance = json.loads((out / "meta" / "rollouts.json").read_text())
    assert provenance["seed_range"] == [seed, seed + 1]


def test_splits_have_different_layouts():
    sim = _sim(
        "sim.pretrain_episodes_per_task=2", "sim.demo_episodes_per_task=2", "sim.eval_episodes_per_task=2"
    )
    layouts = {}
    with MetaWorldEnv("reach-v3", image_size=16) as env:
        for split in ("pretrain", "demos", "eval"):
            for spec in episode_specs(sim, split):
                env.reset(seed=spec.seed)
                layouts[(split, spec.seed)] = env.layout
    keys = list(layouts)
    assert len(keys) == 6
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not np.allclose(layouts[a], layouts[b]), (a, b)


def test_overlapping_seed_ranges_rejected():
    sim = _sim("sim.pretrain_episodes_per_task=200000")
    with pytest.raises(ValueError, match="sim.pretrain_seed and sim.demo_seed"):
        check_seed_ranges(sim)
    with pytest.raises(ValueError, match="sim.pretrain_seed and sim.demo_seed"):
        episode_specs(sim, "eval")


@pytest.mark.slow
def test_worker_pool_matches_in_process(tmp_path):
    sim = _sim("sim.tasks=[reach-v3,push-v3]", "sim.pretrain_episodes_per_task=2")
    generate_rollouts(sim, "pretrain", tmp_path / "one", workers=1)
    generate_rollouts(sim, "pretrain", tmp_path / "two", workers=2)
    one, two = list(read_lerobot_dataset(tmp_path / "one")), list(read_lerobot_dataset(tmp_path / "two"))
    assert [e.task for e in two] == ["reach-v3", "push-v3", "reach-v3", "push-v3"]
    for a, b in zip(one, two):
        assert a.meta["seed"] == b.meta["seed"]
        np.testing.assert_array_equal(a.actions, b.actions)  # rollouts are deterministic per seed
        np.testing.assert_array_equal(a.success, b.success)


def test_exploration_noise_changes_executed_actions_deterministically():
    from lapa.sim.rollouts import EpisodeSpec, expert_episode

    spec = EpisodeSpec("reach-v3", 3, "pretrain", 0)
    with MetaWorldEnv("reach-v3", image_size=32, max_steps=25) as env:
        clean = expert_episode(env, spec, steps_after_success=0)
        noisy = expert_episode(env, spec, steps_after_success=0, action_noise=0.5)
        again = expert_episode(env, spec, steps_after_success=0, action_noise=0.5)
    n = min(len(clean.actions), len(noisy.actions))
    assert np.abs(clean.actions[:n] - noisy.actions[:n]).mean() > 0.05
    np.testing.assert_array_equal(noisy.actions, again.actions)  # seeded by the episode
    assert np.abs(noisy.actions).max() <= 1.0


# -- the expert's intended action beside the executed one ------------------------------------


@pytest.fixture(scope="module")
def noisy_rollout(tmp_path_factory):
    """One exploratory pretraining episode (noise std 0.5) recorded as a LeRobot dataset; its
    episode as read back; the replay's renders and expert actions."""
    sim = _sim("sim.pretrain_action_noise=0.5", "sim.max_steps=24", "sim.steps_after_success=0")
    out = tmp_path_factory.mktemp("noisy") / "raw"
    generate_rollouts(sim, "pretrain", out)
    (ep,) = list(read_lerobot_dataset(out))
    frames, expert = _replay(ep.task, ep.meta["seed"], ep.actions, int(sim.image_size))
    return out, ep, frames, expert


def _replay(task: str, seed: int, executed: np.ndarray, image_size: int):
    """Re-run the episode with its executed actions: the renders and the expert's action at every
    frame, computed here from the simulator state alone (not from what the rollout recorded)."""
    from lapa.sim.policies import ScriptedExpert

    expert = ScriptedExpert(task)
    frames, expert_actions = [], []
    with MetaWorldEnv(task, image_size=image_size, max_steps=len(executed)) as env:
        image, obs = env.reset(seed=seed)
        for action in executed:
            frames.append(image)
            expert_actions.append(expert.act(obs))
            image, obs, _, _ = env.step(action)
    return np.stack(frames), np.stack(expert_actions).astype(np.float32)


def test_rollouts_record_the_intended_action_beside_the_executed_one_and_lossless_frames(noisy_rollout):
    out, ep, frames, expert = noisy_rollout
    info = load_info(out)
    assert info["features"]["action.intended"]["shape"] == [4]
    assert info["features"]["observation.image"]["info"]["video.pix_fmt"] == "gbrp"
    assert json.loads((out / "meta" / "rollouts.json").read_text())["video"] == "lossless"
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert len(stats["action.intended"]["mean"]) == 4
    assert ep.intended_actions.shape == ep.actions.shape == (ep.num_frames, 4)
    np.testing.assert_array_equal(ep.intended_actions, expert)  # the expert's own action at t
    assert np.abs(ep.actions - ep.intended_actions).mean() > 0.1  # executed = intended + noise
    np.testing.assert_array_equal(ep.frames, frames)  # the video stores the renders exactly


def test_action_labels_are_the_binned_expert_actions_not_the_executed_ones(noisy_rollout, tmp_path):
    """Rollouts -> pair shards -> ``lapa label --targets actions``: with exploration noise the labels
    are the binned actions the expert meant, which the report names."""
    from lapa.commands import main
    from lapa.data.action_codec import ActionStats
    from lapa.data.build import build_shards
    from lapa.data.codec import decode_npy
    from lapa.data.shard_reader import iter_samples

    raw, ep, _, expert = noisy_rollout
    sharding = [
        "data.sharding.resize=32",
        "data.sharding.crop=32",
        "data.sharding.fps=null",
        "data.sharding.frame_offset=1",
        "data.sharding.val_fraction=0",
        "data.sharding.workers=1",
    ]
    cfg = load_config("default", sharding, configs_root=CONFIGS)
    build_shards("pairs", [str(raw)], tmp_path / "pairs", cfg.data.sharding, progress=False)
    stats = ActionStats.from_actions(np.concatenate([expert, ep.actions]), num_bins=16)
    stats.save(tmp_path / "stats.json")
    with pytest.raises(SystemExit) as exc:
        main(
            ["label", "--targets", "actions", "--action-stats", str(tmp_path / "stats.json")]
            + ["--shards", str(tmp_path / "pairs"), "--out", str(tmp_path / "labels")]
            + [*sharding, "laq.label_workers=0"]
        )
    assert exc.value.code == 0
    samples = list(iter_samples(sorted((tmp_path / "labels" / "train").glob("*.tar"))))
    assert len(samples) == ep.num_frames - 1
    t = np.array([json.loads(s["json"])["frame_index"] for s in samples])
    labels = np.stack([decode_npy(s["latent.npy"]) for s in samples])
    np.testing.assert_array_equal(labels, stats.quantize(expert[t]))
    assert (labels != stats.quantize(ep.actions[t])).any(axis=1).mean() > 0.5
    report = json.loads((tmp_path / "labels" / "label_report.json").read_text())
    assert report["action_source"] == "intended"
    assert report["action_source_counts"] == {"intended": len(samples), "executed": 0}
