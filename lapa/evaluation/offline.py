"""Offline evaluation of a policy on held-out demonstrations: metrics JSON and an action plot.

Images go through the same loader (without augmentation) and the same tensor path as training
validation, so the figures here are comparable with ``val/action_mse`` in the training logs.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lapa.evaluation.metrics import ActionMetrics
from lapa.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)


def collect_predictions(policy, shards_dir: str | os.PathLike, loader_cfg, split: str = "val") -> dict:
    """Run the policy over a split once and decode its logits every way.

    Returns ``pred_bins`` int64 [N, A] (arg-max bins), ``pred`` {decoding: float32 [N, A]} for
    every decoding in ``lapa.vla.heads.DECODINGS``, ``true`` float32 [N, A], ``episode_id`` and
    ``key`` [N]. Raises FileNotFoundError without shards, ValueError for an empty split.
    """
    from dataclasses import replace

    from omegaconf import OmegaConf

    from lapa.data.pipeline import list_shards, make_loader
    from lapa.vla.heads import DECODINGS, decode_actions

    shards = list_shards(shards_dir, split)
    if not shards:
        raise FileNotFoundError(f"no {split} shards in {shards_dir}")
    plain = OmegaConf.to_object(loader_cfg) if OmegaConf.is_config(loader_cfg) else loader_cfg
    plain = replace(plain, augment=False, image_size=policy.image_size)
    pred, true, episodes, keys = [], [], [], []
    decoded: dict[str, list[np.ndarray]] = {d: [] for d in DECODINGS}
    for batch in make_loader(shards, task="low_level", cfg=plain, train=False):
        logits = policy.logits_from_tensors(batch["image"], list(batch["text"]))
        pred.append(logits.argmax(-1).cpu().numpy().astype(np.int64))
        for d in DECODINGS:
            decoded[d].append(decode_actions(logits, policy.stats, d))
        true.append(np.asarray(batch["action"], dtype=np.float32))
        episodes.extend(str(e) for e in batch["episode_id"])
        keys.extend(str(k) for k in batch["key"])
    if not pred:
        raise ValueError(f"the {split} split of {shards_dir} holds no samples")
    return {
        "pred_bins": np.concatenate(pred),
        "pred": {d: np.concatenate(v) for d, v in decoded.items()},
        "true": np.concatenate(true),
        "episode_id": np.array(episodes),
        "key": np.array(keys),
    }


def plot_actions(
    records: dict, stats, path: Path, max_episodes: int = 3, decoding: str = "argmax"
) -> list[str]:
    """Predicted (``decoding``) against true action per dimension over the first episodes (key order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_episode: dict[str, list[int]] = defaultdict(list)
    for i, ep in enumerate(records["episode_id"]):
        by_episode[ep].append(i)
    chosen = sorted(by_episode)[:max_episodes]
    pred = records["pred"][decoding]
    dims = stats.action_dim
    fig, axes = plt.subplots(dims, 1, figsize=(8, 1.8 * dims + 0.6), sharex=True, squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for e, ep in enumerate(chosen):
        idx = sorted(by_episode[ep], key=lambda i: records["key"][i])
        t = np.arange(len(idx))
        c = colours[e % len(colours)]
        for d in range(dims):
            ax = axes[d, 0]
            ax.plot(t, records["true"][idx, d], color=c, lw=1.5, label=f"{ep} true" if d == 0 else None)
            ax.plot(t, pred[idx, d], color=c, lw=1, ls="--", label=f"{ep} predicted" if d == 0 else None)
    for d in range(dims):
        axes[d, 0].set_ylabel(f"dim {d}")
        axes[d, 0].grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step in episode")
    axes[0, 0].legend(fontsize=6, ncol=2, loc="upper right")
    fig.suptitle(f"predicted ({decoding}, dashed) vs true (solid) actions")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return chosen


def evaluate_offline(
    policy, shards_dir, out_dir, loader_cfg, plot_episodes: int = 3, split: str = "val", decoding=None
) -> dict:
    """Write ``metrics.json`` and ``actions.png`` into ``out_dir`` (atomically, as one directory).

    The headline figures decode with ``decoding`` (default: the policy's recorded one,
    ``policy.decoding``); ``mse_by_decoding`` gives the MSE of every decoding on the same logits.
    ``head`` records that decoding and the policy's head settings (``lapa.evaluation.head``).
    """
    from lapa.evaluation.head import head_settings
    from lapa.vla.heads import check_decoding

    decoding = check_decoding(decoding or policy.decoding)
    start = time.perf_counter()
    records = collect_predictions(policy, shards_dir, loader_cfg, split)
    by_decoding = {}
    for d, pred in records["pred"].items():
        acc = ActionMetrics(policy.stats)
        acc.update(records["pred_bins"], records["true"], pred_actions=pred)
        by_decoding[d] = acc.compute()
    metrics = by_decoding[decoding]
    metrics.update(
        {
            "decoding": decoding,
            "head": head_settings(policy, decoding),
            "mse_by_decoding": {d: m["mse"] for d, m in by_decoding.items()},
            "mse_per_dim_by_decoding": {d: m["mse_per_dim"] for d, m in by_decoding.items()},
            "split": split,
            "shards": str(shards_dir),
            "policy": str(getattr(policy, "path", "")),
            "num_episodes": int(len(set(records["episode_id"].tolist()))),
            "action_dim": policy.stats.action_dim,
            "mse_space": "actions normalised to [-1, 1] by the action statistics range",
            "seconds": round(time.perf_counter() - start, 3),
        }
    )
    with atomic_directory(out_dir) as tmp:
        metrics["plotted_episodes"] = plot_actions(
            records, policy.stats, tmp / "actions.png", plot_episodes, decoding
        )
        atomic_write_json(tmp / "metrics.json", metrics)
    log.info(
        "offline evaluation on %d samples: mse %.4f (%s), bin accuracy %.3f -> %s",
        metrics["num_samples"],
        metrics["mse"],
        decoding,
        metrics["bin_accuracy"],
        out_dir,
    )
    return metrics
