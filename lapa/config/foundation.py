"""Configuration of the vision-language-action foundation model (stage 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    image_size: int = 224
    freeze: bool = True


@dataclass
class LLMConfig:
    path: str | None = (
        None  # local HF directory (e.g. a Llama-2-7b-hf copy); None: build from the fields below
    )
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    vocab_size: int = 32000  # for a locally trained tokenizer, its size is used instead
    tokenizer_path: str | None = None  # local tokenizer directory; None: train a BPE on the instructions
    tokenizer_vocab_size: int = 1024
    attn_implementation: str = "sdpa"


@dataclass
class ProjectorConfig:
    hidden_dim: int | None = None  # None: the LLM's hidden size


@dataclass
class HeadConfig:
    """The latent-action head; both sizes normally come from the labelled shards' info.json.

    A value set here is checked against the shards, so a config written for a 4x8 LAQ fails
    loudly on shards labelled by a different one.
    """

    num_tokens: int | None = None
    vocab_size: int | None = None


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
    batch_size_per_device: int = 16
    effective_batch_size: int = 4096  # batch_size_per_device x world size x accumulation
    activation_checkpointing: bool = False


@dataclass
class FoundationConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    max_text_tokens: int = 64  # instruction tokens after BOS; longer instructions are truncated
    training: FoundationTrainingConfig = field(default_factory=FoundationTrainingConfig)
