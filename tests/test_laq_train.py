"""train-laq end to end on sprite shards: kill and resume, resume only of the same run, loading, labelling."""

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch

from lapa.config import load_config
from lapa.data.shards import write_pair_shards
from lapa.laq.checkpoint import load_laq
from lapa.laq.model import architecture_from_config
from lapa.laq.train import train_laq
from lapa.utils.run import CURRENT_FILE, RunMismatch
from tests.fixtures.laq import sprite_episodes

OVERRIDES = [
    "laq.image_size=32",
    "laq.encoder.base_channels=8",
    "laq.encoder.channel_multipliers=[1,2]",
    "laq.encoder.latent_dim=16",
    "laq.quantizer.embedding_dim=16",
    "laq.quantizer.lookup_dim=8",
    "laq.quantizer.dead_code_window=5",
    "laq.decoder.base_channels=8",
    "laq.decoder.channel_multipliers=[1,2]",
    "laq.training.batch_size=16",
    "laq.training.max_steps=40",
    "laq.training.warmup_steps=5",
    "laq.training.val_every_steps=8",
    "laq.training.val_samples=48",
    "laq.training.checkpoint_every_steps=8",
    "laq.training.num_workers=0",
    "laq.training.accelerator=cpu",
    "laq.label_workers=1",
    "laq.label_batch_size=32",
    "data.sharding.samples_per_shard=40",
]


SHARDING = [
    "data.sharding.resize=32",
    "data.sharding.crop=32",
    "data.sharding.fps=null",
    "data.sharding.frame_offset=1",
    "data.sharding.val_fraction=0.3",
    "data.sharding.samples_per_shard=50",
]


def _write_shards(out, seed: int = 0):
    cfg = load_config("default", SHARDING)
    write_pair_shards(sprite_episodes(30, length=9, seed=seed), out, cfg.data.sharding)
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _write_shards(tmp_path_factory.mktemp("laq_shards") / "shards")


def run_folder(workdir):
    """The folder of the run a work directory last opened."""
    return workdir / json.loads((workdir / CURRENT_FILE).read_text())["run"]


