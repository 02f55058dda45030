"""Synthetic latent-labelled shard directories (same layout as ``lapa label``) for tests and benchmarks."""

from __future__ import annotations

import os

import numpy as np

from lapa.data.codec import encode_jpeg

INSTRUCTIONS = (
    "reach the red target",
    "push the puck to the goal",
    "open the top drawer of the cabinet slowly and carefully, keeping the gripper level",
    "pick up the block",
    "press the button",
)


def write_labelled_shards(
    out_dir: str | os.PathLike,
    *,
    num_train: int,
    num_val: int = 0,
    num_tokens: int = 4,
    vocab_size: int = 8,
    image_size: int = 64,
    samples_per_shard: int = 16,
    seed: int = 0,
    instructions: tuple[str, ...] = INSTRUCTIONS,
    info_overrides: dict | None = None,
) -> dict:
    """Random images (smooth colour fields) with random latent labels; returns the info dict."""
    from lapa.data.shards import ShardWriter, write_shard_dir_metadata

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    counts = {}
    for split, n in (("train", num_train), ("val", num_val)):
        counts[split] = n
        if n == 0:
            continue
        with ShardWriter(out_dir, split, "latent", samples_per_shard=samples_per_shard) as writer:
            for i in range(n):
                coef = rng.uniform(-1, 1, size=(3, 3))
                image = np.stack(
                    [128 + 120 * np.sin(3 * (c[0] * xx + c[1] * yy) + 6 * c[2]) for c in coef], -1
                )
                writer.write(
                    {
                        "__key__": f"{split}{i:06d}",
                        "image.jpg": encode_jpeg(image.clip(0, 255).astype(np.uint8)),
                        "txt": instructions[i % len(instructions)],
                        "latent.npy": rng.integers(0, vocab_size, size=num_tokens).astype(np.int64),
                        "json": {"video_id": f"v{i}", "frame_index": 0, "action": None},
                    }
                )
    return write_shard_dir_metadata(
        out_dir,
        kind="latent",
        counts=counts,
        image_size=image_size,
        action_dim=None,
        **{"num_tokens": num_tokens, "vocab_size": vocab_size, **(info_overrides or {})},
    )
