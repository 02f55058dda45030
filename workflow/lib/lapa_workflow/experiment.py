"""The experiment a Snakemake run builds: its config, the lapa command lines and rule params.

Snakemake's own config carries only ``experiment`` (a name from ``configs/experiment/``),
``overrides`` (``key=value`` strings, a list or one whitespace-separated string) and, for
tests and benchmarks, ``configs`` (another configs root) and ``lapa_source`` (the directory
holding the ``lapa`` package whose code is fingerprinted). The overrides go verbatim onto
every ``lapa`` command line and, resolved, into the params of the rules they affect.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lapa_workflow import codehash

# Config keys (dotted) whose resolved values decide each rule's output, with keys to leave out
# (worker counts and similar), and the lapa packages whose code the rule runs.
_SIM_COMMON = ["sim.tasks", "sim.camera", "sim.image_size", "sim.max_steps"]
_LOADER = "data.loader"
_NOT_OUTPUT = ["data.sharding.workers", "data.loader.num_workers"]

RULE_STAGES: dict[str, tuple[list[str], list[str]]] = {
    "rollouts_pretrain": (
        ["seed", *_SIM_COMMON, "sim.pretrain_episodes_per_task", "sim.pretrain_seed"],
        ["lapa.sim"],
    ),
    "rollouts_demos": (["seed", *_SIM_COMMON, "sim.demo_episodes_per_task", "sim.demo_seed"], ["lapa.sim"]),
    "shards_pairs": (["data.source", "data.videos", "data.lerobot_root", "data.sharding"], ["lapa.data"]),
    "shards_demos": (["data.source", "data.lerobot_root", "data.sharding"], ["lapa.data"]),
    "train_laq": (["seed", "laq", _LOADER], ["lapa.laq"]),
    "label_latent": ([], ["lapa.laq"]),
    "label_actions": (["finetune.stats"], ["lapa.laq"]),
    "make_backbones": (
        ["seed", "foundation.vision", "foundation.llm", "foundation.max_text_tokens"],
        ["lapa.foundation"],
    ),
    "train_foundation": (["seed", "foundation", _LOADER], ["lapa.foundation"]),
    # the statistics modules only: editing finetuning code must not rebin the actions (and so
    # retrain the action-pretrained foundation model)
    "action_stats": (["finetune.stats"], ["lapa.data.action_codec", "lapa.data.shard_reader"]),
    "finetune": (["seed", "finetune", _LOADER], ["lapa.finetune"]),
    "eval_offline": (["evaluation"], ["lapa.evaluation"]),
    "eval_sim": (
        ["evaluation", *_SIM_COMMON, "sim.eval_episodes_per_task", "sim.eval_seed", "sim.save_videos"],
        ["lapa.evaluation", "lapa.sim"],
    ),
    "results": (["evaluation"], ["lapa.evaluation"]),
    "plot_curves": ([], ["lapa.commands.workflow"]),
}
_DROP = {"train_laq": ["laq.label_batch_size", "laq.label_workers", "laq.training.num_workers"]}

ARMS = ("lapa", "scratch", "action_pretrained")
SOURCES = ("metaworld", "videos", "lerobot")


def parse_overrides(value: object) -> list[str]:
    """Snakemake hands ``--config overrides=...`` over as a list or a string."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        items = shlex.split(value)
    elif isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        raise ValueError(f"--config overrides must be a list of key=value strings, got {value!r}")
    for item in items:
        if "=" not in item:
            raise ValueError(f"--config overrides: {item!r} is not key=value")
    return items


def _default_source_root() -> Path:
    import lapa

    return Path(lapa.__file__).resolve().parent.parent


