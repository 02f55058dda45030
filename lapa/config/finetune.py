"""Configuration of action statistics and finetuning (stage 3)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ActionStatsConfig:
    low_quantile: float = 0.01
    high_quantile: float = 0.99
    num_bins: int = 256
    split: str = "train"  # statistics come from the training demonstrations only


@dataclass
class FinetuneConfig:
    init: str = "foundation"  # foundation (lapa, action-pretrained) | scratch
    stats: ActionStatsConfig = field(default_factory=ActionStatsConfig)
    max_steps: int = 5000
    batch_size: int = 32
    lr: float = 2e-5
    head_lr: float | None = None  # learning rate of the new head; None: lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr: float = 1e-6
    gradient_clip: float = 1.0
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    freeze_vision: bool = True
    freeze_projector: bool = False
    val_every_steps: int = 500
    val_batches: int = 20
    checkpoint_every_steps: int = 500
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    seed: int | None = None  # None: the experiment seed
