"""Configuration of action statistics and finetuning (stage 3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from lapa.config.checks import Order, above, at_least, in_range, one_of
from lapa.config.training import TrainingConfig

INITS = ("foundation", "scratch")
# How the binned head's logits become a continuous action (lapa.vla.heads.DECODINGS).
DECODINGS = ("argmax", "expectation")


@dataclass
class ActionStatsConfig:
    ORDERS: ClassVar[tuple[Order, ...]] = (Order("low_quantile", "high_quantile", strict=True),)

    low_quantile: float = field(default=0.01, metadata=in_range(0, 1))
    high_quantile: float = field(default=0.99, metadata=in_range(0, 1))
    num_bins: int = field(default=256, metadata=at_least(2))
    # statistics come from the training demonstrations only
    split: str = field(default="train", metadata=one_of("train", "val"))


@dataclass
class FinetuneTrainingConfig(TrainingConfig):
    """``finetune.training``: the shared vocabulary (``TrainingConfig``) with finetuning's defaults."""

    max_steps: int = 5000
    lr: float = 2e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 200
    min_lr: float = 1e-6
    val_every_steps: int = 500
    checkpoint_every_steps: int = 500
    batch_size: int = field(default=32, metadata=at_least(1))  # per device
    # learning rate of the new action head; None: lr
    head_lr: float | None = field(default=None, metadata=above(0))
    activation_checkpointing: bool = False


@dataclass
class FinetuneConfig:
    # foundation (lapa, action-pretrained) | scratch
    init: str = field(default="foundation", metadata=one_of(*INITS))
    stats: ActionStatsConfig = field(default_factory=ActionStatsConfig)
    freeze_vision: bool = True
    freeze_projector: bool = False
    training: FinetuneTrainingConfig = field(default_factory=FinetuneTrainingConfig)
    # How the 256-bin head becomes a continuous action: argmax (the most probable bin's centre) or
    # expectation (the probability-weighted mean of the bin centres). Recorded in the policy
    # directory's config.json; prediction, serving, ONNX and evaluation use the recorded one.
    decoding: str = field(default="expectation", metadata=one_of(*DECODINGS))
    # Targets that respect bin order: a Gaussian of label_sigma bins around the true bin (0: one-hot)
    # and l1_weight times |expectation-decoded - true| on actions normalised to [-1, 1] (0: off).
    # Defaults from benchmarks/bench_decoding.py --synthetic: with expectation decoding, both
    # together gave the lowest held-out MSE on every seed measured.
    label_sigma: float = field(default=2.0, metadata=at_least(0))
    l1_weight: float = field(default=0.5, metadata=at_least(0))
