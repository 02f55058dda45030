"""Cluster, logging and evaluation settings shared by all stages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ClusterConfig:
    name: str = "local"
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 8
    time_limit: str = "01:00:00"
    container_image: str | None = None
    container_mounts: list[str] = field(default_factory=list)
    data_root: str | None = None
    checkpoint_root: str | None = None
    env: dict = field(default_factory=dict)  # environment variables for jobs (e.g. NCCL settings)


@dataclass
class LoggingConfig:
    wandb: bool = False
    wandb_project: str = "lapa"
    wandb_mode: str = "offline"
    log_every_steps: int = 10


@dataclass
class EvalConfig:
    episodes_per_task: int | None = None  # None: sim.eval_episodes_per_task
    plot_episodes: int = 3
    confidence: float = 0.95


@dataclass
class WorkflowConfig:
    """What ``rule all`` builds for an experiment."""

    arms: list[str] = field(default_factory=lambda: ["lapa"])  # lapa | scratch | action_pretrained
    eval_sim: bool = True  # closed-loop evaluation in the simulator (needs the 'sim' extra)
    # Finetuning seeds, the same for every arm: each gives policy/<arm>/seed<N> (finetuned with
    # finetune.training.seed=N: data order, augmentation draws, head init) and its evaluations,
    # all on the same closed-loop evaluation seeds. Adding a seed builds only that seed's jobs.
    finetune_seeds: list[int] = field(default_factory=lambda: [0])
