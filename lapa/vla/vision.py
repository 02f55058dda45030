"""The fused SigLIP + DINOv2 vision encoder (as in OpenVLA's Prismatic backbone), built with timm.

Images enter as uint8 and each tower normalises them with its own mean/std, so the training
loop and the deployed policy cannot disagree about preprocessing.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)


def _plain(value: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def build_timm_tower(arch: str, overrides: dict | None = None, weights: str | None = None) -> nn.Module:
    """A timm ViT without its classifier or pooling head (only patch features are used).

    ``weights`` is a local file (safetensors or torch) loaded through timm's own loader; nothing
    is downloaded.
    """
    kwargs = dict(_plain(overrides) or {})
    if weights is not None:
        from pathlib import Path

        if not Path(weights).is_file():
            raise FileNotFoundError(f"vision weights file not found: {weights} (for {arch})")
        model = timm.create_model(
            arch, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, num_classes=0, **kwargs
        )
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    if not hasattr(model, "forward_features") or not hasattr(model, "patch_embed"):
        raise ValueError(f"timm architecture {arch!r} is not a vision transformer with patch features")
    model.reset_classifier(0, "")  # drops SigLIP's attention-pooling head: it would be dead weight
    return model


class VisionTower(nn.Module):
    """One timm ViT returning per-patch features [B, N, C] (prefix and register tokens dropped)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        scale, shift = self._normalization()
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        self.grid_size = tuple(model.patch_embed.grid_size)
        self.embed_dim = int(model.embed_dim)

    def _normalization(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """uint8 -> normalised float in one affine step ``x * scale + shift`` (the tower's mean/std)."""
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean = cfg.get("mean", (0.5, 0.5, 0.5))
        std = cfg.get("std", (0.5, 0.5, 0.5))
        scale = torch.tensor([1.0 / (255.0 * s) for s in std], device=device).view(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, 3, 1, 1)
        return scale, shift

    def reset_buffers(self, device: torch.device | str) -> None:
        """Recompute the normalisation buffers (after meta-device construction and ``to_empty``)."""
        scale, shift = self._normalization(device)
        self.scale.copy_(scale)
        self.shift.copy_(shift)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward(self, images_uint8: Tensor) -> Tensor:
        x = images_uint8.to(self.scale.dtype) * self.scale + self.shift
        feats = self.model.forward_features(x.to(self.model.patch_embed.proj.weight.dtype))
        return feats[:, self.num_prefix_tokens :]


class FusedVisionEncoder(nn.Module):
    """SigLIP and DINOv2 patch features concatenated per patch: [B, N, C_siglip + C_dinov2]."""

    def __init__(self, cfg: Any, *, build_weights: bool = False) -> None:
        """``cfg``: a VisionConfig; ``build_weights``: load the towers' local weight files."""
        super().__init__()
        towers = {}
        for name in ("siglip", "dinov2"):
            tcfg = _get(cfg, name)
            weights = _get(tcfg, "weights") if build_weights else None
            towers[name] = VisionTower(build_timm_tower(_get(tcfg, "arch"), _get(tcfg, "overrides"), weights))
        self.siglip = towers["siglip"]
        self.dinov2 = towers["dinov2"]
        if self.siglip.grid_size != self.dinov2.grid_size:
            raise ValueError(
                f"foundation.vision: SigLIP patch grid {self.siglip.grid_size} differs from DINOv2's "
                f"{self.dinov2.grid_size}; set img_size/patch_size in the towers' overrides so they match"
            )
        self.image_size = int(_get(cfg, "image_size"))
        expected = tuple(self.siglip.model.patch_embed.img_size)
        if expected != (self.image_size, self.image_size):
            raise ValueError(
                f"foundation.vision.image_size={self.image_size} but the towers take {expected} images; "
                "set img_size in the towers' overrides"
            )
        self.frozen = bool(_get(cfg, "freeze", True))
        if self.frozen:
            self.requires_grad_(False)
            self.eval()

    @property
    def out_dim(self) -> int:
        return self.siglip.embed_dim + self.dinov2.embed_dim

    @property
    def num_patches(self) -> int:
        return self.siglip.num_patches

    def train(self, mode: bool = True) -> FusedVisionEncoder:
        # frozen towers stay in eval mode whatever the parent does (no dropout/drop-path noise)
        return super().train(mode and not self.frozen)

    def forward(self, images_uint8: Tensor) -> Tensor:
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 [B,3,H,W], got {images_uint8.dtype}")
        if tuple(images_uint8.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images_uint8.shape[-2:])}, the vision encoder takes "
                f"{self.image_size}x{self.image_size}: run them through VLAProcessor"
            )
        if self.frozen:
            with torch.no_grad():
                return torch.cat([self.siglip(images_uint8), self.dinov2(images_uint8)], dim=-1)
        return torch.cat([self.siglip(images_uint8), self.dinov2(images_uint8)], dim=-1)
