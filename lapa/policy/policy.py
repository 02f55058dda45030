"""The deployable policy: a self-contained directory in the manner of a Hugging Face model.

Layout::

    config.json               # format, the foundation section, action_dim, num_bins, provenance
    llm_config.json           # the exact LlamaConfig
    model.safetensors         # all weights
    action_stats.json         # bins <-> continuous actions
    tokenizer/                # HF tokenizer
    preprocessor_config.json  # how raw camera images become model input (see ``prepare_images``)

Loading reads safetensors, JSON and the tokenizer only: nothing is unpickled and nothing is
downloaded. Raw images go through the same steps as the demonstration data did (the shard
writer's resize and centre crop, the loader's resize, then VLAProcessor), so a camera frame
and a training sample of the same scene give the same model input.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.data.action_codec import ActionStats
from lapa.utils.io import atomic_directory, atomic_write_json, read_json_object

FORMAT = "lapa.policy"
VERSION = 1
INPUT_NAMES = ("images", "input_ids", "attention_mask")  # VLAProcessor's outputs, in forward's order
REQUIRED_FILES = (
    "config.json",
    "llm_config.json",
    "model.safetensors",
    "action_stats.json",
    "tokenizer",
    "preprocessor_config.json",
)


def _container(cfg: Any) -> dict:
    from dataclasses import asdict, is_dataclass

    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg)


def preprocessor_settings(foundation_cfg: Any, sharding_cfg: Any, loader_cfg: Any) -> dict:
    """What ``preprocessor_config.json`` records: the image path of the demonstration data."""
    return {
        "processor_class": "VLAProcessor",
        "shard_resize": int(sharding_cfg.resize),  # shorter side before the centre crop
        "shard_crop": int(sharding_cfg.crop),  # the square stored in the shards
        "loader_image_size": int(loader_cfg.image_size),  # the loader's resize of that square
        "image_size": int(foundation_cfg.vision.image_size),  # VLAProcessor's output size
        "max_text_tokens": int(foundation_cfg.max_text_tokens),
        "image_format": "uint8 RGB; each vision tower normalises with its own mean/std",
    }


def save_policy(
    model: torch.nn.Module,
    tokenizer: Any,
    foundation_cfg: Any,
    stats: ActionStats,
    preprocessor: dict,
    out_dir: str | os.PathLike,
    extra: dict | None = None,
) -> None:
    """Write the policy directory atomically (a killed job leaves no complete-looking directory)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": "VLAModel+ContinuousActionHead",
        "num_queries": int(model.num_queries),
        "action_dim": stats.action_dim,
        "num_bins": stats.num_bins,
        "foundation": _container(foundation_cfg),
        **(extra or {}),
    }
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "llm_config.json").write_text(model.llm.config.to_json_string())
        tokenizer.save_pretrained(tmp / "tokenizer")
        stats.save(tmp / "action_stats.json")
        atomic_write_json(tmp / "preprocessor_config.json", preprocessor)
        atomic_write_json(tmp / "config.json", config)


