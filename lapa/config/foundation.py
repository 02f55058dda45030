"""Configuration of the vision-language-action foundation model (stage 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import above, at_least
from lapa.config.training import TrainingConfig


@dataclass
class VisionBackboneConfig:
    arch: str = "vit_so400m_patch14_siglip_224"  # a timm architecture name
    weights: str | None = None  # local weights file; None: random initialisation
    overrides: dict = field(default_factory=dict)  # timm kwargs (embed_dim, depth, ...) for small configs


@dataclass
class VisionConfig:
    siglip: VisionBackboneConfig = field(default_factory=VisionBackboneConfig)
    dinov2: VisionBackboneConfig = field(
        default_factory=lambda: VisionBackboneConfig(
            arch="vit_large_patch14_reg4_dinov2", overrides={"img_size": 224}
        )
    )
    image_size: int = field(default=224, metadata=at_least(1))
    freeze: bool = True


@dataclass
class LLMConfig:
    path: str | None = (
        None  # local HF directory (e.g. a Llama-2-7b-hf copy); None: build from the fields below
    )
    hidden_size: int = field(default=4096, metadata=at_least(1))
    intermediate_size: int = field(default=11008, metadata=at_least(1))
    num_hidden_layers: int = field(default=32, metadata=at_least(1))
    num_attention_heads: int = field(default=32, metadata=at_least(1))
    num_key_value_heads: int = field(default=32, metadata=at_least(1))
    max_position_embeddings: int = field(default=4096, metadata=at_least(1))
    rms_norm_eps: float = field(default=1e-5, metadata=above(0))
    # for a locally trained tokenizer, its size is used instead
    vocab_size: int = field(default=32000, metadata=at_least(1))
    tokenizer_path: str | None = None  # local tokenizer directory; None: train a BPE on the instructions
    tokenizer_vocab_size: int = field(default=1024, metadata=at_least(1))
    attn_implementation: str = "sdpa"


@dataclass
class ProjectorConfig:
    hidden_dim: int | None = field(default=None, metadata=at_least(1))  # None: the LLM's hidden size


@dataclass
class HeadConfig:
    """The latent-action head; both sizes normally come from the labelled shards' info.json.

    A value set here is checked against the shards, so a config written for a 4x8 LAQ fails
    loudly on shards labelled by a different one.
    """

    num_tokens: int | None = field(default=None, metadata=at_least(1))
    vocab_size: int | None = field(default=None, metadata=at_least(1))


@dataclass
class FoundationTrainingConfig(TrainingConfig):
    """``foundation.training``: the shared vocabulary (``TrainingConfig``) with the foundation's defaults.

    One optimizer step = ``effective_batch_size / (batch_size_per_device x world size)``
    accumulated micro-batches.
    """

    max_steps: int = 10_000
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    min_lr: float = 1e-6
    keep_last: int = 5
    batch_size_per_device: int = field(default=16, metadata=at_least(1))
    # batch_size_per_device x world size x accumulation
    effective_batch_size: int = field(default=4096, metadata=at_least(1))
    activation_checkpointing: bool = False


@dataclass
class FoundationConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # instruction tokens after BOS; longer instructions are truncated
    max_text_tokens: int = field(default=64, metadata=at_least(1))
    training: FoundationTrainingConfig = field(default_factory=FoundationTrainingConfig)
