"""Chance-corrected code-action diagnostics: adjusted mutual information and the shortcut probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lapa.laq import metrics as M


def _expert_like_actions(episodes: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Scripted-expert-like 4-D actions: noisy moves that saturate at +-1, a gripper closing once."""
    out = []
    for _ in range(episodes):
        goal = rng.uniform(-1, 1, 3)
        t = np.arange(steps)[:, None]
        xyz = np.clip(goal * 10 * np.exp(-t / 15) + rng.normal(0, 0.3, (steps, 3)), -1, 1)
        grip = np.where(t[:, 0] < rng.integers(10, steps - 5), -1.0, 1.0)
        out.append(np.column_stack([xyz, grip]))
    return np.concatenate(out)


def test_expected_mutual_information_is_the_mean_over_shuffles():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 30, 200), rng.integers(0, 5, 200)
    emi = M.expected_mutual_information(M.contingency(a, b))
    shuffled = [M.mutual_information(rng.permutation(a), b) for _ in range(3000)]
    assert emi == pytest.approx(np.mean(shuffled), abs=4 * np.std(shuffled) / np.sqrt(3000))
    # chunking does not change the sum
    assert M.expected_mutual_information(M.contingency(a, b), chunk_terms=50) == pytest.approx(emi)


def test_adjusted_mutual_information_limits():
    a = np.arange(1000) % 8
    assert M.adjusted_mutual_information(a, (a + 3) % 8) == pytest.approx(1.0)
    assert M.adjusted_mutual_information(a, np.zeros_like(a)) == 0.0
    rng = np.random.default_rng(1)
    many, few = rng.integers(0, 200, 300), rng.integers(0, 4, 300)
    assert M.normalized_mutual_information(many, few) > 0.15  # the plug-in figure's chance level
    assert abs(M.adjusted_mutual_information(many, few)) < 0.02
    with pytest.raises(ValueError, match="average"):
        M.adjusted_mutual_information(a, a, average="median")


def test_independent_codes_score_about_zero_where_the_plugin_nmi_did_not():
    """256 pairs, 11 distinct code tuples drawn independently of the actions (the old 0.4 case)."""
    rng = np.random.default_rng(2)
    actions = _expert_like_actions(8, 32, rng)
    tuples = rng.integers(0, 8, (11, 4))
    codes = tuples[rng.integers(0, 11, len(actions))]
    r = M.code_action_ami(codes, actions, vocab_size=8, bins=8, seed=0)
    assert r["num_pairs"] == 256
    assert r["nmi_plugin"] > 0.2  # what the old diagnostic would have reported as evidence
    assert abs(r["ami"]) < 0.02
    assert r["ami_ci_low"] < 0 < r["ami_ci_high"]
    assert r["ami_p"] > 0.05
    assert abs(r["ami_perm_mean"]) < 0.01 and r["ami_perm_sd"] > 0
    assert abs(r["ami_joint_action"]) < 0.02


def test_codes_that_are_a_function_of_the_action_score_high():
    rng = np.random.default_rng(3)
    actions = _expert_like_actions(16, 32, rng)
    actions[5, 0] = np.nan  # a pair without an action is dropped, not an error
    binned = M.bin_actions(np.nan_to_num(actions), 8)
    codes = np.column_stack([binned[:, 0], binned[:, 1], binned[:, 2], binned[:, 3]])
    r = M.code_action_ami(codes, actions, vocab_size=8, bins=8, seed=0)
    assert r["num_pairs"] == len(actions) - 1
    assert r["ami"] > 0.2 and r["ami_ci_low"] > 0.1  # each dimension is a quarter of the code
    assert r["ami_joint_action"] > 0.95  # the tuple and the binned action determine each other
    assert r["ami_p"] < 0.01
    coarse = M.code_action_ami(binned[:, :1], actions, vocab_size=8, bins=8, seed=0)
    assert coarse["ami_per_dim"][0] > 0.9  # one token that is the first dimension's bin


def test_ami_is_seeded():
    rng = np.random.default_rng(4)
    actions = _expert_like_actions(4, 32, rng)
    codes = rng.integers(0, 4, (len(actions), 2))
    assert M.code_action_ami(codes, actions, 4, seed=7) == M.code_action_ami(codes, actions, 4, seed=7)
    assert M.code_action_ami(codes[:3], actions[:3], 4) == {}


def test_shortcut_probe_tells_codes_that_carry_the_action_from_a_frame_that_gives_it_away():
    rng = np.random.default_rng(5)
    actions = _expert_like_actions(40, 25, rng)
    n = len(actions)
    groups = np.repeat(np.arange(40), 25)
    binned = M.bin_actions(actions, 4)
    noise = rng.normal(size=(n, 48))
    informative = M.bin_actions(actions, 4)  # codes equal to the binned action
    independent = rng.integers(0, 4, (n, 4))

    # the codes carry the action, frame t carries nothing
    r = M.shortcut_probe(informative, actions, noise, 4, bins=4, groups=groups, seed=0)
    assert r["probe_folds_by"] == "group"
    assert r["probe_acc_codes"] > 0.95
    assert r["probe_acc_frame"] < r["probe_chance"] + 0.05
    assert r["probe_gain_ci_low"] > 0.3

    # frame t gives the action away (the shortcut), the codes are independent of it
    leaky = noise.copy()
    leaky[:, :4] += 6 * binned
    r = M.shortcut_probe(independent, actions, leaky, 4, bins=4, groups=groups, seed=0)
    assert r["probe_acc_frame"] > 0.9
    assert r["probe_acc_codes"] < r["probe_chance"] + 0.05
    assert r["probe_gain_ci_high"] < 0
    chance = np.mean([np.bincount(binned[:, d]).max() / n for d in range(4)])
    assert r["probe_chance"] == pytest.approx(chance)