def _cmd(shards, out, *extra):
    return [
        sys.executable,
        "-m",
        "lapa",
        "train-laq",
        "--shards",
        str(shards),
        "--out",
        str(out),
        *OVERRIDES,
        *extra,
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    """An uninterrupted run: the reference for the resume test and the checkpoint for labelling."""
    out = tmp_path_factory.mktemp("laq_full") / "laq.ckpt"
    subprocess.run(_cmd(shards, out), check=True, env=_env(), capture_output=True, timeout=300)
    return out


def _state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


@pytest.mark.slow
def test_outputs_beside_the_checkpoint(trained):
    metrics = json.loads(trained.with_suffix(".metrics.json").read_text())
    assert metrics["global_step"] == 40 and metrics["num_tokens"] == 4
    for key in ("val/psnr", "val/psnr_copy", "val/ssim", "val/utilisation", "val/code_action_ami"):
        assert key in metrics["val"], key
    assert trained.with_suffix(".recon.png").stat().st_size > 0
    assert (run_folder(trained.parent / "work") / "logs" / "laq" / "version_0" / "metrics.csv").is_file()
    model = load_laq(trained)
    assert not model.training and model.num_tokens == 4


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(shards, trained, tmp_path):
    out = tmp_path / "laq.ckpt"
    proc = subprocess.Popen(
        _cmd(shards, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while (
            not list((tmp_path / "work").glob("*/checkpoints/step-*.ckpt"))
            and proc.poll() is None
            and time.time() < deadline
        ):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    saved = sorted((tmp_path / "work").glob("*/checkpoints/step-*.ckpt"))
    assert saved and not out.exists(), "the run was not interrupted after its first checkpoint"
    killed_at, _ = _state(saved[-1])
    assert 0 < killed_at < 40
    rerun = subprocess.run(_cmd(shards, out), check=True, env=_env(), capture_output=True, timeout=300)
    assert b"resuming from" in rerun.stderr and b"weights_only" not in rerun.stderr
    step, weights = _state(out)
    ref_step, ref_weights = _state(trained)
    assert step == ref_step == 40
    assert weights.keys() == ref_weights.keys()
    for name in weights:
        assert torch.equal(weights[name], ref_weights[name]), name


def test_other_shards_do_not_resume_the_previous_run(shards, tmp_path, caplog):
    """Shards A then B into the same --out: B trains from scratch; a lower max_steps is refused."""
    short = [
        "laq.training.max_steps=4",
        "laq.training.checkpoint_every_steps=2",
        "laq.training.val_every_steps=4",
    ]
    other = _write_shards(tmp_path / "other", seed=1)
    out = tmp_path / "laq.ckpt"
    first = train_laq(load_config("default", OVERRIDES + short), shards, out)
    _, weights_a = _state(out)
    second = train_laq(load_config("default", OVERRIDES + short), other, out)
    _, weights_b = _state(out)
    assert first["global_step"] == second["global_step"] == 4
    assert first["run_identity"] != second["run_identity"]
    assert "input shards" in caplog.text and "Starting fresh" in caplog.text
    assert any(not torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert json.loads(out.with_suffix(".metrics.json").read_text())["shards"] == str(other)
    runs = sorted(p.parent.name for p in (tmp_path / "work").glob("*/identity.json"))
    assert len(runs) == 2
    # the same shards again: resumes its finished run (no training), same weights
    again = train_laq(load_config("default", OVERRIDES + short), other, out)
    assert again["global_step"] == 4 and again["run_identity"] == second["run_identity"]
    # fewer steps than the run has made: refused, naming the key, never reported as step 4
    fewer = load_config("default", OVERRIDES + [*short, "laq.training.max_steps=2"])
    with pytest.raises(RunMismatch, match=r"step 4, past laq\.training\.max_steps=2"):
        train_laq(fewer, other, out)
    assert json.loads(out.with_suffix(".metrics.json").read_text())["run_identity"] == second["run_identity"]


def test_stopped_run_resumes_between_checkpoints_to_the_same_weights(shards, tmp_path):
    """stop_after_steps leaves a checkpoint between the periodic ones; the rerun finishes exactly."""
    short = [
        "laq.training.max_steps=5",
        "laq.training.checkpoint_every_steps=2",
        "laq.training.val_every_steps=5",
    ]
    reference = train_laq(load_config("default", OVERRIDES + short), shards, tmp_path / "a" / "laq.ckpt")
    stopped = load_config("default", OVERRIDES + [*short, "laq.training.stop_after_steps=3"])
    first = train_laq(stopped, shards, tmp_path / "b" / "laq.ckpt")
    assert first == {"complete": False, "global_step": 3} and not (tmp_path / "b" / "laq.ckpt").exists()
    run = run_folder(tmp_path / "b" / "work")
    assert (run / "checkpoints" / "step-00000003.ckpt").is_file()
    second = train_laq(load_config("default", OVERRIDES + short), shards, tmp_path / "b" / "laq.ckpt")
    assert second["complete"] and second["global_step"] == reference["global_step"] == 5
    assert second["run_identity"] == reference["run_identity"]  # the same inputs and settings
    _, ref_weights = _state(tmp_path / "a" / "laq.ckpt")
    _, weights = _state(tmp_path / "b" / "laq.ckpt")
    for name in ref_weights:
        assert torch.equal(weights[name], ref_weights[name]), name


def _tar_members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.mark.slow
def test_label_is_deterministic_and_has_the_contract_layout(shards, trained, tmp_path):
    from lapa.commands import main

    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "label",
                    "--checkpoint",
                    str(trained),
                    "--shards",
                    str(shards),
                    "--out",
                    str(out),
                    *OVERRIDES,
                ]
            )
        assert exc.value.code == 0
    tars = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.tar"))
    assert tars and tars == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*.tar"))
    for rel in tars:
        assert (
            hashlib.sha256((outs[0] / rel).read_bytes()).digest()
            == hashlib.sha256((outs[1] / rel).read_bytes()).digest()
        )
    info = json.loads((outs[0] / "info.json").read_text())
    assert info["num_tokens"] == 4 and info["vocab_size"] == 8
    source = {}
    for split in ("train", "val"):
        for p in (shards / split).glob("*.tar"):
            source.update(_tar_members(p))
    total = 0
    for rel in tars:
        members = _tar_members(outs[0] / rel)
        keys = {n.split(".", 1)[0] for n in members}
        for key in keys:
            assert {f"{key}.{e}" for e in ("image.jpg", "txt", "latent.npy", "json")} == {
                n for n in members if n.startswith(key + ".")
            }
            assert members[f"{key}.image.jpg"] == source[f"{key}.t.jpg"]  # original bytes, not re-encoded
            latent = np.load(io.BytesIO(members[f"{key}.latent.npy"]))
            assert (
                latent.dtype == np.int64 and latent.shape == (4,) and latent.min() >= 0 and latent.max() < 8
            )
            meta = json.loads(members[f"{key}.json"])
            assert meta["action"] is not None and len(meta["action"]) == 2
            assert members[f"{key}.txt"] == b"move the sprite"
        total += len(keys)
    assert total == sum(info["counts"].values()) == 30 * 8
    report = json.loads((outs[0] / "label_report.json").read_text())
    assert len(report["train"]["histograms"]) == 4 and "ami" in report["train"]["code_action"]
    assert "probe_acc_codes" in report["train"]["code_action"]


def test_load_laq_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        load_laq(garbage)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_laq(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 1.0}}, other)
    with pytest.raises(ValueError, match="other.ckpt.*not a LAQ checkpoint"):
        load_laq(other)