def _resize_crop_hwc(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    from lapa.data.samples import resize_crop

    return resize_crop(image, resize, crop)


def _to_hwc_uint8(image: Any) -> np.ndarray:
    if isinstance(image, np.ndarray):
        arr = image
    elif isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = arr.transpose(1, 2, 0)
    else:
        try:
            arr = np.asarray(image.convert("RGB"))
        except AttributeError as exc:
            raise TypeError(
                f"unsupported image type {type(image).__name__}: pass HWC uint8 numpy or PIL"
            ) from exc
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"images must be HWC with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


class LAPAPolicy:
    """A loaded policy: ``predict(image, instruction)`` returns the continuous action (float32 [A])."""

    def __init__(
        self,
        model,
        tokenizer,
        stats: ActionStats,
        preprocessor: dict,
        config: dict,
        path=None,
        device: str | torch.device = "cpu",
    ) -> None:
        from lapa.vla.processor import VLAProcessor

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stats = stats
        self.preprocessor = preprocessor
        self.config = config
        self.path = path
        self.device = torch.device(device)
        self.processor = VLAProcessor(tokenizer, preprocessor["image_size"], preprocessor["max_text_tokens"])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> LAPAPolicy:
        """Load a policy directory with local files only (safetensors, JSON, tokenizer files)."""
        from omegaconf import OmegaConf
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, LlamaConfig, LlamaModel
        from transformers.initialization import no_init_weights

        from lapa.vla.checkpoint import _foundation_section

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"policy directory not found: {path}")
        for name in REQUIRED_FILES:
            if not (path / name).exists():
                raise FileNotFoundError(f"{path} is not a policy directory: {name} is missing")
        config = read_json_object(path / "config.json")
        if config.get("format") != FORMAT:
            raise ValueError(f"{path / 'config.json'}: not a policy config (format={config.get('format')!r})")
        preprocessor = read_json_object(path / "preprocessor_config.json")
        stats = ActionStats.load(path / "action_stats.json")
        if stats.action_dim != config["action_dim"] or stats.num_bins != config["num_bins"]:
            raise ValueError(f"{path}: action_stats.json disagrees with config.json on action_dim/num_bins")
        fcfg = _foundation_section(OmegaConf.create(config["foundation"]))
        llm_config = LlamaConfig.from_dict(read_json_object(path / "llm_config.json"))
        llm_config._attn_implementation = fcfg.llm.attn_implementation or "sdpa"
        from lapa.policy.build import build_policy_model

        with no_init_weights():  # every weight comes from the file: skip the random initialisation
            llm = LlamaModel(llm_config)
            model = build_policy_model(fcfg, stats.action_dim, stats.num_bins, llm=llm)
        state = load_file(str(path / "model.safetensors"), device="cpu")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path / 'model.safetensors'} does not match the policy: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        model.to(device=device, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
        return cls(model, tokenizer, stats, preprocessor, config, path=path, device=device)

    # ------------------------------------------------------------------ properties
    @property
    def action_dim(self) -> int:
        return self.stats.action_dim

    @property
    def image_size(self) -> int:
        return int(self.preprocessor["image_size"])

    # ------------------------------------------------------------------ preprocessing
    def prepare_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Raw HWC uint8 / PIL images -> uint8 [B,3,S,S] exactly as demonstration samples became batches."""
        from lapa.data.transforms import resize_uint8

        p = self.preprocessor
        crop, resize = p["shard_crop"], p["shard_resize"]
        out = []
        for image in images:
            arr = _to_hwc_uint8(image)
            if arr.shape[:2] != (crop, crop):
                arr = _resize_crop_hwc(arr, resize, crop)
            arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()
            t = torch.from_numpy(arr).permute(2, 0, 1)[None]
            out.append(resize_uint8(t, p["loader_image_size"])[0])
        return torch.stack(out)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def logits_from_tensors(self, images_uint8: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """The training batch path: loader images [B,3,H,W] + instructions -> logits [B, A, bins]."""
        inputs = self.processor(images_uint8, list(texts))
        return self.model(*(inputs[k].to(self.device) for k in INPUT_NAMES)).float()

    def bins_from_tensors(self, images_uint8: torch.Tensor, texts: Sequence[str]) -> np.ndarray:
        return self.logits_from_tensors(images_uint8, texts).argmax(-1).cpu().numpy().astype(np.int64)

    def predict_bins(self, images: Sequence[Any], instructions: Sequence[str]) -> np.ndarray:
        if isinstance(instructions, str):
            raise TypeError("predict_bins takes a list of instructions; use predict() for one")
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
        if len(images) == 0:
            return np.zeros((0, self.action_dim), dtype=np.int64)
        return self.bins_from_tensors(self.prepare_images(images), instructions)

    def predict_batch(self, images: Sequence[Any], instructions: Sequence[str]) -> np.ndarray:
        """Continuous actions float32 [B, A] (bin centres, binary dimensions exact)."""
        return self.stats.dequantize(self.predict_bins(images, instructions))

    def predict(self, image: Any, instruction: str) -> np.ndarray:
        """One observation and instruction -> the continuous action float32 [A]."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("the instruction must be a non-empty string")
        return self.predict_batch([image], [instruction])[0]
