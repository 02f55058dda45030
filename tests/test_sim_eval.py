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
    assert json.loads((out / "metrics.json").read_text())["overall"]["episodes"] == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["eval-sim", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 1
