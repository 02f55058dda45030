"""The typed experiment config: composition, overrides, and errors that name the key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lapa.config import ConfigError, load_config, section_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def test_every_experiment_composes():
    names = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
    assert "default" in names
    for name in names:
        cfg = load_config(name, configs_root=ROOT / "configs")
        assert cfg.name


def test_defaults_are_merged_in_order(tmp_path):
    root = tmp_path / "configs"
    (root / "experiment").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "model" / "a.yaml").write_text("laq:\n  quantizer: {vocab_size: 16, num_tokens: 2}\n")
    (root / "model" / "b.yaml").write_text("laq:\n  quantizer: {vocab_size: 32}\n")
    (root / "experiment" / "x.yaml").write_text("defaults: [model/a, model/b]\nname: x\nseed: 7\n")
    cfg = load_config("x", configs_root=root)
    assert (cfg.laq.quantizer.vocab_size, cfg.laq.quantizer.num_tokens, cfg.seed) == (32, 2, 7)
    cfg = load_config("x", ["laq.quantizer.vocab_size=4"], configs_root=root)
    assert cfg.laq.quantizer.vocab_size == 4


def test_misspelt_key_names_key_and_file(tmp_path):
    root = tmp_path / "configs"
    (root / "experiment").mkdir(parents=True)
    bad = root / "experiment" / "bad.yaml"
    bad.write_text("laq:\n  quantizer: {vocab_sise: 16}\n")
    with pytest.raises(ConfigError) as err:
        load_config("bad", configs_root=root)
    assert "vocab_sise" in str(err.value) and str(bad) in str(err.value)


def test_wrong_type_override_is_rejected():
    with pytest.raises(ConfigError, match="laq.quantizer.vocab_size"):
        load_config("default", ["laq.quantizer.vocab_size=many"], configs_root=ROOT / "configs")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("default", ["laq.quantizer.vocab_size"], configs_root=ROOT / "configs")


def test_unknown_experiment_lists_available():
    with pytest.raises(ConfigError, match="available: .*default"):
        load_config("no_such_experiment", configs_root=ROOT / "configs")


def test_missing_default_fragment_is_named(tmp_path):
    root = tmp_path / "configs"
    (root / "experiment").mkdir(parents=True)
    (root / "experiment" / "x.yaml").write_text("defaults: [model/nope]\n")
    with pytest.raises(ConfigError, match="model/nope"):
        load_config("x", configs_root=root)


def test_fingerprint_changes_only_with_its_sections():
    base = load_config("default", configs_root=ROOT / "configs")
    other = load_config("default", ["laq.quantizer.vocab_size=16"], configs_root=ROOT / "configs")
    assert section_fingerprint(base, "laq") != section_fingerprint(other, "laq")
    assert section_fingerprint(base, "data") == section_fingerprint(other, "data")


def test_cli_reports_config_errors_cleanly():
    for override, want in (
        ("laq.quantizer.vocab_sise=3", "vocab_sise"),
        ("laq.training.max_steps=-5", "laq.training.max_steps must be >= 1, got -5"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "lapa", "config", override],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        assert want in proc.stderr and "Traceback" not in proc.stderr


# -- values outside what their field allows ----------------------------------------------------------
def _load(*overrides: str):
    return load_config("default", list(overrides), configs_root=ROOT / "configs")


@pytest.mark.parametrize(
    "override, message",
    [
        ("laq.training.max_steps=-5", "laq.training.max_steps must be >= 1, got -5"),
        (
            "data.sharding.on_error=ignore",
            "data.sharding.on_error must be one of 'raise', 'skip', got 'ignore'",
        ),
        ("data.loader.on_error=ignore", "data.loader.on_error must be one of 'raise', 'skip', got 'ignore'"),
        ("finetune.training.precision=fp8", "finetune.training.precision must be one of 'auto', '32-true'"),
        ("foundation.training.strategy=fsdp", "'ddp', 'fsdp2', got 'fsdp'"),
        ("finetune.decoding=mode", "finetune.decoding must be one of 'argmax', 'expectation', got 'mode'"),
        ("finetune.training.batch_size=0", "finetune.training.batch_size must be >= 1, got 0"),
        ("data.sharding.val_fraction=1.5", "data.sharding.val_fraction must be in [0, 1], got 1.5"),
        ("data.loader.color_jitter=1.0", "data.loader.color_jitter must be in [0, 1), got 1.0"),
        ("laq.quantizer.ema_decay=1", "laq.quantizer.ema_decay must be in [0, 1), got 1.0"),
        ("evaluation.confidence=1", "evaluation.confidence must be in (0, 1), got 1.0"),
        ("serve.port=0", "serve.port must be in [1, 65535], got 0"),
        ("sim.image_size=63", "sim.image_size must be a positive even integer, got 63"),
        ("finetune.training.betas=[0.9,1.5]", "finetune.training.betas must be two numbers in [0, 1)"),
        ("workflow.arms=[lapa,pretrained]", "workflow.arms must be a non-empty list of 'lapa', 'scratch'"),
        ("workflow.finetune_seeds=[]", "workflow.finetune_seeds must be a non-empty list of integers >= 0"),
        (
            "workflow.finetune_seeds=[0,0]",
            "workflow.finetune_seeds must be a non-empty list of integers >= 0 without repeats, "
            "got [0, 0]: 0 repeated",
        ),
        (
            "workflow.finetune_seeds=[2,1,2,3,1]",
            "workflow.finetune_seeds must be a non-empty list of integers >= 0 without repeats, "
            "got [2, 1, 2, 3, 1]: 2, 1 repeated",
        ),
        (
            "workflow.arms=[lapa,scratch,lapa]",
            "workflow.arms must be a non-empty list of 'lapa', 'scratch', 'action_pretrained' without "
            "repeats, got ['lapa', 'scratch', 'lapa']: 'lapa' repeated",
        ),
        ("seed=-1", "seed must be >= 0, got -1"),
    ],
)
def test_a_value_outside_its_field_names_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        _load(override)
    text = str(err.value)
    assert message in text, text
    assert f"(set in command-line override {override!r})" in text


def test_a_subclass_changing_a_default_keeps_the_parents_check():
    for section in ("laq", "foundation", "finetune"):
        with pytest.raises(ConfigError, match=rf"{section}\.training\.max_steps must be >= 1, got 0"):
            _load(f"{section}.training.max_steps=0")
    assert _load("laq.training.max_steps=1", "finetune.training.precision=bf16-mixed")  # in range: fine


def test_a_bad_value_in_a_file_names_the_file_and_every_bad_value_is_listed(tmp_path):
    root = tmp_path / "configs"
    (root / "experiment").mkdir(parents=True)
    bad = root / "experiment" / "bad.yaml"
    bad.write_text("sim:\n  max_steps: 0\n  camera: topview\n")
    with pytest.raises(ConfigError) as err:
        load_config("bad", configs_root=root)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 values are not allowed:"
    assert lines[1:] == [
        "  sim.camera must be one of 'zoom', 'corner', 'corner2', 'corner3', 'corner4', 'behindGripper', "
        f"'gripperPOV', got 'topview' (set in {bad})",
        f"  sim.max_steps must be >= 1, got 0 (set in {bad})",
    ]
    with pytest.raises(ConfigError, match=r"sim\.max_steps must be >= 1, got 0 \(set in command-line"):
        load_config("bad", ["sim.camera=zoom", "sim.max_steps=0"], configs_root=root)
    assert load_config("bad", ["sim.camera=zoom", "sim.max_steps=5"], configs_root=root).sim.max_steps == 5


def test_related_fields_name_both_keys_and_where_each_was_set():
    with pytest.raises(ConfigError) as err:
        _load("data.sharding.crop=300")
    text = str(err.value)
    assert "data.sharding.crop must be <= data.sharding.resize, got 300 and 64" in text
    assert "crop set in command-line override 'data.sharding.crop=300'" in text
    assert "resize set in " in text and "metaworld_small.yaml" in text
    with pytest.raises(ConfigError, match=r"finetune\.stats\.low_quantile must be < finetune\.stats\.high"):
        _load("finetune.stats.low_quantile=0.5", "finetune.stats.high_quantile=0.5")
    assert _load("data.sharding.crop=64", "data.sharding.resize=64").data.sharding.crop == 64


def test_optional_fields_take_none_and_the_schema_defaults_are_allowed():
    from omegaconf import OmegaConf

    from lapa.config import ExperimentConfig
    from lapa.config.checks import violations

    assert violations(OmegaConf.structured(ExperimentConfig)) == []
    cfg = _load("finetune.training.head_lr=null", "data.sharding.fps=null", "laq.training.val_samples=null")
    assert cfg.finetune.training.head_lr is None and cfg.data.sharding.fps is None
    with pytest.raises(ConfigError, match=r"finetune\.training\.head_lr must be > 0, got 0\.0"):
        _load("finetune.training.head_lr=0")


def test_declared_choices_are_those_the_code_accepts(monkeypatch):
    import typing

    from lightning.fabric import connector

    from lapa.config import cluster, data, finetune, serve, sim, training
    from lapa.finetune.train import INITS
    from lapa.policy.policy import BACKENDS
    from lapa.utils.run import ACCELERATORS
    from lapa.vla.heads import DECODINGS

    assert finetune.DECODINGS == DECODINGS and finetune.INITS == INITS
    assert serve.BACKENDS == BACKENDS and training.ACCELERATORS == ACCELERATORS
    lightning = {*typing.get_args(connector._PRECISION_INPUT_STR)}
    lightning |= set(typing.get_args(connector._PRECISION_INPUT_STR_ALIAS))
    assert set(training.PRECISIONS) == lightning | {"auto"}
    monkeypatch.syspath_prepend(str(ROOT / "workflow" / "lib"))
    from lapa_workflow.experiment import ARMS, SOURCES

    assert cluster.ARMS == ARMS and data.SOURCES == SOURCES
    env = pytest.importorskip("lapa.sim.env")
    assert sim.CAMERAS == env.CAMERAS


@pytest.mark.parametrize(
    "override, message",
    [
        ("laq=3", r"'laq' is a section; set its keys \(e\.g\. laq\.<key>=\.\.\.\), not the value 3"),
        ("laq.training=[1]", r"'laq\.training' is a section; .*not a list"),
        ("sim.tasks={a:1}", r"'sim\.tasks' must be a list \(e\.g\. sim\.tasks=\[a,b\]\), got a mapping"),
        ("laq.training.betas={a:1}", r"'laq\.training\.betas' must be a list"),
        ("=3", r"override '=3' must look like key=value"),
    ],
)
def test_a_value_of_the_wrong_shape_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("default", [override], configs_root=ROOT / "configs")
    assert f"command-line override {override!r}" in str(err.value) or "must look like" in str(err.value)


def test_a_section_given_a_value_in_a_file_names_the_file_and_key(tmp_path):
    root = tmp_path / "configs"
    (root / "experiment").mkdir(parents=True)
    bad = root / "experiment" / "bad.yaml"
    bad.write_text("laq: 3\nsim:\n  tasks: {reach: 1}\n")
    with pytest.raises(ConfigError, match=rf"{bad}: 'laq' is a section"):
        load_config("bad", configs_root=root)
    bad.write_text("sim:\n  tasks: {reach: 1}\n")
    with pytest.raises(ConfigError, match=rf"{bad}: 'sim\.tasks' must be a list"):
        load_config("bad", configs_root=root)


def test_distinct_seeds_and_arms_load_in_the_order_given():
    cfg = _load("workflow.finetune_seeds=[3,1,0]", "workflow.arms=[scratch,lapa]")
    assert list(cfg.workflow.finetune_seeds) == [3, 1, 0]
    assert list(cfg.workflow.arms) == ["scratch", "lapa"]