def test_a_checkpoint_with_other_objects_is_refused_without_advice_to_unpickle_it(tmp_path):
    from fractions import Fraction

    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": Fraction(1, 2)}}, odd)
    with pytest.raises(ValueError) as err:
        load_laq(odd)
    text = str(err.value)
    assert text.startswith(f"{odd}: not a readable checkpoint: not a file of tensors and plain values")
    assert "fractions.Fraction" in text and "weights_only" not in text and "\n" not in text
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(b"\x80\x02" + bytes(range(160, 256)) * 8)  # a pickle header, then noise
    with pytest.raises(ValueError) as err:
        load_laq(noise)
    assert str(err.value).startswith(f"{noise}: not a readable checkpoint")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_load_laq_rejects_mismatched_weights(tmp_path):
    from lapa.laq.model import LAQModel

    cfg = load_config("default", OVERRIDES)
    arch = architecture_from_config(cfg.laq)
    model = LAQModel(arch)
    wrong = {**arch, "quantizer": {**arch["quantizer"], "vocab_size": 16}}
    path = tmp_path / "wrong_arch.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"arch": wrong}}, path)
    with pytest.raises(ValueError, match="wrong_arch.ckpt.*do not match"):
        load_laq(path)


def test_action_targets_bin_the_true_actions(shards, tmp_path):
    """The action-pretrained arm's labels: one token per action dimension, binned by the stats."""
    from lapa.commands import main
    from lapa.data.action_codec import ActionStats

    source = {}
    for split in ("train", "val"):
        for p in (shards / split).glob("*.tar"):
            source.update(_tar_members(p))
    true = np.array([json.loads(v)["action"] for k, v in source.items() if k.endswith(".json")])
    stats = ActionStats.from_actions(true, num_bins=16)
    stats.save(tmp_path / "stats.json")
    out = tmp_path / "actions"
    with pytest.raises(SystemExit) as exc:
        main(
            ["label", "--targets", "actions", "--action-stats", str(tmp_path / "stats.json")]
            + ["--shards", str(shards), "--out", str(out), *OVERRIDES]
        )
    assert exc.value.code == 0
    info = json.loads((out / "info.json").read_text())
    assert (info["num_tokens"], info["vocab_size"], info["target"]) == (2, 16, "actions")
    for tar in out.rglob("*.tar"):
        members = _tar_members(tar)
        for name, blob in members.items():
            if name.endswith(".latent.npy"):
                key = name.split(".", 1)[0]
                action = json.loads(members[f"{key}.json"])["action"]
                np.testing.assert_array_equal(np.load(io.BytesIO(blob)), stats.quantize(np.array(action)))
                assert members[f"{key}.image.jpg"] == source[f"{key}.t.jpg"]


