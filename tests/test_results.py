"""The results table: real closed-loop evaluations, arms refused when evaluated differently, the
paired comparison against scratch, and diagnostics beside their chance levels."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2

import lapa.sim  # noqa: F401  (selects headless OpenGL before metaworld imports mujoco)
from lapa.evaluation.closed_loop import wilson_interval
from lapa.evaluation.results import collect, paired_difference, parse_input, write_results

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
        json.dumps({"val": {"val/psnr": 27.5, "val/psnr_copy": 25.0, "val/code_action_ami": 0.031}})
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
    assert "| **overall** |" in md and "[" in md
    assert "| laq.val | reconstruction PSNR (dB) | 27.5 |" in md and "copying frame t" in md
    comparison = list(csv.DictReader((summary / "comparison.csv").open()))
    assert [c["arm"] for c in comparison] == ["lapa"] and float(comparison[0]["difference"]) > 0


# ------------------------------------------------------------------------- evaluations written here
def _sim_metrics(successes: dict[str, int], episodes: int = 20, **overrides) -> dict:
    """A closed-loop metrics.json as ``evaluate_policy`` writes it."""

    def rate(k, n):
        lo, hi = wilson_interval(k, n)
        return {"success_rate": k / n, "successes": k, "episodes": n, "ci_low": lo, "ci_high": hi}

    per_task = {t: rate(k, episodes) for t, k in successes.items()}
    total = sum(successes.values())
    metrics = {
        "policy": "LAPAPolicy",
        "overall": rate(total, episodes * len(successes)),
        "per_task": per_task,
        "confidence": 0.95,
        "episodes_per_task": episodes,
        "seed_range": [1000, 1000 + episodes],
        "max_steps": 150,
        "camera": "corner",
        "image_size": 64,
    }
    metrics.update(overrides)
    return metrics


def _write(root: Path, arm: str, seed: int, metrics: dict, kind: str = "sim") -> str:
    d = root / "eval" / arm / f"seed{seed}" / kind
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    return str(d)


TASKS = [f"task-{i}" for i in range(10)]


def _experiment(root: Path, rates: dict[str, float], seeds=(0, 1, 2), episodes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = []
    for arm, p in rates.items():
        for s in seeds:
            successes = {t: int(rng.binomial(episodes, p)) for t in TASKS}
            inputs.append(_write(root, arm, s, _sim_metrics(successes, episodes)))
    return inputs


@pytest.mark.parametrize(
    "field, override",
    [
        ("episodes_per_task", {"episodes_per_task": 10}),
        ("seed_range", {"seed_range": [2000, 2020]}),
        ("max_steps", {"max_steps": 500}),
        ("camera", {"camera": "corner2"}),
    ],
)
def test_arms_evaluated_differently_are_refused(tmp_path, field, override):
    inputs = _experiment(tmp_path, {"scratch": 0.3}, seeds=(0,))
    odd = _write(tmp_path, "lapa", 0, _sim_metrics(dict.fromkeys(TASKS, 5), **override))
    with pytest.raises(ValueError, match=rf"arm 'lapa' \(finetuning seed 0\).*{field}="):
        write_results([*inputs, odd], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_arms_on_other_tasks_or_seeds_are_refused(tmp_path):
    inputs = _experiment(tmp_path, {"scratch": 0.3}, seeds=(0, 1))
    fewer_tasks = _write(tmp_path / "a", "lapa", 0, _sim_metrics(dict.fromkeys(TASKS[:9], 5)))
    with pytest.raises(ValueError, match=r"arm 'lapa'.*tasks="):
        write_results([*inputs, fewer_tasks], tmp_path / "out")
    lapa = [_write(tmp_path / "b", "lapa", s, _sim_metrics(dict.fromkeys(TASKS, 5))) for s in (0, 2)]
    with pytest.raises(ValueError, match=r"arm 'lapa' has sim evaluations for finetuning seeds \['0', '2'\]"):
        write_results([*inputs, *lapa], tmp_path / "out")
    with pytest.raises(ValueError, match="already has a sim evaluation"):
        write_results([*inputs, f"scratch@1={lapa[0]}"], tmp_path / "out")
    offline = [_write(tmp_path / r, "lapa", 0, {}, kind="offline") for r in ("c", "d")]
    with pytest.raises(ValueError, match="already has an offline evaluation"):
        collect(offline)


def test_input_labels():
    assert parse_input("runs/eval/lapa/sim") == ("lapa", "0", "sim", Path("runs/eval/lapa/sim"))
    assert parse_input("runs/eval/lapa/seed3/offline")[:3] == ("lapa", "3", "offline")
    assert parse_input("scratch@7=x/y/sim")[:3] == ("scratch", "7", "sim")
    assert parse_input("lapa=x/seed1/sim")[:3] == ("lapa", "1", "sim")
    with pytest.raises(ValueError, match="'sim' or 'offline'"):
        parse_input("runs/eval/lapa/other")


def test_results_rejects_unknown_directory(tmp_path):
    (tmp_path / "eval" / "lapa" / "other").mkdir(parents=True)
    with pytest.raises(ValueError, match="'sim' or 'offline'"):
        write_results([tmp_path / "eval" / "lapa" / "other"], tmp_path / "out")
    (tmp_path / "eval" / "lapa" / "sim").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_results([tmp_path / "eval" / "lapa" / "sim"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _without(metrics: dict, *path: str) -> dict:
    out = json.loads(json.dumps(metrics))
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _with(metrics: dict, value, *path: str) -> dict:
    out = json.loads(json.dumps(metrics))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


GOOD = _sim_metrics({"reach": 1, "push": 0}, episodes=2)


@pytest.mark.parametrize(
    "metrics, problem",
    [
        ({"overall": {"success_rate": 0.5}}, r"per_task must map each task"),
        (_without(GOOD, "overall"), r"overall must be an object with successes and episodes, got None"),
        (_without(GOOD, "per_task", "reach", "successes"), r"per_task\['reach'\]\.successes is missing"),
        (
            _with(GOOD, "two", "per_task", "reach", "successes"),
            r"per_task\['reach'\]\.successes must be a count \(an integer >= 0\), got 'two'",
        ),
        (_with(GOOD, None, "per_task", "push", "episodes"), r"per_task\['push'\]\.episodes is missing"),
        (
            _with(GOOD, -1, "per_task", "push", "successes"),
            r"per_task\['push'\]\.successes must be a count \(an integer >= 0\), got -1",
        ),
        (
            _with(GOOD, 5, "per_task", "reach", "successes"),
            r"per_task\['reach'\] has 5 successes in 2 episodes",
        ),
        (_with(GOOD, {}, "per_task"), r"per_task must map each task"),
    ],
)
def test_an_incomplete_closed_loop_report_is_refused_naming_file_and_field(tmp_path, metrics, problem):
    good = _write(tmp_path, "scratch", 0, GOOD)
    bad = _write(tmp_path, "lapa", 0, metrics)
    for inputs in ([bad], [good, bad]):
        with pytest.raises(
            ValueError, match=rf"{bad}/metrics\.json: not a closed-loop evaluation report: {problem}"
        ):
            write_results(inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "metrics, problem",
    [
        ({"bin_accuracy": 0.5}, r"mse must be a finite number >= 0, got None"),
        ({"mse": "low", "bin_accuracy": 0.5}, r"mse must be a finite number >= 0, got 'low'"),
        ({"mse": 0.1, "bin_accuracy": 1.5}, r"bin_accuracy must be a finite number in \[0, 1\], got 1\.5"),
    ],
)
def test_an_incomplete_offline_report_is_refused_naming_file_and_field(tmp_path, metrics, problem):
    bad = _write(tmp_path, "lapa", 0, metrics, kind="offline")
    with pytest.raises(
        ValueError, match=rf"{bad}/metrics\.json: not an offline evaluation report: {problem}"
    ):
        write_results([bad], tmp_path / "out")


# ------------------------------------------------------------------------------ paired comparison
def _cmh_by_hand(cells_a, cells_r) -> float:
    """The continuity-corrected Mantel-Haenszel chi-square p-value, from its textbook formula."""
    dev, var = 0.0, 0.0
    for (a, n1), (r, n2) in zip(cells_a, cells_r):
        t, m1 = n1 + n2, a + r
        dev += a - n1 * m1 / t
        var += n1 * n2 * m1 * (t - m1) / (t * t * (t - 1))
    return float(chi2.sf((abs(dev) - 0.5) ** 2 / var, 1))


def test_paired_difference_right_values():
    rng = np.random.default_rng(0)
    keys = [(t, s) for t in TASKS for s in "012"]
    ref = {c: (int(rng.binomial(20, 0.3)), 20) for c in keys}
    better = {c: (int(rng.binomial(20, 0.5)), 20) for c in keys}
    r = paired_difference(better, ref)
    assert r["difference"] == pytest.approx(np.mean([better[c][0] / 20 - ref[c][0] / 20 for c in keys]))
    assert r["p_value"] == pytest.approx(_cmh_by_hand([better[c] for c in keys], [ref[c] for c in keys]))
    assert r["p_value"] < 1e-4 and r["ci_low"] > 0.1
    # the bootstrap interval's half-width is the binomial standard error of the mean difference
    se = math.sqrt(sum(k / 20 * (1 - k / 20) / 20 for c in keys for k in (better[c][0], ref[c][0]))) / 30
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(1.96 * se, rel=0.1)

    same = paired_difference(ref, ref)
    assert same["difference"] == 0.0 and same["ci_low"] < 0 < same["ci_high"] and same["p_value"] > 0.5
    nothing = {c: (0, 20) for c in keys}
    assert paired_difference(nothing, nothing)["p_value"] is None  # no informative cell
    with pytest.raises(ValueError, match="cannot be paired"):
        paired_difference(dict(list(better.items())[:-1]), ref)


def test_results_pool_seeds_compare_against_scratch_and_show_chance(tmp_path):
    inputs = _experiment(tmp_path, {"scratch": 0.3, "lapa": 0.5, "action_pretrained": 0.3})
    laq = tmp_path / "laq.metrics.json"
    val = {
        "val/psnr": 30.0,
        "val/psnr_copy": 28.0,
        "val/code_action_ami": 0.12,
        "val/code_action_ami_ci_low": 0.08,
        "val/code_action_ami_ci_high": 0.16,
        "val/code_action_ami_p": 0.005,
        "val/probe_acc_codes": 0.61,
        "val/probe_acc_frame": 0.44,
        "val/probe_chance": 0.31,
        "val/probe_acc_codes_and_frame": 0.66,
        "val/probe_gain_over_frame": 0.22,
        "val/probe_gain_over_frame_ci_low": 0.15,
        "val/probe_gain_over_frame_ci_high": 0.29,
    }
    laq.write_text(json.dumps({"val": val}))
    report = tmp_path / "label_report.json"
    code_action = {"ami": 0.1, "ami_ci_low": 0.07, "ami_ci_high": 0.13, "ami_p": 0.005, "probe_chance": 0.3}
    code_action.update(
        probe_gain_over_frame=0.05, probe_gain_over_frame_ci_low=0.02, probe_gain_over_frame_ci_high=0.08
    )
    report.write_text(json.dumps({"train": {"utilisation_mean": 1.0, "code_action": code_action}}))
    found = tmp_path / "foundation" / "lapa"
    found.mkdir(parents=True)
    head = {"vocab_size": 8, "num_tokens": 4, "metrics": {"val/top1_acc": 0.42, "val/top1_majority": 0.2}}
    (found / "head.json").write_text(json.dumps(head))

    summary = write_results(
        inputs, tmp_path / "out", laq_metrics=laq, label_report=report, foundations=[str(found)]
    )
    out = tmp_path / "out"
    pooled = {(r["arm"], r["task"]): r for r in csv.DictReader((out / "results.csv").open())}
    by_seed = list(csv.DictReader((out / "results_by_seed.csv").open()))
    lapa_overall = [r for r in by_seed if r["arm"] == "lapa" and r["task"] == "overall"]
    assert len(lapa_overall) == 3
    assert int(pooled[("lapa", "overall")]["successes"]) == sum(int(r["successes"]) for r in lapa_overall)
    assert int(pooled[("lapa", "overall")]["episodes"]) == 3 * 10 * 20

    comp = {c["arm"]: c for c in summary["comparison"]}
    assert set(comp) == {"lapa", "action_pretrained"} and comp["lapa"]["cells"] == 30
    assert comp["lapa"]["p_value"] < 0.001 and comp["lapa"]["ci_low"] > 0
    assert comp["action_pretrained"]["ci_low"] < 0 < comp["action_pretrained"]["ci_high"]

    laq_rows = {(r["source"], r["metric"]): r for r in summary["laq"]}
    ami = laq_rows[("laq.val", "code-action AMI")]
    assert (ami["value"], ami["ci_low"], ami["p_value"], ami["chance"]) == (0.12, 0.08, 0.005, 0.0)
    assert laq_rows[("laq.val", "probe accuracy from frame t")]["chance"] == 0.31
    assert laq_rows[("laq.val", "reconstruction PSNR (dB)")]["chance"] == 28.0
    assert laq_rows[("labels.train", "code-action AMI")]["ci_high"] == 0.13
    (f,) = summary["foundation"]
    assert (f["arm"], f["top1"], f["chance_uniform"], f["chance_majority"]) == ("lapa", 0.42, 0.125, 0.2)

    md = (out / "results.md").read_text()
    assert "Paired difference against scratch" in md and "Cochran-Mantel-Haenszel" in md
    assert "| seed 0 | seed 1 | seed 2 |" in md and "chance (1/vocab)" in md
    assert "| laq.val | code-action AMI | 0.12 | [0.08, 0.16] | 0.0050 | 0 | independent codes |" in md
    assert "| laq.val | probe accuracy from codes and frame t | 0.66 |  |  | 0.31 | majority bin |" in md
    assert (
        "| laq.val | probe gain, codes and frame t - frame t | 0.22 | [0.15, 0.29] |  | 0 | "
        "codes add nothing to frame t |"
    ) in md
    assert laq_rows[("labels.train", "probe gain, codes and frame t - frame t")]["ci_low"] == 0.02


def test_help_documents_arm_and_seed_labels():
    from lapa.commands import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = sub.choices["results"].format_help()
    assert "[ARM[@SEED]=]DIR" in text and "lapa@1=" in text and "seed<N>" in text
    assert "Cochran-Mantel-Haenszel" in text and "step cap" in text


def test_offline_bin_accuracy_sits_beside_its_chance_level(tmp_path):
    from lapa.data.action_codec import ActionStats
    from lapa.evaluation.metrics import ActionMetrics

    rng = np.random.default_rng(0)
    actions = np.column_stack([rng.uniform(-1, 1, 400), np.where(np.arange(400) < 300, -1.0, 1.0)])
    stats = ActionStats.from_actions(actions, num_bins=16)
    m = ActionMetrics(stats)
    for chunk in np.array_split(actions, 3):  # accumulated over batches
        m.update(np.zeros((len(chunk), 2), dtype=np.int64), chunk)
    result = m.compute()
    commonest = np.bincount(stats.quantize(actions)[:, 0], minlength=16).max() / 400
    assert result["bin_accuracy_chance_per_dim"] == pytest.approx([commonest, 0.75])
    assert result["bin_accuracy_per_dim"][1] == pytest.approx(0.75)  # always "open" scores chance

    inputs = []
    for arm in ("scratch", "lapa"):
        d = tmp_path / "eval" / arm / "offline"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(result))
        inputs.append(str(d))
    write_results(inputs, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "offline.csv").open()))
    assert float(rows[0]["bin_accuracy_chance"]) == pytest.approx(result["bin_accuracy_chance"])
    assert "chance (commonest bin)" in (tmp_path / "out" / "results.md").read_text()
    odd = tmp_path / "eval" / "action_pretrained" / "offline"
    odd.mkdir(parents=True)
    (odd / "metrics.json").write_text(json.dumps({**result, "num_samples": 12}))
    with pytest.raises(ValueError, match=r"arm 'action_pretrained'.*num_samples=12"):
        write_results([*inputs, str(odd)], tmp_path / "out2")


# ------------------------------------------------------------------------- head and decoding
HEAD = {"decoding": "expectation", "num_bins": 256, "label_sigma": 2.0, "l1_weight": 0.5}


@pytest.mark.parametrize(
    "key, other",
    [("decoding", "argmax"), ("num_bins", 128), ("label_sigma", 0.0), ("l1_weight", 0.0)],
)
@pytest.mark.parametrize("kind", ["sim", "offline"])
def test_arms_with_another_head_or_decoding_are_refused(tmp_path, key, other, kind):
    def metrics(head):
        if kind == "sim":
            return _sim_metrics(dict.fromkeys(TASKS, 5), head=head)
        return {
            "num_samples": 40,
            "mse": 0.1,
            "bin_accuracy": 0.5,
            "decoding": head["decoding"],
            "head": head,
        }

    inputs = [_write(tmp_path, a, s, metrics(HEAD), kind) for a in ("scratch", "lapa") for s in (0, 1)]
    odd = _write(tmp_path / "odd", "action_pretrained", 1, metrics({**HEAD, key: other}), kind)
    others = [_write(tmp_path / "odd", "action_pretrained", 0, metrics(HEAD), kind), odd]
    want = (
        rf"arm 'action_pretrained' \(finetuning seed 1, {kind}\) evaluated a policy with {key}={other!r}, "
        rf"but arm 'scratch' \(finetuning seed 0, {kind}, .*\) a policy with {key}={HEAD[key]!r}; "
        "every arm must use the same head and decoding"
    )
    with pytest.raises(ValueError, match=want):
        write_results([*inputs, *others], tmp_path / "out")
    assert not (tmp_path / "out").exists()

    same = _write(tmp_path / "same", "action_pretrained", 1, metrics(HEAD), kind)
    summary = write_results([*inputs, others[0], same], tmp_path / "out")  # identical settings: fine
    assert summary["head"] == HEAD
    md = (tmp_path / "out" / "results.md").read_text()
    assert (
        "Policies, the same for every arm: decoding expectation, bins per action dimension 256, "
        "label smoothing sigma 2 bins, L1 weight 0.5." in md
    )


def test_the_closed_loop_and_offline_evaluations_of_an_arm_must_agree_too(tmp_path):
    sim = [
        _write(tmp_path, a, 0, _sim_metrics(dict.fromkeys(TASKS, 5), head=HEAD)) for a in ("scratch", "lapa")
    ]
    argmax = {**HEAD, "decoding": "argmax"}
    offline = _write(
        tmp_path, "lapa", 0, {"num_samples": 4, "mse": 0.1, "bin_accuracy": 0.5, "head": argmax}, "offline"
    )
    with pytest.raises(ValueError, match=r"arm 'lapa' \(finetuning seed 0, offline\).*decoding='argmax'"):
        write_results([*sim, offline], tmp_path / "out")


def test_evaluations_that_record_no_head_match_only_each_other(tmp_path):
    old = [_write(tmp_path, a, 0, _sim_metrics(dict.fromkeys(TASKS, 5))) for a in ("scratch", "lapa")]
    summary = write_results(old, tmp_path / "out")  # written before heads were recorded: alike
    assert summary["head"] == dict.fromkeys(HEAD)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Policies: decoding and head settings not recorded by these evaluations" in md

    new = _write(tmp_path / "new", "action_pretrained", 0, _sim_metrics(dict.fromkeys(TASKS, 5), head=HEAD))
    with pytest.raises(ValueError) as err:
        write_results([*old, new], tmp_path / "out2")
    text = str(err.value)
    assert (
        "arm 'action_pretrained' (finetuning seed 0, sim) evaluated a policy with decoding='expectation'"
        in text
    )
    assert "arm 'scratch' (finetuning seed 0, sim," in text and "a policy with decoding not recorded" in text
    assert "evaluate it again" in text

    # an offline report from before: its top-level decoding, nothing else
    offline = [
        _write(
            tmp_path / "off",
            a,
            0,
            {"num_samples": 4, "mse": 0.1, "bin_accuracy": 0.5, "decoding": d},
            "offline",
        )
        for a, d in (("scratch", "expectation"), ("lapa", "argmax"))
    ]
    with pytest.raises(
        ValueError, match=r"arm 'lapa'.*decoding='argmax'.*arm 'scratch'.*decoding='expectation'"
    ):
        write_results(offline, tmp_path / "out3")
    summary = write_results([offline[0]], tmp_path / "out3")
    assert summary["head"] == {**dict.fromkeys(HEAD), "decoding": "expectation"}
    md = (tmp_path / "out3" / "results.md").read_text()
    assert "decoding expectation, bins per action dimension not recorded, label smoothing sigma not" in md


@pytest.fixture(scope="module")
def untrained_policy(tmp_path_factory):
    import torch

    from tests.fixtures.policy import make_tiny_inputs, make_untrained_policy, tiny_config

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("head")
    cfg = tiny_config()
    inputs = make_tiny_inputs(root, cfg)
    return cfg, inputs, make_untrained_policy(cfg, inputs, root / "policy")


def _policy_copy(src: Path, dst: Path, **config) -> Path:
    """A copy of policy directory ``src`` whose config.json is updated with ``config``."""
    import shutil

    shutil.copytree(src, dst)
    blob = json.loads((dst / "config.json").read_text())
    blob.update(config)
    (dst / "config.json").write_text(json.dumps(blob))
    return dst


def test_offline_reports_record_the_policys_head_and_results_refuse_another_decoding(
    untrained_policy, tmp_path
):
    from lapa.evaluation.head import head_settings
    from lapa.evaluation.offline import evaluate_offline
    from lapa.policy import LAPAPolicy

    cfg, inputs, path = untrained_policy
    target = {"target": {"label_sigma": 2.0, "l1_weight": 0.5}}
    policies = {
        arm: LAPAPolicy.from_pretrained(
            _policy_copy(path, tmp_path / arm, decoding=decoding, training=target)
        )
        for arm, decoding in (
            ("scratch", "expectation"),
            ("lapa", "expectation"),
            ("action_pretrained", "argmax"),
        )
    }
    evals = {}
    for arm, policy in policies.items():
        evals[arm] = tmp_path / "eval" / arm / "offline"
        metrics = evaluate_offline(policy, inputs["shards"], evals[arm], cfg.data.loader, plot_episodes=1)
        assert metrics["head"] == head_settings(policy)
        assert json.loads((evals[arm] / "metrics.json").read_text())["head"] == metrics["head"]
    assert policies["lapa"].stats.num_bins == 256
    assert json.loads((evals["lapa"] / "metrics.json").read_text())["head"] == HEAD
    assert head_settings(LAPAPolicy.from_pretrained(path)) == {  # records neither decoding nor targets
        "decoding": "argmax",
        "num_bins": 256,
        "label_sigma": None,
        "l1_weight": None,
    }

    summary = write_results([str(evals["scratch"]), str(evals["lapa"])], tmp_path / "out")
    assert summary["head"] == HEAD
    with pytest.raises(
        ValueError, match=r"arm 'action_pretrained'.*decoding='argmax'.*decoding='expectation'"
    ):
        write_results([str(e) for e in evals.values()], tmp_path / "out2")
    # the same policy evaluated with another decoding is another comparison too
    forced = evaluate_offline(
        policies["lapa"],
        inputs["shards"],
        tmp_path / "forced" / "lapa" / "offline",
        cfg.data.loader,
        plot_episodes=1,
        decoding="argmax",
    )
    assert forced["head"] == {**HEAD, "decoding": "argmax"}


@pytest.mark.sim
def test_closed_loop_reports_record_the_policys_head(untrained_policy, tmp_path):
    pytest.importorskip("metaworld")
    from lapa.config import load_config
    from lapa.evaluation.closed_loop import evaluate_policy
    from lapa.policy import LAPAPolicy
    from lapa.sim.policies import ExpertPolicy

    _, _, path = untrained_policy
    sim = load_config("default", ["sim.image_size=32", "sim.max_steps=3", "sim.save_videos=0"]).sim
    policy = LAPAPolicy.from_pretrained(_policy_copy(path, tmp_path / "p", decoding="expectation"))
    run = {"tasks": ["reach-v3"], "episodes_per_task": 1, "seed": sim.eval_seed, "progress": False}
    metrics = evaluate_policy(policy, sim, out_dir=tmp_path / "eval" / "lapa" / "sim", **run)
    assert metrics["head"] == {
        "decoding": "expectation",
        "num_bins": 256,
        "label_sigma": None,
        "l1_weight": None,
    }
    expert = evaluate_policy(ExpertPolicy(), sim, out_dir=tmp_path / "eval" / "scratch" / "sim", **run)
    assert expert["head"] is None  # a scripted policy has no binned head
    with pytest.raises(ValueError, match=r"arm 'lapa'.*decoding='expectation'.*decoding not recorded"):
        write_results([str(tmp_path / "eval" / a / "sim") for a in ("scratch", "lapa")], tmp_path / "out")
