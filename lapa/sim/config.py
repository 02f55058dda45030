"""Configuration of Meta-World rollouts and closed-loop evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimConfig:
    tasks: list[str] = field(default_factory=lambda: ["reach-v3", "push-v3", "drawer-open-v3"])
    camera: str = "corner"
    image_size: int = 64  # rendered frame size (square)
    max_steps: int = 150  # episode cap
    # Disjoint seed ranges: pretraining videos, labelled demonstrations, evaluation.
    pretrain_episodes_per_task: int = 4
    demo_episodes_per_task: int = 2
    eval_episodes_per_task: int = 4
    pretrain_seed: int = 0
    demo_seed: int = 100_000
    eval_seed: int = 200_000
    workers: int = 2
    save_videos: int = 2  # rollout videos kept per task during evaluation