def test_action_targets_need_actions(tmp_path):
    from lapa.data.action_codec import ActionStats
    from lapa.laq.label import ActionTarget, label_shards

    sharding = ["data.sharding.resize=32", "data.sharding.crop=32", "data.sharding.fps=null"]
    cfg = load_config("default", sharding)
    episodes = sprite_episodes(4, length=5)
    for ep in episodes:
        ep.actions = None
    write_pair_shards(episodes, tmp_path / "shards", cfg.data.sharding)
    target = ActionTarget(ActionStats.from_actions(np.random.default_rng(0).normal(size=(50, 2))))
    with pytest.raises(ValueError, match=r"\.tar: sample .* has no action"):
        label_shards(tmp_path / "shards", tmp_path / "out", target, num_workers=0)
    assert not (tmp_path / "out").exists()


def test_action_targets_use_the_intended_action_when_pairs_record_one(tmp_path):
    """Pairs carrying ``intended_action`` (rollouts with exploration noise) are labelled with it under
    the default source, with the executed one on request; the report names the source used."""
    from lapa.data.action_codec import ActionStats
    from lapa.data.shard_reader import iter_samples
    from lapa.laq.label import ActionTarget, label_shards

    cfg = load_config("default", SHARDING)
    episodes = sprite_episodes(6, length=6, seed=3)
    rng = np.random.default_rng(1)
    for ep in episodes:
        ep.intended_actions = (ep.actions + rng.normal(0.0, 2.0, ep.actions.shape)).astype(np.float32)
    write_pair_shards(episodes, tmp_path / "pairs", cfg.data.sharding)
    by_key = {}
    for ep in episodes:
        stem = ep.episode_id
        for t in range(ep.num_frames):
            by_key[(stem, t)] = (ep.intended_actions[t], ep.actions[t])
    stats = ActionStats.from_actions(
        np.concatenate([np.concatenate([e.actions, e.intended_actions]) for e in episodes]), num_bins=16
    )

    def labels(source):
        out = tmp_path / source
        report = label_shards(tmp_path / "pairs", out, ActionTarget(stats, source), num_workers=0)
        rows = []
        for tar in sorted(out.rglob("*.tar")):
            for s in iter_samples(tar):
                meta = json.loads(s["json"])
                rows.append(
                    (np.load(io.BytesIO(s["latent.npy"])), by_key[(meta["video_id"], meta["frame_index"])])
                )
        return report, rows

    report, rows = labels("auto")
    assert report["action_source"] == "intended" and report["action_source_counts"]["executed"] == 0
    for code, (intended, _) in rows:
        np.testing.assert_array_equal(code, stats.quantize(intended))
    report, rows = labels("executed")
    assert report["action_source"] == "executed" and report["action_source_counts"]["intended"] == 0
    for code, (_, executed) in rows:
        np.testing.assert_array_equal(code, stats.quantize(executed))
    assert (
        sum((stats.quantize(i) != stats.quantize(e)).any() for _, (i, e) in rows) > len(rows) // 2
    )  # the two sources give other labels

    write_pair_shards(sprite_episodes(4, length=5), tmp_path / "plain", cfg.data.sharding)
    report = label_shards(tmp_path / "plain", tmp_path / "plain_auto", ActionTarget(stats), num_workers=0)
    assert report["action_source"] == "executed"  # no intended actions: the executed ones, said so
    with pytest.raises(ValueError, match=r"\.tar: sample .* has no intended action"):
        label_shards(
            tmp_path / "plain", tmp_path / "plain_int", ActionTarget(stats, "intended"), num_workers=0
        )
    with pytest.raises(ValueError, match="action source must be one of"):
        ActionTarget(stats, "expert")


def test_validation_covers_the_whole_val_split(shards, tmp_path):
    """Null val_samples: every val pair is validated (the code statistics count them all), in every
    validation of the run; the metrics file says what was validated."""
    short = [
        "laq.training.max_steps=2",
        "laq.training.checkpoint_every_steps=2",
        "laq.training.val_every_steps=2",
        "laq.training.val_samples=null",
        "laq.training.batch_size=5",
    ]
    count = json.loads((shards / "info.json").read_text())["counts"]["val"]
    metrics = train_laq(load_config("default", OVERRIDES + short), shards, tmp_path / "laq.ckpt")
    assert count > 5 and count % 5 and metrics["val"]["val/samples"] == count  # batches and a partial one
    assert metrics["val_set"]["samples"] == metrics["val_set"]["split_samples"] == count
    assert metrics["val_set"]["tasks"] == {"sprite": [count, count]}
    assert 0 < metrics["val"]["val/utilisation"] <= 1 and "val/probe_chance" in metrics["val"]
