"""A small, learnable demonstration set and the tiny artifacts around it, for tests and benchmarks.

Each frame is a flat colour with pixel noise; its action is a function of the colour (three
continuous dimensions from the RGB means, a binary gripper from whether red exceeds green), so
a model that reads the image can drive the loss down within a few dozen steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lapa.data.episode import Episode

INSTRUCTIONS = ("reach the red target", "push the block to the goal", "open the drawer")


def colour_action(rgb: np.ndarray) -> np.ndarray:
    """The action a flat frame of colour ``rgb`` (uint8 [..., 3]) demands: float32 [..., 4]."""
    c = (np.asarray(rgb, dtype=np.float32) - 128.0) / 128.0
    grip = np.where(c[..., 0] > c[..., 1], 1.0, -1.0)[..., None]
    return np.concatenate([c, grip], axis=-1).astype(np.float32)


def synthetic_episodes(
    num_episodes: int = 8, length: int = 12, size: int = 64, seed: int = 0
) -> list[Episode]:
    rng = np.random.default_rng(seed)
    episodes = []
    for e in range(num_episodes):
        colours = rng.integers(16, 240, size=(length, 3))
        frames = np.clip(colours[:, None, None, :] + rng.normal(0, 6, size=(length, size, size, 3)), 0, 255)
        episodes.append(
            Episode(
                episode_id=f"synthetic-{e:03d}",
                frames=frames.astype(np.uint8),
                fps=10.0,
                instruction=INSTRUCTIONS[e % len(INSTRUCTIONS)],
                task=f"task-{e % len(INSTRUCTIONS)}",
                actions=colour_action(colours.astype(np.uint8)),
                success=np.arange(length) == length - 1,
                source="synthetic",
            )
        )
    return episodes


def tiny_config(overrides: list[str] | None = None) -> Any:
    """The ``tiny`` experiment with finetuning settings that learn the synthetic task on a CPU."""
    from lapa.config import load_config

    base = [
        "data.sharding.val_fraction=0.3",
        "data.loader.num_workers=0",
        "data.loader.shuffle_buffer=16",
        "finetune.batch_size=8",
        "finetune.lr=1e-3",
        "finetune.warmup_steps=2",
        "finetune.min_lr=1e-4",
        "logging.log_every_steps=1",
    ]
    root = Path(__file__).resolve().parents[2] / "configs"
    return load_config("tiny", base + list(overrides or []), configs_root=root if root.is_dir() else None)


def make_tiny_inputs(root: str | Path, cfg: Any = None, num_episodes: int = 8) -> dict[str, Path]:
    """Demonstration shards, backbones and action statistics under ``root``; returns their paths."""
    from lapa.data.shards import write_demo_shards
    from lapa.finetune.action_stats import ActionStats
    from lapa.finetune.shard_actions import read_shard_actions
    from lapa.foundation.backbones import make_backbones

    cfg = cfg if cfg is not None else tiny_config()
    root = Path(root)
    shards, backbones, stats_path = root / "demos", root / "backbones", root / "action_stats.json"
    write_demo_shards(
        synthetic_episodes(num_episodes, size=cfg.data.sharding.crop), shards, cfg.data.sharding
    )
    for split in ("train", "val"):
        if not list((shards / split).glob("*.tar")):
            raise RuntimeError(f"the synthetic episodes left the {split} split empty; change num_episodes")
    make_backbones(cfg.foundation, list(INSTRUCTIONS), backbones)
    actions, _ = read_shard_actions(shards, "train")
    sc = cfg.finetune.stats
    ActionStats.from_actions(actions, sc.low_quantile, sc.high_quantile, sc.num_bins).save(stats_path)
    return {"shards": shards, "backbones": backbones, "action_stats": stats_path}


def make_tiny_foundation(
    cfg: Any, backbones: str | Path, out_dir: str | Path, num_tokens: int = 4, vocab_size: int = 8
) -> Path:
    """A foundation checkpoint in the stage-2 format (untrained latent head) built on ``backbones``."""
    import torch

    from lapa.foundation.backbones import load_backbones
    from lapa.foundation.checkpoint import save_foundation
    from lapa.foundation.heads import LatentActionHead
    from lapa.foundation.model import VLAModel

    torch.manual_seed(0)
    bb = load_backbones(backbones)
    head = LatentActionHead(bb.llm.config.hidden_size, num_tokens, vocab_size)
    model = VLAModel(
        cfg.foundation, num_queries=num_tokens, head=head, llm=bb.llm, vocab_size=bb.llm.config.vocab_size
    )
    model.vision.load_state_dict(bb.vision_state)
    save_foundation(model, bb.tokenizer, cfg.foundation, out_dir, {"step": 0})
    return Path(out_dir)


def make_untrained_policy(cfg: Any, inputs: dict[str, Path], out_dir: str | Path, seed: int = 0) -> Path:
    """A policy directory from the backbones with a random head (no training): for API tests."""
    import torch

    from lapa.finetune.action_stats import ActionStats
    from lapa.policy.model import policy_from_backbones
    from lapa.policy.policy import preprocessor_settings, save_policy

    torch.manual_seed(seed)
    stats = ActionStats.load(inputs["action_stats"])
    model, tokenizer, fcfg = policy_from_backbones(
        cfg.foundation, inputs["backbones"], stats.action_dim, stats.num_bins
    )
    pre = preprocessor_settings(fcfg, cfg.data.sharding, cfg.data.loader)
    save_policy(model, tokenizer, fcfg, stats, pre, out_dir, {"init": "untrained"})
    return Path(out_dir)
