"""Configuration of the latent action quantizer (stage 1)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import above, at_least, each, in_range, one_of
from lapa.config.training import TrainingConfig

MULTIPLIERS = each(at_least(1), "a non-empty list of integers >= 1", nonempty=True)


@dataclass
class LAQEncoderConfig:
    base_channels: int = field(default=64, metadata=at_least(1))
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata=MULTIPLIERS)
    num_res_blocks: int = field(default=2, metadata=at_least(0))
    latent_dim: int = field(default=256, metadata=at_least(1))
    # difference: (frame t, t+1 - t), a better-conditioned 6-channel pair | concat
    input: str = field(default="difference", metadata=one_of("difference", "concat"))


@dataclass
class LAQQuantizerConfig:
    num_tokens: int = field(default=4, metadata=at_least(1))
    vocab_size: int = field(default=8, metadata=at_least(1))
    embedding_dim: int = field(default=256, metadata=at_least(1))
    beta: float = field(default=0.25, metadata=at_least(0))
    # beta ramps up from 0 (a full early commitment loss collapses codes)
    commitment_warmup_steps: int = field(default=1000, metadata=at_least(0))
    pooling: str = field(default="attention", metadata=one_of("attention", "average", "linear"))
    attention_heads: int = field(default=4, metadata=at_least(1))
    ema: bool = False  # update codes by exponential moving averages instead of the codebook loss
    ema_decay: float = field(default=0.99, metadata=in_range(0, 1, high_open=True))
    kmeans_init: bool = True  # seed the codebook from k-means over the first training batch
    dead_code_restart: bool = True
    # training steps a code may stay unused before it is reseeded
    dead_code_window: int = field(default=100, metadata=at_least(1))
    l2_normalize: bool = True
    # low-dimensional lookup (None: embedding_dim)
    lookup_dim: int | None = field(default=32, metadata=at_least(1))
    # Weight of the code-usage entropy term (confident per pair, spread over the batch); 0 disables.
    entropy_weight: float = field(default=0.1, metadata=at_least(0))
    # Temperature of the soft assignments over squared distances (0..4 when l2-normalised).
    entropy_temperature: float = field(default=0.1, metadata=above(0))


@dataclass
class LAQDecoderConfig:
    base_channels: int = field(default=32, metadata=at_least(1))
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 4, 8], metadata=MULTIPLIERS)
    num_res_blocks: int = field(default=2, metadata=at_least(0))
    # how action tokens enter the frame-t context: film | add | cross_attention
    conditioning: str = field(default="film", metadata=one_of("film", "add", "cross_attention"))
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
    # per device; overrides data.loader.batch_size for this stage
    batch_size: int = field(default=256, metadata=at_least(1))
    num_workers: int | None = field(default=None, metadata=at_least(0))  # None: data.loader.num_workers
    # samples per pass of the (resampled) training stream
    epoch_samples: int = field(default=100_000, metadata=at_least(1))
    num_images_to_log: int = field(default=8, metadata=at_least(0))
    # bins per true-action dimension for the mutual-information probe
    action_bins: int = field(default=8, metadata=at_least(2))
    # which weights --out receives: last | best (lowest validation reconstruction loss)
    export: str = field(default="last", metadata=one_of("last", "best"))
    deterministic: bool = False  # torch deterministic algorithms (exact resume on GPU at some speed cost)


@dataclass
class LAQConfig:
    image_size: int = field(default=224, metadata=at_least(1))
    encoder: LAQEncoderConfig = field(default_factory=LAQEncoderConfig)
    quantizer: LAQQuantizerConfig = field(default_factory=LAQQuantizerConfig)
    decoder: LAQDecoderConfig = field(default_factory=LAQDecoderConfig)
    training: LAQTrainingConfig = field(default_factory=LAQTrainingConfig)
    label_batch_size: int = field(default=256, metadata=at_least(1))
    label_workers: int = field(default=2, metadata=at_least(0))  # loader workers; 0: the main process