@dataclass
class Experiment:
    name: str
    path: Path
    overrides: list[str]
    cfg: DictConfig
    source_root: Path
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_snakemake_config(cls, config: dict, basedir: str | Path) -> Experiment:
        from lapa.config.loader import ConfigError, load_config

        known = {"experiment", "overrides", "configs", "lapa_source"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown --config keys {unknown}: use {sorted(known)}")
        name = str(config.get("experiment", "default"))
        configs = Path(config.get("configs") or Path(basedir) / "configs").resolve()
        path = configs / "experiment" / f"{name}.yaml"
        if not path.is_file():
            names = sorted(p.stem for p in (configs / "experiment").glob("*.yaml"))
            raise ValueError(f"unknown experiment {name!r}: no {path}; available: {', '.join(names)}")
        overrides = parse_overrides(config.get("overrides"))
        try:
            cfg = load_config(path, overrides, configs_root=configs)
        except ConfigError as exc:
            raise ValueError(f"experiment {name!r}: {exc}") from exc
        source = Path(config.get("lapa_source") or _default_source_root()).resolve()
        if not (source / "lapa" / "__init__.py").is_file():
            raise ValueError(f"lapa_source={source} holds no lapa/__init__.py")
        exp = cls(name=name, path=path, overrides=overrides, cfg=cfg, source_root=source)
        exp.validate()
        return exp

    def validate(self) -> None:
        wf = self.cfg.workflow
        bad = [a for a in wf.arms if a not in ARMS]
        if bad or not wf.arms:
            raise ValueError(
                f"{self.path}: workflow.arms {list(wf.arms)} must be a non-empty subset of {ARMS}"
            )
        if self.cfg.data.source not in SOURCES:
            raise ValueError(f"{self.path}: data.source {self.cfg.data.source!r} must be one of {SOURCES}")

    # -- command lines -------------------------------------------------------------------------
    @property
    def cli(self) -> str:
        """``-c EXPERIMENT.yaml key=value ...``, shell-quoted, for every lapa command."""
        return " ".join(shlex.quote(a) for a in ["-c", str(self.path), *self.overrides])

    @property
    def env_prefix(self) -> str:
        """Exports of ``cluster.env`` (NCCL settings, offline switches) for every job."""
        env = OmegaConf.to_container(self.cfg.cluster.env, resolve=True) or {}
        return "".join(f"export {k}={shlex.quote(str(v))}; " for k, v in sorted(env.items()))

    # -- params --------------------------------------------------------------------------------
    def config_param(self, rule: str) -> str:
        """The resolved config values that decide ``rule``'s output, as canonical JSON."""
        keys, _ = RULE_STAGES[rule]
        tree = OmegaConf.to_container(self.cfg, resolve=True)
        for dotted in [*_NOT_OUTPUT, *_DROP.get(rule, [])]:
            *head, leaf = dotted.split(".")
            node = tree
            for part in head:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if isinstance(node, dict):
                node.pop(leaf, None)
        values = {}
        for key in keys:
            node = tree
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise KeyError(f"rule {rule}: config key {key!r} does not exist in the experiment schema")
                node = node[part]
            values[key] = node
        return json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)

    def code_param(self, rule: str) -> str:
        """Fingerprint of the source files ``rule`` runs."""
        if rule not in self._fingerprints:
            _, packages = RULE_STAGES[rule]
            self._fingerprints[rule] = codehash.fingerprint(self.source_root, packages)
        return self._fingerprints[rule]

    # -- inputs of the shard rules ---------------------------------------------------------------
    def video_inputs(self) -> list[str]:
        """The user's videos (files, folders, globs and list files) for ``data.source: videos``."""
        import glob

        out: list[str] = []
        for entry in self.cfg.data.videos:
            entry = str(entry)
            if any(ch in entry for ch in "*?["):
                matches = sorted(glob.glob(entry, recursive=True))
                if not matches:
                    raise ValueError(f"{self.path}: data.videos pattern {entry!r} matches no file")
                out.extend(matches)
            else:
                out.append(entry)
        if not out:
            raise ValueError(f"{self.path}: data.source is 'videos' but data.videos is empty")
        return out

    def lerobot_root(self) -> str:
        root = self.cfg.data.lerobot_root
        if not root:
            raise ValueError(f"{self.path}: data.source is 'lerobot' but data.lerobot_root is not set")
        return str(root)
