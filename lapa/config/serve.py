"""Configuration of the policy server (``lapa serve``): address, request limits, backend, batching.

A top-level section of its own: serving settings decide no artifact, so changing them never
reruns a finetune or an evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lapa.config.checks import at_least, in_range, one_of

BACKENDS = ("torch", "onnx")  # lapa.policy.policy.BACKENDS


@dataclass
class ServeConfig:
    """The HTTP policy server: requests beyond the limits get a 4xx answer, a full queue a 503."""

    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=in_range(1, 65535))
    # encoded size (after base64 decoding)
    max_image_bytes: int = field(default=8_000_000, metadata=at_least(1))
    # width x height of the decoded image
    max_image_pixels: int = field(default=4096 * 4096, metadata=at_least(1))
    max_instruction_chars: int = field(default=1000, metadata=at_least(1))
    # torch | onnx (LAPAPolicy.from_pretrained(..., backend=...))
    backend: str = field(default="torch", metadata=one_of(*BACKENDS))
    # intra-op threads of the network; 1 leaves the other cores to decoding requests
    threads: int = field(default=1, metadata=at_least(1))
    # concurrent requests answered by one forward pass; 1: no batching
    max_batch_size: int = field(default=16, metadata=at_least(1))
    # how long a batch waits for more requests once the model is free
    max_wait_ms: float = field(default=2.0, metadata=at_least(0))
    # requests waiting for the model; beyond it: 503
    max_queue: int = field(default=256, metadata=at_least(1))
