"""The assembled LAQ: encoder -> token pooling -> vector quantizer -> frame-t-conditioned decoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lapa.laq.decoder import LAQDecoder
from lapa.laq.encoder import LAQEncoder
from lapa.laq.quantizer import TokenPooling, VectorQuantizer

# Keys of the architecture hyper-parameters stored in checkpoints (training settings excluded).
ARCH_KEYS = ("image_size", "encoder", "quantizer", "decoder")


@dataclass
class LAQOutput:
    reconstruction: torch.Tensor  # [B, 3, H, W] in [-1, 1]
    indices: torch.Tensor  # [B, num_tokens] int64
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    vq_loss: torch.Tensor  # codebook + beta * commitment (beta ramped over the warm-up)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] (or float already in [-1, 1]) -> float [-1, 1], the tanh range."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    return images.float()


def architecture_from_config(laq_cfg: Any) -> dict:
    """The plain-dict architecture description stored in checkpoints and used to rebuild the model."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(laq_cfg, DictConfig):
        laq_cfg = OmegaConf.to_container(laq_cfg, resolve=True)
    elif not isinstance(laq_cfg, dict):
        from dataclasses import asdict

        laq_cfg = asdict(laq_cfg)
    return {k: laq_cfg[k] for k in ARCH_KEYS}


class LAQModel(nn.Module):
    """Frame pair in, discrete latent action (and the reconstruction of frame t+1) out."""

    def __init__(self, arch: dict):
        super().__init__()
        self.arch = {k: arch[k] for k in ARCH_KEYS}
        enc, q, dec = arch["encoder"], arch["quantizer"], arch["decoder"]
        image_size = int(arch["image_size"])
        self.encoder = LAQEncoder(
            in_channels=6,
            base_channels=enc["base_channels"],
            channel_multipliers=enc["channel_multipliers"],
            num_res_blocks=enc["num_res_blocks"],
            latent_dim=enc["latent_dim"],
        )
        if image_size % self.encoder.downsample:
            raise ValueError(
                f"laq.image_size={image_size} must be divisible by 2**len(encoder.channel_multipliers)"
                f"={self.encoder.downsample}"
            )
        self.image_size = image_size
        self.input_mode = enc.get("input", "difference")
        if self.input_mode not in ("difference", "concat"):
            raise ValueError(f"laq.encoder.input must be difference or concat, got {self.input_mode!r}")
        self.pool = TokenPooling(
            q["pooling"],
            latent_dim=enc["latent_dim"],
            grid_size=image_size // self.encoder.downsample,
            num_tokens=q["num_tokens"],
            embedding_dim=q["embedding_dim"],
            heads=q.get("attention_heads", 4),
        )
        self.quantizer = VectorQuantizer(**q)
        self.decoder = LAQDecoder(
            num_tokens=q["num_tokens"],
            embedding_dim=q["embedding_dim"],
            base_channels=dec["base_channels"],
            channel_multipliers=dec["channel_multipliers"],
            num_res_blocks=dec["num_res_blocks"],
            conditioning=dec["conditioning"],
            skip_connections=dec.get("skip_connections", True),
            residual_output=dec.get("residual_output", True),
        )

    @property
    def num_tokens(self) -> int:
        return self.quantizer.num_tokens

    @property
    def vocab_size(self) -> int:
        return self.quantizer.vocab_size

    def _check(self, frame: torch.Tensor) -> None:
        if frame.dim() != 4 or frame.shape[1] != 3 or frame.shape[-1] != self.image_size:
            raise ValueError(
                f"LAQ expects [B, 3, {self.image_size}, {self.image_size}], got {tuple(frame.shape)}"
            )

    def encode(self, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> torch.Tensor:
        """Continuous action tokens [B, T, D] of a pair (frames in [-1, 1])."""
        self._check(frame_t)
        second = frame_t1 - frame_t if self.input_mode == "difference" else frame_t1
        return self.pool(self.encoder(torch.cat([frame_t, second], dim=1)))

    def forward(self, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> LAQOutput:
        quantized, indices, losses = self.quantizer(self.encode(frame_t, frame_t1))
        recon = self.decoder(quantized, frame_t)
        vq = (
            losses["codebook"]
            + self.quantizer.commitment_weight() * losses["commitment"]
            + self.quantizer.entropy_weight * losses["entropy"]
        )
        return LAQOutput(recon, indices, losses["codebook"], losses["commitment"], vq)

    @torch.no_grad()
    def predict_indices(self, frame_t: torch.Tensor, frame_t1: torch.Tensor) -> torch.Tensor:
        """The discrete latent action [B, num_tokens] (int64) of uint8 or [-1, 1] frames."""
        return self.quantizer.indices(self.encode(to_model_range(frame_t), to_model_range(frame_t1)))
