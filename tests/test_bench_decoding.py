"""benchmarks/bench_decoding.py: the paired statistics of its closed-loop mode, and that mode run for
real in Meta-World on a tiny policy laid out like a workflow run's policies."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_decoding.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_decoding", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_comparison_counts_discordant_episodes(bench):
    base = np.array([1, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    other = np.array([1, 0, 1, 1, 1, 1, 1, 1], dtype=bool)
    cells = ["a"] * 4 + ["b"] * 4
    out = bench.paired_comparison(base, other, cells, draws=2000)
    assert out["table"] == [[2, 1], [5, 0]]
    assert (out["base_only"], out["other_only"], out["episodes"], out["cells"]) == (1, 5, 8, 2)
    assert out["difference"] == pytest.approx(0.5)
    # exact McNemar: two-sided binomial(6, 1/2) tail at 1 -> 2 * 7/64
    assert out["p_value"] == pytest.approx(14 / 64)
    assert out["ci_low"] <= 0.5 <= out["ci_high"] and -1 <= out["ci_low"] < out["ci_high"] <= 1
    # no discordant episode: no evidence either way, and no spread in the resampled difference
    same = bench.paired_comparison(base, base, cells, draws=200)
    assert (same["p_value"], same["difference"], same["ci_low"], same["ci_high"]) == (1.0, 0.0, 0.0, 0.0)
    # resampling stays within cells: a cell where only one decoding ever succeeds keeps its sign
    one_sided = bench.paired_comparison(np.zeros(6, bool), np.ones(6, bool), ["x"] * 3 + ["y"] * 3)
    assert one_sided["ci_low"] == one_sided["ci_high"] == 1.0
    with pytest.raises(ValueError, match="equally long"):
        bench.paired_comparison(base, other[:-1], cells)


def test_discover_policies_reads_arm_and_seed_folders(bench, tmp_path):
    for rel in ("lapa/seed0", "lapa/seed10", "lapa/seed2", "scratch", "action_pretrained/seed1", "x/y/z"):
        (tmp_path / "policy" / rel).mkdir(parents=True)
        (tmp_path / "policy" / rel / "config.json").write_text("{}")
    found = [(arm, seed) for arm, seed, _ in bench.discover_policies(tmp_path, None, None)]
    assert found == [
        ("action_pretrained", "1"),
        ("lapa", "0"),
        ("lapa", "2"),
        ("lapa", "10"),
        ("scratch", "0"),  # a policy/<arm> directory is finetuning seed 0
    ]
    picked = bench.discover_policies(tmp_path, ["lapa", "scratch"], ["0", "10"])
    assert [(a, s, p.relative_to(tmp_path).as_posix()) for a, s, p in picked] == [
        ("lapa", "0", "policy/lapa/seed0"),
        ("lapa", "10", "policy/lapa/seed10"),
        ("scratch", "0", "policy/scratch"),
    ]


def test_help_lists_the_closed_loop_options():
    done = subprocess.run(
        [sys.executable, str(BENCH), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for option in ("--closed-loop", "--arms", "--seeds", "--tasks", "--episodes", "--set", "--out"):
        assert option in done.stdout
    refused = subprocess.run(
        [sys.executable, str(BENCH), "--synthetic", "--closed-loop"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert refused.returncode == 2 and "--closed-loop needs --results" in refused.stderr


@pytest.mark.sim
def test_closed_loop_runs_both_decodings_on_the_same_layouts(bench, tmp_path, capsys):
    """A tiny untrained policy (4-D actions) in Meta-World, 1 task x 1 episode x 8 steps per decoding,
    through the command line's entry point; then the same episode again by ``evaluate_policy``."""
    pytest.importorskip("metaworld")
    import torch

    from lapa.config import load_config
    from lapa.evaluation.closed_loop import evaluate_policy, observation_for
    from lapa.policy import LAPAPolicy
    from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config

    torch.set_num_threads(1)
    cfg = tiny_config()
    results = tmp_path / "results"
    path = make_untrained_policy(
        cfg, make_tiny_inputs(tmp_path / "inputs", cfg), results / "policy/lapa/seed0"
    )
    shutil.copytree(path, results / "policy" / "scratch" / "seed0")  # left out by --arms
    overrides = ["sim.max_steps=8"]
    out = tmp_path / "closed_loop.json"
    argv = ["--results", str(results), "--experiment", "tiny", "--closed-loop", "--arms", "lapa"]
    argv += ["--episodes", "1", "--tasks", "reach-v3", "--set", overrides[0], "--out", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "lapa/seed0" in printed and "scratch" not in printed

    report = json.loads(out.read_text())
    exp = load_config("tiny", overrides, configs_root=ROOT / "configs")
    assert report["tasks"] == ["reach-v3"] and report["episodes_per_task"] == 1
    assert report["seed_range"] == [exp.sim.eval_seed, exp.sim.eval_seed + 1]
    assert report["max_steps"] == 8 and report["camera"] == exp.sim.camera
    assert report["observation"] == observation_for(exp.sim, exp.data.sharding).describe()
    (run,) = report["runs"]
    assert (run["arm"], run["seed"], run["recorded_decoding"]) == ("lapa", "0", "argmax")
    for decoding in ("argmax", "expectation"):
        (episode,) = run["decodings"][decoding]["episodes"]
        assert episode["task"] == "reach-v3" and episode["layout_seed"] == exp.sim.eval_seed
        assert 1 <= episode["steps"] <= 8
        rate = run["summary"][decoding]
        assert rate["episodes"] == 1 and rate["successes"] == int(episode["success"])
        assert rate["ci_low"] <= rate["success_rate"] <= rate["ci_high"]
    paired = report["arms"]["lapa"]["paired"]
    assert paired["episodes"] == 1 and paired["base_only"] + paired["other_only"] <= 1
    # the decodings drove the arm differently from the same logits
    a, e = (run["summary"][d]["mean_abs_action"] for d in ("argmax", "expectation"))
    assert np.isfinite([a, e]).all() and a != e

    # the workflow's evaluation of the same policy with expectation decoding: the same episode
    policy = LAPAPolicy.from_pretrained(path)
    policy.decoding = "expectation"
    meter = bench._ActionMeter(policy)
    direct = evaluate_policy(
        meter,
        exp.sim,
        ["reach-v3"],
        1,
        exp.sim.eval_seed,
        tmp_path / "direct",
        save_videos=0,
        progress=False,
        observation=observation_for(exp.sim, exp.data.sharding),
    )
    (episode,) = run["decodings"]["expectation"]["episodes"]
    assert direct["overall"]["successes"] == int(episode["success"])
    assert bench._read_episodes(tmp_path / "direct") == [episode]
    assert meter.mean_abs == pytest.approx(run["decodings"]["expectation"]["mean_abs_action"], rel=1e-6)
