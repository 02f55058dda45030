"""Rebuild a LAQ model from a training checkpoint, with errors that name the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from lapa.laq.model import ARCH_KEYS, LAQModel


def load_laq(path, map_location="cpu") -> LAQModel:
    """The ``LAQModel`` (eval mode) of a ``lapa train-laq`` checkpoint; architecture from its hparams."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LAQ checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False, which would run whatever the file holds;
        # keep only what it found ("Unsupported global: ...", "Unsupported operand ...")
        text = str(exc)
        found = text.partition("WeightsUnpickler error:")[2].split("Check the documentation")[0]
        detail = " ".join(found.split()) or " ".join(text.split("\n", 1)[0].split())
        raise ValueError(
            f"{path}: not a readable checkpoint: not a file of tensors and plain values, the only "
            f"kind loaded ({detail})"
        ) from exc
    except Exception as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a LAQ checkpoint (no state_dict)")
    arch = (ckpt.get("hyper_parameters") or {}).get("arch")
    if not isinstance(arch, dict) or any(k not in arch for k in ARCH_KEYS):
        raise ValueError(f"{path}: not a LAQ checkpoint (no LAQ architecture in its hyper-parameters)")
    try:
        model = LAQModel(arch)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot rebuild the LAQ from its stored architecture: {exc}") from exc
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match the stored LAQ architecture: {exc}") from exc
    return model.eval()
