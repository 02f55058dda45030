"""Export the tensor part of a policy to ONNX: preprocessed images + token ids + mask -> logits.

Preprocessing (image resizing, tokenisation) and dequantisation stay outside the graph: they are
cheap, and keeping them in Python (``LAPAPolicy.prepare_images``, ``VLAProcessor``,
``ActionStats.dequantize``) means one implementation for every runtime. The graph is traced
with TorchScript-based export, which records the validation branch the model takes for
well-formed inputs; batch size and text length stay dynamic.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lapa.utils.io import atomic_path

log = logging.getLogger(__name__)

INPUT_NAMES = ["images", "input_ids", "attention_mask"]
OUTPUT_NAMES = ["logits"]


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.model(images, input_ids, attention_mask).float()


def example_inputs(policy, batch: int = 2, instructions: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Processor outputs for a batch of random images (texts of different lengths exercise padding)."""
    texts = instructions or ["pick up the block", "open the drawer on the left side"][:batch]
    texts = (texts * batch)[:batch]
    g = torch.Generator().manual_seed(0)
    size = policy.image_size
    images = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    return policy.processor(images, texts)


def export_onnx(policy, out_path: str | os.PathLike, opset: int = 17, fingerprint: str | None = None) -> Path:
    """Write the ONNX graph of ``policy.model`` atomically; returns the path.

    The graph's metadata records ``fingerprint`` (default: ``policy_fingerprint(policy.path)``
    when the policy was loaded from a directory), so a loader can tell the graph belongs to
    those weights. Needs the PyTorch backend (``policy.model``).
    """
    from lapa.policy.policy import FINGERPRINT_KEY, policy_fingerprint

    if policy.model is None:
        raise ValueError("export_onnx needs a policy loaded with backend='torch'")
    if Path(out_path).is_dir():
        raise IsADirectoryError(f"{out_path}: is a directory; give the .onnx file to write")
    if fingerprint is None and policy.path is not None:
        fingerprint = policy_fingerprint(policy.path)
    out_path = Path(out_path)
    wrapper = _LogitsOnly(policy.model).eval().to("cpu")
    inputs = example_inputs(policy)
    args = tuple(inputs[k] for k in INPUT_NAMES)
    dynamic = {
        "images": {0: "batch"},
        "input_ids": {0: "batch", 1: "text"},
        "attention_mask": {0: "batch", 1: "text"},
        "logits": {0: "batch"},
    }
    with atomic_path(out_path, suffix=".onnx") as tmp, torch.no_grad():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=UserWarning)  # constant-folding notes of the exporter
            torch.onnx.export(
                wrapper,
                args,
                str(tmp),
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes=dynamic,
                opset_version=opset,
                dynamo=False,
            )
        import onnx

        graph = onnx.load(str(tmp))
        if fingerprint is not None:
            onnx.helper.set_model_props(graph, {FINGERPRINT_KEY: fingerprint})
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    log.info("exported %s", out_path)
    return out_path


def onnx_logits(onnx_path: str | os.PathLike, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    """Run the exported graph with onnxruntime on CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {k: inputs[k].cpu().numpy() for k in INPUT_NAMES}
    return session.run(OUTPUT_NAMES, feed)[0]
