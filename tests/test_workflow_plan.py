"""What `snakemake -n` plans after a change: the changed stage and what follows, nothing upstream.

One fake results tree of the tiny experiment (outputs created empty, then `snakemake --touch`
records each job's params and code fingerprint) serves every plan; the lapa source that is
fingerprinted is a copy, so editing code here leaves the repository alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow" / "lib"))

from lapa_workflow import codehash  # noqa: E402
from lapa_workflow.runner import (  # noqa: E402
    fake_existing_outputs,
    job_reasons,
    planned_jobs,
    planned_outputs,
    run_snakemake,
    snakemake_command,
)

UPSTREAM_OF_LAQ = {"rollouts", "shards_pairs", "shards_demos"}
FROM_LAQ_DOWN = {"train_laq", "label_latent", "train_foundation", "finetune", "eval_offline", "eval_sim"}
EVERY_RULE = UPSTREAM_OF_LAQ | FROM_LAQ_DOWN | {"make_backbones", "action_stats", "label_actions"}
EVERY_RULE |= {"results", "plot_curves"}
ARMS = 3  # the tiny experiment finetunes and evaluates lapa, scratch and action_pretrained, one seed each


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    source = root / "src"
    shutil.copytree(REPO / "lapa", source / "lapa", ignore=shutil.ignore_patterns("__pycache__"))
    config = {"experiment": "tiny", "lapa_source": str(source)}
    work = root / "work"
    fake_existing_outputs(work, config)
    return work, source, config


def plan(tree, overrides=None, *args):
    work, _, config = tree
    out = run_snakemake(work, "-n", *args, config=config, overrides=overrides).stdout
    return planned_jobs(out), out


def test_up_to_date_tree_plans_nothing(tree):
    jobs, out = plan(tree)
    assert jobs == {}, out


def test_laq_vocabulary_reruns_laq_and_downstream_only(tree):
    jobs, out = plan(tree, ["laq.quantizer.vocab_size=16"])
    assert set(jobs) == FROM_LAQ_DOWN | {"results", "plot_curves"}, out
    assert jobs["finetune"] == 1  # the lapa arm; the scratch arm never saw the LAQ
    assert jobs["train_laq"] == 1
    assert any("Params have changed" in r for r in job_reasons(out)["train_laq"])


def test_sharding_change_reruns_everything_from_shards_down(tree):
    jobs, out = plan(tree, ["data.sharding.samples_per_shard=50"])
    assert "rollouts" not in jobs, out
    assert set(jobs) == EVERY_RULE - {"rollouts"}, out
    assert jobs["finetune"] == ARMS and jobs["eval_offline"] == ARMS


def test_settings_that_do_not_change_outputs_rerun_nothing(tree):
    jobs, out = plan(tree, ["data.sharding.workers=7", "cluster.mem_gb=99", "laq.label_batch_size=3"])
    assert jobs == {}, out


def test_run_settings_of_training_rerun_nothing(tree):
    overrides = [
        "laq.training.keep_last=7",
        "foundation.training.cpu_threads=1",
        "finetune.training.keep_last=5",
    ]
    jobs, out = plan(tree, overrides)
    assert jobs == {}, out


def test_serving_settings_rerun_nothing(tree):
    jobs, out = plan(tree, ["serve.port=9000", "serve.host=0.0.0.0", "serve.max_image_bytes=1000"])
    assert jobs == {}, out


def test_serving_code_edit_reruns_nothing(tree):
    _, source, _ = tree
    edited = [source / "lapa" / "policy" / "server.py", source / "lapa" / "commands" / "policy.py"]
    originals = [path.read_bytes() for path in edited]
    try:
        for path, original in zip(edited, originals):
            path.write_bytes(original + b"\n# edited\n")
        jobs, out = plan(tree)
    finally:
        for path, original in zip(edited, originals):
            path.write_bytes(original)
    assert jobs == {}, out


def test_finetune_command_edit_does_not_rebin_actions(tree):
    _, source, _ = tree
    target = source / "lapa" / "commands" / "finetune.py"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\n# edited\n")
        jobs, out = plan(tree)
    finally:
        target.write_bytes(original)
    assert jobs["finetune"] == ARMS, out
    assert not ({"action_stats", "label_actions", "train_foundation"} & set(jobs)), out


def test_finetune_code_edit_reruns_finetune_and_downstream_only(tree):
    _, source, _ = tree
    target = source / "lapa" / "finetune" / "train.py"
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\n# edited\n")
        jobs, out = plan(tree)
    finally:
        target.write_bytes(original)
    upstream = UPSTREAM_OF_LAQ | {"train_laq", "label_latent", "make_backbones", "train_foundation"}
    assert not (set(jobs) & upstream), out
    assert jobs["finetune"] == ARMS and jobs["eval_offline"] == ARMS, out
    assert "action_stats" not in jobs, out  # the statistics code did not change
    assert {"results", "plot_curves"} <= set(jobs)
    reasons = job_reasons(out)
    assert any("Params have changed" in r for r in reasons["finetune"])


def test_overrides_reach_the_lapa_command_lines(tree):
    _, out = plan(tree, ["laq.quantizer.vocab_size=16"], "--printshellcmds")
    laq_lines = [line for line in out.splitlines() if "lapa train-laq" in line]
    assert laq_lines and "laq.quantizer.vocab_size=16" in laq_lines[0]
    assert "configs/experiment/tiny.yaml" in laq_lines[0]


def test_unknown_experiment_lists_the_available_ones(tmp_path):
    proc = subprocess.run(
        snakemake_command(tmp_path, "-n", config={"experiment": "nope"}),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert "unknown experiment 'nope'" in proc.stdout + proc.stderr
    assert "tiny" in proc.stdout + proc.stderr and "default" in proc.stdout + proc.stderr


# -- finetuning seeds: every arm runs the same ones, the results table reads them all --------------
def shell_commands(out: str, command: str) -> list[str]:
    """The shell commands of a ``snakemake -n -p`` listing that run ``lapa <command>``."""
    return [line for line in out.splitlines() if f"lapa {command} " in line]


def test_every_arm_runs_every_finetuning_seed_and_results_reads_them_all(tmp_path):
    seeds = [0, 1, 2]
    out = run_snakemake(
        tmp_path, "-n", "-p", config={"experiment": "tiny"}, overrides=[f"workflow.finetune_seeds={seeds}"]
    ).stdout
    jobs = planned_jobs(out)
    assert jobs["finetune"] == jobs["eval_offline"] == jobs["eval_sim"] == ARMS * len(seeds), out
    assert jobs["train_foundation"] == 2 and jobs["train_laq"] == 1 and jobs["results"] == 1, out
    arms = ["lapa", "scratch", "action_pretrained"]
    finetunes = shell_commands(out, "finetune")
    for arm in arms:
        for seed in seeds:
            policy = f"results/tiny/policy/{arm}/seed{seed}"
            (line,) = [c for c in finetunes if f"--out {policy} " in c]
            assert f"finetune.training.seed={seed} " in line, line
            assert ("finetune.init=scratch" in line) == (arm == "scratch"), line
    # the closed-loop evaluation of every arm and seed is the same command but for its paths
    sims = shell_commands(out, "eval-sim")
    assert len(sims) == ARMS * len(seeds)
    plain = {re.sub(r"results/tiny/\S+|logs/tiny/\S+", "PATH", c) for c in sims}
    assert len(plain) == 1, plain
    (results,) = shell_commands(out, "results")
    inputs = results.split("--inputs ")[1].split(" --")[0].split()
    kinds = ("offline", "sim")
    expected = {f"results/tiny/eval/{a}/seed{s}/{kind}" for a in arms for s in seeds for kind in kinds}
    assert set(inputs) == expected and len(inputs) == len(expected), results
    # jobs that run a model take one core each, so that two of them share a 2-core machine
    model_rules = {"train_laq", "label_latent", "train_foundation", "finetune", "eval_offline", "eval_sim"}
    for block in out.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block.strip(), re.M)
        if rule and rule.group(1) in model_rules:
            assert not re.search(r"^\s*threads: (?!1\b)", block, re.M), block
    foundations = results.split("--foundation ")[1].split(" --")[0].split()
    assert foundations == [f"results/tiny/foundation/{a}" for a in ("lapa", "action_pretrained")], results


def test_added_finetuning_seeds_plan_only_their_runs_and_the_results(tree):
    jobs, out = plan(tree, ["workflow.finetune_seeds=[0,1,2]"])
    new = ARMS * 2
    assert dict(jobs) == {"finetune": new, "eval_offline": new, "eval_sim": new, "results": 1}, out
    assert not [p for p in planned_outputs(out) if "/seed0" in p], out  # seed 0 is kept as it is
    assert any("Set of input files has changed" in r for r in job_reasons(out)["results"]), out


def test_the_demonstration_split_by_task_leaves_the_frame_pairs_alone(tree):
    jobs, out = plan(tree, ["data.sharding.train_episodes_per_task=2"], "-p")
    assert "shards_demos" in jobs and "shards_pairs" not in jobs and "train_laq" not in jobs, out
    (pairs,) = shell_commands(plan(tree, [], "-p", "--forcerun", "shards_pairs")[1], "shards pairs")
    assert pairs.split(" > ")[0].endswith("data.sharding.train_episodes_per_task=null"), pairs


def test_evaluation_seeds_inside_a_training_range_are_refused(tmp_path):
    cases = {
        "sim.eval_seed=100001": "demos seeds [100000, 100004)",
        "sim.eval_seed=2": "pretrain seeds [0, 4)",
    }
    for override, named in cases.items():
        proc = run_snakemake(tmp_path, "-n", config={"experiment": "tiny"}, overrides=[override], check=False)
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0, text
        assert "closed-loop evaluation seeds" in text and named in text, text[-3000:]
        assert "tiny.yaml" in text and "sim.eval_seed" in text, text[-3000:]


def test_video_source_reads_the_users_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        (videos / f"clip{i}.mp4").write_bytes(b"")
    out = run_snakemake(
        tmp_path / "work",
        "-n",
        config={"experiment": "tiny"},
        overrides=["data.source=videos", f"data.videos=[{videos}/*.mp4]"],
    ).stdout
    jobs = planned_jobs(out)
    assert jobs["rollouts"] == 1  # demonstrations still come from the simulator
    block = out[out.index("rule shards_pairs:") :].split("\n\n")[0]
    assert all(f"clip{i}.mp4" in block for i in range(3)), block


def test_code_closure_follows_lazy_imports_and_skips_schemas(tmp_path):
    pkg = tmp_path / "lapa"
    for sub in ["", "a", "b", "config", "c"]:
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "a" / "run.py").write_text(
        "def go():\n    from lapa.b import impl\n    from ..config import schema\n"
    )
    (pkg / "b" / "impl.py").write_text("from . import helper\n")
    (pkg / "b" / "helper.py").write_text("X = 1\n")
    (pkg / "c" / "other.py").write_text("Y = 2\n")
    (pkg / "config" / "schema.py").write_text("from lapa.c import other\n")
    files = {str(p.relative_to(tmp_path)) for p in codehash.closure(tmp_path, ["lapa.a"])}
    assert "lapa/b/impl.py" in files and "lapa/b/helper.py" in files
    assert "lapa/config/schema.py" not in files and "lapa/c/other.py" not in files
    before = codehash.fingerprint(tmp_path, ["lapa.a"])
    (pkg / "c" / "other.py").write_text("Y = 3\n")
    assert codehash.fingerprint(tmp_path, ["lapa.a"]) == before
    (pkg / "b" / "helper.py").write_text("X = 2\n")
    assert codehash.fingerprint(tmp_path, ["lapa.a"]) != before


# -- other videos: the shards rebuild and so does everything that learnt from them ------------------
@pytest.fixture(scope="module")
def video_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for folder in ["a", "b"]:
        (root / folder).mkdir()
        for i in range(3):
            (root / folder / f"clip{i}.mp4").write_bytes(f"{folder}{i}".encode())
    config = {"experiment": "tiny"}
    work = root / "work"
    fake_existing_outputs(work, config, ["data.source=videos", f"data.videos=[{root}/a/*.mp4]"])
    return work, root, config


def video_plan(video_tree, folder):
    work, root, config = video_tree
    overrides = ["data.source=videos", f"data.videos=[{root}/{folder}/*.mp4]"]
    out = run_snakemake(work, "-n", config=config, overrides=overrides).stdout
    return planned_jobs(out), out


# trained on the frame pairs, directly or through their labels or instructions (backbones)
FROM_PAIRS = {"shards_pairs", "train_laq", "label_latent", "label_actions", "make_backbones"}
FROM_PAIRS |= {"train_foundation", "finetune", "eval_offline", "eval_sim", "results", "plot_curves"}


def test_video_tree_is_up_to_date(video_tree):
    jobs, out = video_plan(video_tree, "a")
    assert jobs == {}, out


def test_other_videos_retrain_the_laq_and_everything_downstream(video_tree):
    jobs, out = video_plan(video_tree, "b")
    assert set(jobs) == FROM_PAIRS, out  # demonstrations, their shards and statistics stay
    assert jobs["train_laq"] == 1 and jobs["train_foundation"] == 2 and jobs["finetune"] == ARMS
    reasons = job_reasons(out)
    assert any("shards/pairs" in r for r in reasons["train_laq"]), reasons["train_laq"]
    block = out[out.index("rule shards_pairs:") :].split("\n\n")[0]
    assert all(f"b/clip{i}.mp4" in block for i in range(3)), block


def test_a_video_replaced_in_place_retrains_the_laq(video_tree):
    _, root, _ = video_tree
    clip = root / "a" / "clip1.mp4"
    before = clip.stat()
    try:
        clip.write_bytes(b"another recording")
        later = before.st_mtime + 3600
        os.utime(clip, (later, later))
        jobs, out = video_plan(video_tree, "a")
    finally:
        clip.write_bytes(b"a1")
        os.utime(clip, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert set(jobs) == FROM_PAIRS, out
    assert any("clip1.mp4" in r for r in job_reasons(out)["shards_pairs"]), out
