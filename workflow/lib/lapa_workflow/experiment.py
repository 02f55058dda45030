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

# Settings that never decide an artifact (how many processes read or write it), left out of
# every rule's config param; a rule names further ones of its own in its `.smk` file.
NOT_OUTPUT = ["data.sharding.workers", "data.loader.num_workers"]

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
    _fingerprints: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False)

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
        seeds = list(wf.finetune_seeds)
        if not seeds or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
            raise ValueError(
                f"{self.path}: workflow.finetune_seeds {seeds} must be a non-empty list of integers >= 0"
            )
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{self.path}: workflow.finetune_seeds {seeds} names a seed twice")
        self.check_eval_seeds()

    def check_eval_seeds(self) -> None:
        """Refuse closed-loop evaluation seeds that a training set of this DAG also renders.

        Episode j of every task uses layout seed ``sim.<split>_seed + j``: the evaluation range
        ``[sim.eval_seed, + episodes per task)`` (``evaluation.episodes_per_task``, else
        ``sim.eval_episodes_per_task``) must meet neither the pretraining videos' range (when they
        come from the simulator) nor the demonstrations' range (unless they come from LeRobot).
        Raises ``ValueError`` naming the experiment file, both ranges and the keys that set them.
        """
        from lapa.sim.rollouts import seed_range

        sim = self.cfg.sim
        source = self.cfg.data.source
        training = {"pretrain": source == "metaworld", "demos": source != "lerobot"}
        keys = {
            "pretrain": "sim.pretrain_seed, sim.pretrain_episodes_per_task",
            "demos": "sim.demo_seed, sim.demo_episodes_per_task",
        }
        ranges = {split: seed_range(sim, split) for split, used in training.items() if used}
        if ranges.get("pretrain") and ranges.get("demos"):
            (a0, a1), (b0, b1) = ranges["pretrain"], ranges["demos"]
            if a0 < b1 and b0 < a1:
                raise ValueError(
                    f"{self.path}: pretraining seeds [{a0}, {a1}) ({keys['pretrain']}) overlap the "
                    f"demonstration seeds [{b0}, {b1}) ({keys['demos']})"
                )
        if not self.cfg.workflow.eval_sim:
            return
        episodes = int(self.cfg.evaluation.episodes_per_task or sim.eval_episodes_per_task)
        if episodes < 1:
            raise ValueError(
                f"{self.path}: closed-loop evaluation needs >= 1 episode per task, not {episodes}"
            )
        e0, e1 = int(sim.eval_seed), int(sim.eval_seed) + episodes
        for split, (a0, a1) in ranges.items():
            if e0 < a1 and a0 < e1:
                raise ValueError(
                    f"{self.path}: closed-loop evaluation seeds [{e0}, {e1}) (sim.eval_seed, {episodes} "
                    f"episodes per task) overlap the {split} seeds [{a0}, {a1}) ({keys[split]}): "
                    "evaluation layouts must lie in no training set; move sim.eval_seed past them"
                )

    @property
    def finetune_seeds(self) -> list[int]:
        """``workflow.finetune_seeds``: the finetuning seeds every arm runs."""
        return [int(s) for s in self.cfg.workflow.finetune_seeds]

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

    # -- params ---------------------------------------------------------------------------------
    def config_param(self, keys: list[str], leave_out: list[str] | tuple[str, ...] = ()) -> str:
        """The resolved values of config ``keys`` (dotted: sections or single keys), canonical JSON.

        ``leave_out`` (and ``NOT_OUTPUT``) are removed from the sections first: settings that do
        not change the artifact. A key the schema lacks raises ``ValueError`` naming it.
        """
        tree = OmegaConf.to_container(self.cfg, resolve=True)
        for dotted in [*NOT_OUTPUT, *leave_out]:
            *head, leaf = dotted.split(".")
            node = tree
            for part in head:
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if not isinstance(node, dict) or leaf not in node:
                if dotted in leave_out:
                    raise ValueError(
                        f"config key {dotted!r} to leave out does not exist in the experiment schema"
                    )
                continue
            node.pop(leaf)
        values = {}
        for key in keys:
            node = tree
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"config key {key!r} does not exist in the experiment schema")
                node = node[part]
            values[key] = node
        return json.dumps(values, sort_keys=True, separators=(",", ":"), default=str)

    def run_only_keys(self, section: str) -> list[str]:
        """Keys of ``<section>.training`` that change how a run goes, not the weights it ends with.

        ``lapa.config.training.NOT_IN_IDENTITY`` (checkpoints kept, CPU threads, leaving early)
        without ``max_steps``, which does decide the artifact; only those the section has.
        """
        from lapa.config.training import NOT_IN_IDENTITY

        node = OmegaConf.select(self.cfg, f"{section}.training")
        if node is None:
            raise ValueError(f"config section {section}.training does not exist in the experiment schema")
        return [f"{section}.training.{key}" for key in NOT_IN_IDENTITY if key != "max_steps" and key in node]

    def code_param(self, entries: list[str]) -> str:
        """Fingerprint of the source files ``entries`` name and import (see ``codehash``)."""
        key = tuple(entries)
        if key not in self._fingerprints:
            self._fingerprints[key] = codehash.fingerprint(self.source_root, list(entries))
        return self._fingerprints[key]

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