def test_incremental_probe_measures_what_the_codes_add_to_frame_t():
    """Frame t gives the action away in part (as an expert's state does): codes that are the binned
    action add the rest, codes drawn independently of the action add nothing."""
    rng = np.random.default_rng(100)
    actions = _expert_like_actions(24, 20, rng)
    n = len(actions)
    groups = np.repeat(np.arange(24), 20)
    binned = M.bin_actions(actions, 4)
    frame = rng.normal(size=(n, 8))
    frame[:, :4] += 0.6 * binned  # a blurred view of the action
    r = M.shortcut_probe(binned, actions, frame, 4, bins=4, groups=groups, seed=0)
    assert r["probe_chance"] + 0.05 < r["probe_acc_frame"] < 0.8
    assert r["probe_acc_codes_and_frame"] > 0.95
    assert r["probe_gain_over_frame"] > 0.3 and r["probe_gain_over_frame_ci_low"] > 0
    assert r["probe_gain_over_frame"] == pytest.approx(r["probe_acc_codes_and_frame"] - r["probe_acc_frame"])

    r = M.shortcut_probe(rng.integers(0, 4, (n, 2)), actions, frame, 4, bins=4, groups=groups, seed=0)
    assert r["probe_gain"] < -0.05  # the codes alone lose to frame t ...
    assert abs(r["probe_gain_over_frame"]) < 0.05  # ... and add nothing to it
    assert r["probe_gain_over_frame_ci_low"] < 0 < r["probe_gain_over_frame_ci_high"]


def test_probe_keeps_its_earlier_figures():
    """The figures the probe gave before the incremental fit joined its fold loop, to the bit."""
    rng = np.random.default_rng(11)
    actions = _expert_like_actions(12, 20, rng)
    codes = rng.integers(0, 4, (len(actions), 2))
    codes[:, 0] = np.where(rng.random(len(actions)) < 0.5, M.bin_actions(actions, 4)[:, 0], codes[:, 0])
    feats = rng.normal(size=(len(actions), 6))
    feats[:, 0] += M.bin_actions(actions, 4)[:, 3]
    groups = np.repeat(np.arange(12), 20)
    r = M.shortcut_probe(codes, actions, feats, 4, bins=4, groups=groups, seed=3, boot=200)
    pinned = {
        "probe_acc_codes": 0.584375,
        "probe_acc_frame": 0.534375,
        "probe_chance": 0.6072916666666667,
        "probe_gain": 0.05,
        "probe_gain_ci_low": 0.010338541666666678,
        "probe_gain_ci_high": 0.09169270833333333,
    }
    for key, value in pinned.items():
        assert r[key] == pytest.approx(value, abs=1e-12, rel=0), key
    assert (r["probe_dims"], r["probe_folds_by"], r["num_pairs"]) == ([0, 1, 2, 3], "group", 240)


def test_probe_folds_hold_whole_episodes():
    """A frame that identifies its episode predicts a per-episode action only across rows of one
    episode: row folds flatter the frame, episode folds do not."""
    rng = np.random.default_rng(6)
    groups = np.repeat(np.arange(30), 20)
    actions = np.repeat(rng.normal(size=(30, 2)), 20, axis=0)
    frames = np.repeat(rng.normal(size=(30, 16)), 20, axis=0) + 0.01 * rng.normal(size=(600, 16))
    codes = rng.integers(0, 4, (600, 2))
    by_row = M.shortcut_probe(codes, actions, frames, 4, bins=4, seed=0)
    by_episode = M.shortcut_probe(codes, actions, frames, 4, bins=4, groups=groups, seed=0)
    assert by_row["probe_folds_by"] == "row" and by_row["probe_acc_frame"] > 0.9
    assert by_episode["probe_acc_frame"] < by_episode["probe_chance"] + 0.1


def test_frame_features_and_logged_names():
    frames = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    feats = M.frame_features(frames, size=4)
    assert feats.shape == (3, 48) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[:, 0], frames[:, 0, :8, :8].float().mean((1, 2)).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        M.frame_features(torch.zeros(3, 32, 32))

    rng = np.random.default_rng(7)
    actions = _expert_like_actions(10, 20, rng)
    codes = rng.integers(0, 8, (len(actions), 2))
    diag = M.code_action_diagnostics(
        codes, actions, 8, 4, frame_feats=rng.normal(size=(len(actions), 12)), groups=np.repeat(range(10), 20)
    )
    logs = M.diagnostics_logs(diag, "val/")
    for key in (
        "val/code_action_ami",
        "val/code_action_ami_ci_low",
        "val/code_action_ami_ci_high",
        "val/code_action_ami_p",
        "val/probe_acc_codes",
        "val/probe_acc_frame",
        "val/probe_chance",
        "val/probe_acc_codes_and_frame",
        "val/probe_gain_over_frame",
        "val/probe_gain_over_frame_ci_low",
        "val/probe_gain_over_frame_ci_high",
        "val/code_action_ami/dim0",
    ):
        assert isinstance(logs[key], float), key
    assert "val/code_action_ami/dim3" in logs  # the gripper varies
