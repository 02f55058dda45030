"""The install files agree with each other and the console script works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for extra in ("sim", "test"):
        wanted |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(r) for r in pip_section if not r.startswith("-")}
    assert wanted - listed == set(), f"missing from environment.yml: {sorted(wanted - listed)}"


def test_help_lists_every_stage_command():
    out = subprocess.run(
        [sys.executable, "-m", "lapa", "--help"], capture_output=True, text=True, check=True
    ).stdout
    commands = [
        "rollouts", "shards", "train-laq", "label", "make-backbones", "train-foundation", "action-stats",
        "finetune", "eval-offline", "eval-sim", "serve", "export", "results", "config", "plot-curves",
    ]  # fmt: skip
    missing = [c for c in commands if f"    {c}" not in out]
    assert not missing, f"lapa --help lacks {missing}"


def test_every_stage_command_says_what_it_does_in_its_help():
    import argparse

    from lapa.commands import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = [name for name, p in sub.choices.items() if not p.description]
    assert not bare, f"lapa COMMAND --help without a description: {bare}"
