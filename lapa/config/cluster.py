"""Cluster, logging and evaluation settings shared by all stages."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import at_least, each, in_range, one_of

ARMS = ("lapa", "scratch", "action_pretrained")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class ClusterConfig:
    name: str = "local"
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    gpus_per_node: int = field(default=0, metadata=at_least(0))
    cpus_per_task: int = field(default=2, metadata=at_least(1))
    mem_gb: int = field(default=8, metadata=at_least(1))
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
    wandb_mode: str = field(default="offline", metadata=one_of(*WANDB_MODES))
    log_every_steps: int = field(default=10, metadata=at_least(1))


@dataclass
class EvalConfig:
    # None: sim.eval_episodes_per_task
    episodes_per_task: int | None = field(default=None, metadata=at_least(1))
    plot_episodes: int = field(default=3, metadata=at_least(0))
    # of the Wilson intervals and the paired comparison's interval
    confidence: float = field(default=0.95, metadata=in_range(0, 1, low_open=True, high_open=True))


@dataclass
class WorkflowConfig:
    """What ``rule all`` builds for an experiment."""

    arms: list[str] = field(  # lapa | scratch | action_pretrained
        default_factory=lambda: ["lapa"],
        metadata=each(
            one_of(*ARMS),
            f"a non-empty list of {', '.join(map(repr, ARMS))} without repeats",
            nonempty=True,
            unique=True,
        ),
    )
    eval_sim: bool = True  # closed-loop evaluation in the simulator (needs the 'sim' extra)
    # Finetuning seeds, the same for every arm: each gives policy/<arm>/seed<N> (finetuned with
    # finetune.training.seed=N: data order, augmentation draws, head init) and its evaluations,
    # all on the same closed-loop evaluation seeds. Adding a seed builds only that seed's jobs.
    finetune_seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata=each(
            at_least(0), "a non-empty list of integers >= 0 without repeats", nonempty=True, unique=True
        ),
    )
