"""The results table, built from real closed-loop evaluations of two real policies."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.sim
def test_results_table_ranks_expert_above_still_arm(tmp_path):
    pytest.importorskip("metaworld")
    from lapa.config import load_config
    from lapa.evaluation.closed_loop import evaluate_policy
    from lapa.sim.policies import ConstantPolicy, ExpertPolicy

    sim = load_config("default", ["sim.image_size=32", "sim.max_steps=100", "sim.save_videos=0"]).sim
    dirs = []
    for arm, policy in (("scratch", ConstantPolicy()), ("lapa", ExpertPolicy())):
        out = tmp_path / "eval" / arm / "sim"
        evaluate_policy(policy, sim, ["reach-v3"], 2, sim.eval_seed, out, progress=False)
        dirs.append(str(out))
    laq = tmp_path / "laq.metrics.json"
    laq.write_text(
        json.dumps({"val": {"val/psnr": 27.5, "val/psnr_copy": 25.0, "val/action_nmi_mean": 0.31}})
    )

    proc = subprocess.run(
        [sys.executable, "-m", "lapa", "results", "--inputs", *dirs, "--laq-metrics", str(laq)]
        + ["--out", str(tmp_path / "summary")],
        capture_output=True,
        text=True,
        cwd=CONFIGS.parent,
    )
    assert proc.returncode == 0, proc.stderr
    summary = tmp_path / "summary"
    rows = list(csv.DictReader((summary / "results.csv").open()))
    overall = {r["arm"]: float(r["success_rate"]) for r in rows if r["task"] == "overall"}
    assert overall["lapa"] > overall["scratch"]
    assert [r["arm"] for r in rows][0] == "lapa"  # arms in their canonical order
    md = (summary / "results.md").read_text()
    assert "| **overall** |" in md and "laq.val.val/psnr_copy" in md and "[" in md


def test_results_rejects_unknown_directory(tmp_path):
    from lapa.evaluation.results import write_results

    (tmp_path / "eval" / "lapa" / "other").mkdir(parents=True)
    with pytest.raises(ValueError, match="'sim' or 'offline'"):
        write_results([tmp_path / "eval" / "lapa" / "other"], tmp_path / "out")
    (tmp_path / "eval" / "lapa" / "sim").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_results([tmp_path / "eval" / "lapa" / "sim"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
