"""Compose an experiment from YAML fragments with OmegaConf, typed by dataclasses.

An experiment file names fragments in a ``defaults:`` list (paths relative to the configs
root, without ``.yaml``, e.g. ``model/laq_tiny``); fragments are merged in order, then the
experiment's own keys, then ``key=value`` overrides. Every fragment is rooted at the top of
the experiment tree. A misspelt key or a wrong type fails at once, naming the key and file; a
value outside what its field allows (``lapa.config.checks``: counts below their minimum, a string
that is not one of its choices, a fraction outside [0, 1]) fails once the tree is composed, naming
the key, the value, what is allowed and the file or override that set it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lapa.config.checks import validate
from lapa.config.schema import ExperimentConfig


class ConfigError(ValueError):
    """A configuration problem, with the key and file it came from."""


def default_configs_root() -> Path:
    """Where ``configs/`` lives: $LAPA_CONFIGS, ./configs, or beside the installed package."""
    env = os.environ.get("LAPA_CONFIGS")
    if env:
        return Path(env)
    cwd = Path.cwd() / "configs"
    if cwd.is_dir():
        return cwd
    return Path(__file__).resolve().parents[2] / "configs"


def resolve_experiment_path(experiment: str | os.PathLike, configs_root: Path | None = None) -> Path:
    """Accept a path to a YAML file or a bare experiment name from ``configs/experiment/``."""
    candidate = Path(experiment)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"experiment config file not found: {candidate}")
        return candidate
    root = configs_root or default_configs_root()
    path = root / "experiment" / f"{experiment}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (root / "experiment").glob("*.yaml"))
        raise ConfigError(f"unknown experiment {experiment!r}: no {path} (available: {', '.join(names)})")
    return path


def _configs_root_for(path: Path) -> Path:
    # configs/experiment/x.yaml -> configs/
    if path.parent.name == "experiment":
        return path.parent.parent
    return default_configs_root()


def _load_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml parse errors carry line numbers
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping at its top level")
    return node


def _shape_mismatch(base: DictConfig, fragment: DictConfig, prefix: str = "") -> str | None:
    """The first key where ``fragment`` gives a section a plain value or a list a mapping, described
    for an error message; None when the shapes agree (the error is then about something else)."""
    for key in fragment:
        if key not in base:
            continue
        have, give = base._get_node(key), fragment._get_node(key)
        name = f"{prefix}{key}"
        if isinstance(have, DictConfig) and not have._is_none():
            if isinstance(give, DictConfig):
                found = _shape_mismatch(have, give, name + ".")
                if found:
                    return found
            elif not (give is not None and give._is_none()):
                what = "a list" if isinstance(give, ListConfig) else f"the value {give._value()!r}"
                return f"'{name}' is a section; set its keys (e.g. {name}.<key>=...), not {what}"
        elif isinstance(have, ListConfig) and isinstance(give, DictConfig):
            return f"'{name}' must be a list (e.g. {name}=[a,b]), got a mapping"
    return None


def _merge_checked(base: DictConfig, fragment: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, fragment)
    except (OmegaConfBaseException, TypeError) as exc:  # TypeError: a mapping merged into a list
        shape = _shape_mismatch(base, fragment)
        if shape:
            raise ConfigError(f"{source}: {shape}") from exc
        key = getattr(exc, "full_key", None) or "?"
        message = (getattr(exc, "msg", None) or str(exc)).splitlines()[0]
        raise ConfigError(f"{source}: invalid key or value '{key}': {message}") from exc


def _collect(path: Path, root: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """Fragments of ``path`` in merge order (its defaults first, recursively, then itself)."""
    if path in seen:
        raise ConfigError(f"defaults cycle: {' -> '.join(str(p) for p in (*seen, path))}")
    node = _load_yaml(path)
    out: list[tuple[str, DictConfig]] = []
    defaults = node.pop("defaults", None) if "defaults" in node else None
    if defaults is not None:
        if not isinstance(defaults, ListConfig):
            raise ConfigError(f"{path}: 'defaults' must be a list of fragment names")
        for entry in defaults:
            if not isinstance(entry, str):
                raise ConfigError(f"{path}: defaults entry {entry!r} must be a string like 'model/laq_tiny'")
            frag = root / f"{entry}.yaml"
            if not frag.is_file():
                raise ConfigError(f"{path}: defaults entry {entry!r} not found at {frag}")
            out.extend(_collect(frag, root, (*seen, path)))
    out.append((str(path), node))
    return out


def _open_free_form_dicts(node: DictConfig) -> None:
    """Struct mode checks dataclass fields only: plain ``dict`` fields (timm kwargs, env) take any key."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            if OmegaConf.get_type(child) is dict:
                OmegaConf.set_struct(child, False)
            else:
                _open_free_form_dicts(child)


def load_config(
    experiment: str | os.PathLike = "default",
    overrides: list[str] | None = None,
    configs_root: Path | None = None,
) -> ExperimentConfig:
    """Compose, validate and return the experiment as a typed (structured) config.

    Raises ConfigError for a missing file, an unknown key, a value of the wrong type or a value
    outside what its field allows (naming the key, the value, what is allowed and its source).
    """
    path = resolve_experiment_path(experiment, configs_root)
    root = configs_root or _configs_root_for(path)
    cfg = OmegaConf.structured(ExperimentConfig)
    OmegaConf.set_struct(cfg, True)
    _open_free_form_dicts(cfg)
    sources = _collect(path, root)
    for source, fragment in sources:
        cfg = _merge_checked(cfg, fragment, source)
    if overrides:
        for item in overrides:
            if not item.partition("=")[0].strip() or "=" not in item:
                raise ConfigError(f"override {item!r} must look like key=value")
            try:
                dot = OmegaConf.from_dotlist([item])
            except Exception as exc:
                raise ConfigError(f"cannot parse override {item!r}: {exc}") from exc
            source = f"command-line override {item!r}"
            cfg = _merge_checked(cfg, dot, source)
            sources.append((source, dot))
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: cannot resolve interpolation: {exc}") from exc
    try:
        validate(cfg, sources)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return cfg  # a DictConfig typed by ExperimentConfig; attribute access is checked


def to_container(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def section_fingerprint(cfg: DictConfig, *keys: str) -> str:
    """A short stable hash of the named sections, for cache keys and Snakemake params."""
    payload = {k: OmegaConf.to_container(OmegaConf.select(cfg, k), resolve=True) for k in keys}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    from lapa.utils.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
