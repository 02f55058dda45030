"""Configuration of the latent action quantizer (stage 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.training import TrainingConfig


@dataclass
class LAQEncoderConfig:
    base_channels: int = 64
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    num_res_blocks: int = 2
    latent_dim: int = 256
    input: str = "difference"  # difference: (frame t, t+1 - t), a better-conditioned 6-channel pair | concat


@dataclass
class LAQQuantizerConfig:
    num_tokens: int = 4
    vocab_size: int = 8
    embedding_dim: int = 256
    beta: float = 0.25
    commitment_warmup_steps: int = 1000  # beta ramps up from 0 (a full early commitment loss collapses codes)
    pooling: str = "attention"  # attention | average | linear
    attention_heads: int = 4
    ema: bool = False  # update codes by exponential moving averages instead of the codebook loss
    ema_decay: float = 0.99
    kmeans_init: bool = True  # seed the codebook from k-means over the first training batch
    dead_code_restart: bool = True
    dead_code_window: int = 100  # training steps a code may stay unused before it is reseeded
    l2_normalize: bool = True
    lookup_dim: int | None = 32  # low-dimensional lookup (None: embedding_dim)
    # Weight of the code-usage entropy term (confident per pair, spread over the batch); 0 disables.
    entropy_weight: float = 0.1
    # Temperature of the soft assignments over squared distances (0..4 when l2-normalised).
    entropy_temperature: float = 0.1


@dataclass
class LAQDecoderConfig:
    base_channels: int = 32
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    num_res_blocks: int = 2
    conditioning: str = "film"  # how action tokens enter the frame-t context: film | add | cross_attention
    skip_connections: bool = True  # U-Net skips from the frame-t context encoder
    residual_output: bool = True  # predict a change of frame t (in tanh pre-activation space)


@dataclass
class LAQTrainingConfig(TrainingConfig):
    """``laq.training``: the shared vocabulary (``TrainingConfig``) with the LAQ's defaults and extras."""

    max_steps: int = 100_000
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    min_lr: float = 1e-6
    batch_size: int = 256  # per device; overrides data.loader.batch_size for this stage
    num_workers: int | None = None  # None: data.loader.num_workers
    epoch_samples: int = 100_000  # samples per pass of the (resampled) training stream
    num_images_to_log: int = 8
    action_bins: int = 8  # bins per true-action dimension for the mutual-information probe
    export: str = "last"  # which weights --out receives: last | best (lowest validation reconstruction loss)
    deterministic: bool = False  # torch deterministic algorithms (exact resume on GPU at some speed cost)


@dataclass
class LAQConfig:
    image_size: int = 224
    encoder: LAQEncoderConfig = field(default_factory=LAQEncoderConfig)
    quantizer: LAQQuantizerConfig = field(default_factory=LAQQuantizerConfig)
    decoder: LAQDecoderConfig = field(default_factory=LAQDecoderConfig)
    training: LAQTrainingConfig = field(default_factory=LAQTrainingConfig)
    label_batch_size: int = 256
    label_workers: int = 2
