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
