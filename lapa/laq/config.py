"""Configuration of the latent action quantizer (stage 1)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LAQEncoderConfig:
    base_channels: int = 64
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    num_res_blocks: int = 2
    latent_dim: int = 256


@dataclass
class LAQQuantizerConfig:
    num_tokens: int = 4
    vocab_size: int = 8
    embedding_dim: int = 256
    beta: float = 0.25
    pooling: str = "attention"  # attention | average | linear
    ema: bool = False
    ema_decay: float = 0.99
    dead_code_restart: bool = True
    dead_code_window: int = 100  # steps a code may stay unused before it is reseeded
    l2_normalize: bool = True
    lookup_dim: int | None = None  # low-dimensional lookup (None: embedding_dim)


@dataclass
class LAQDecoderConfig:
    base_channels: int = 32
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    num_res_blocks: int = 2
    conditioning: str = "film"  # how action tokens enter the frame-t context: film | add | cross_attention


@dataclass
class LAQTrainingConfig:
    max_steps: int = 100_000
    batch_size: int = 256
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    min_lr: float = 1e-6
    gradient_clip: float = 1.0
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    val_every_steps: int = 1000
    val_batches: int = 20
    checkpoint_every_steps: int = 1000
    num_images_to_log: int = 8
    devices: int = 1
    num_nodes: int = 1


@dataclass
class LAQConfig:
    image_size: int = 224
    encoder: LAQEncoderConfig = field(default_factory=LAQEncoderConfig)
    quantizer: LAQQuantizerConfig = field(default_factory=LAQQuantizerConfig)
    decoder: LAQDecoderConfig = field(default_factory=LAQDecoderConfig)
    training: LAQTrainingConfig = field(default_factory=LAQTrainingConfig)
    label_batch_size: int = 256
