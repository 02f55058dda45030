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
    proc = subprocess.run(
        [sys.executable, "-m", "lapa", "config", "laq.quantizer.vocab_sise=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "vocab_sise" in proc.stderr and "Traceback" not in proc.stderr
