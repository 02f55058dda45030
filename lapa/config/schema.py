"""The root experiment configuration: one typed tree for every stage."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import at_least
from lapa.config.cluster import ClusterConfig, EvalConfig, LoggingConfig, WorkflowConfig
from lapa.config.data import DataConfig
from lapa.config.finetune import FinetuneConfig
from lapa.config.foundation import FoundationConfig
from lapa.config.laq import LAQConfig
from lapa.config.serve import ServeConfig
from lapa.config.sim import SimConfig


@dataclass
class ExperimentConfig:
    name: str = "default"
    seed: int = field(default=42, metadata=at_least(0))
    data: DataConfig = field(default_factory=DataConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    laq: LAQConfig = field(default_factory=LAQConfig)
    foundation: FoundationConfig = field(default_factory=FoundationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)
