"""Typed experiment configuration (OmegaConf structured configs over dataclasses)."""

from lapa.config.loader import ConfigError, load_config, save_config, section_fingerprint, to_container
from lapa.config.schema import ExperimentConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "load_config",
    "save_config",
    "section_fingerprint",
    "to_container",
]
