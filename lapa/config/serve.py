"""Configuration of the policy server (``lapa serve``): address, request limits, backend, batching.

A top-level section of its own: serving settings decide no artifact, so changing them never
reruns a finetune or an evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """The HTTP policy server: requests beyond the limits get a 4xx answer, a full queue a 503."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_image_bytes: int = 8_000_000  # encoded size (after base64 decoding)
    max_image_pixels: int = 4096 * 4096  # width x height of the decoded image
    max_instruction_chars: int = 1000
    backend: str = "torch"  # torch | onnx (LAPAPolicy.from_pretrained(..., backend=...))
    threads: int = 1  # intra-op threads of the network; 1 leaves the other cores to decoding requests
    max_batch_size: int = 16  # concurrent requests answered by one forward pass; 1: no batching
    max_wait_ms: float = 2.0  # how long a batch waits for more requests once the model is free
    max_queue: int = 256  # requests waiting for the model; beyond it: 503
