"""Episodes into shard samples: frame selection, resize/crop, pairing, the train/val split and keys."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np

from lapa.data.codec import encode_jpeg
from lapa.data.episode import Episode
from lapa.data.images import center_crop, resize_crop, resized_shape  # noqa: F401 (re-exported)

SPLITS = ("train", "val")


class EpisodeError(ValueError):
    """An episode that cannot become samples (no actions, NaN actions, no instruction...)."""


def split_of(episode_id: str, seed: int, val_fraction: float) -> str:
    """Deterministic split from a hash of (seed, id): adding episodes never moves the others."""
    digest = hashlib.sha256(f"{seed}:{episode_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(episode_id: str, frame_index: int) -> str:
    """A tar-safe key: webdataset splits member names at the first dot, so ids lose dots and slashes."""
    return f"{_KEY_UNSAFE.sub('_', episode_id)}_{frame_index:06d}"


def sample_indices(num_frames: int, native_fps: float | None, target_fps: float | None) -> np.ndarray:
    """Frames kept when resampling ``native_fps`` to ``target_fps`` (all when either is None)."""
    if target_fps is None or not native_fps or target_fps >= native_fps:
        return np.arange(num_frames)
    step = native_fps / target_fps
    count = int(math.floor((num_frames - 1) / step)) + 1 if num_frames else 0
    return np.unique(np.round(np.arange(count) * step).astype(np.int64).clip(0, max(num_frames - 1, 0)))


@dataclass
class EpisodeSamples:
    """What one episode contributes to a shard directory (encoded samples, or why it was skipped)."""

    episode_id: str
    source: str
    split: str
    samples: list[dict] = field(default_factory=list)
    action_dim: int | None = None
    skipped_reason: str | None = None
    notes: dict = field(default_factory=dict)


def _clean_actions(episode: Episode) -> np.ndarray | None:
    if episode.actions is None:
        return None
    actions = np.asarray(episode.actions, dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[:, None]
    return actions


def pair_samples(
    episode: Episode,
    *,
    frame_offset: int,
    resize: int,
    crop: int,
    quality: int,
    fps: float | None,
    split: str,
) -> EpisodeSamples:
    """Frame pairs (t, t+k) over the frames kept at ``fps``; k counts kept frames."""
    if frame_offset < 1:
        raise ValueError(f"data.sharding.frame_offset must be >= 1, got {frame_offset}")
    out = EpisodeSamples(episode.episode_id, episode.source, split)
    keep = sample_indices(episode.num_frames, episode.fps, fps)
    if len(keep) <= frame_offset:
        out.skipped_reason = (
            f"too short: {len(keep)} frames kept, offset {frame_offset} needs {frame_offset + 1}"
        )
        return out
    actions = _clean_actions(episode)
    out.action_dim = None if actions is None else int(actions.shape[1])
    native = episode.meta.get("native_frame_indices")  # videos sampled at decode time keep their numbering
    number = (lambda i: int(native[i])) if native is not None else int
    encoded = [encode_jpeg(resize_crop(episode.frames[i], resize, crop), quality) for i in keep]
    nan_actions = 0
    for j in range(len(keep) - frame_offset):
        t, t1 = int(keep[j]), int(keep[j + frame_offset])
        action = None
        if actions is not None:
            if np.isfinite(actions[t]).all():
                action = actions[t].tolist()
            else:
                nan_actions += 1
        meta = {
            "video_id": episode.episode_id,
            "frame_index": number(t),
            "frame_index_t1": number(t1),
            "offset": frame_offset,
            "instruction": episode.instruction or "",
            "task": episode.task or "",
            "action": action,
        }
        out.samples.append(
            {
                "__key__": sample_key(episode.episode_id, number(t)),
                "t.jpg": encoded[j],
                "t1.jpg": encoded[j + frame_offset],
                "json": meta,
            }
        )
    if nan_actions:
        out.notes["nan_actions"] = nan_actions
    return out


def check_demo_episode(episode: Episode) -> np.ndarray:
    """The episode's actions as float32 [T,A], or an EpisodeError naming the episode and its source."""
    where = f"episode {episode.episode_id!r}" + (f" ({episode.source})" if episode.source else "")
    actions = _clean_actions(episode)
    if actions is None:
        raise EpisodeError(f"{where} has no actions: demonstration shards need them")
    if not np.isfinite(actions).all():
        bad = int((~np.isfinite(actions).all(axis=1)).sum())
        raise EpisodeError(f"{where} has non-finite actions at {bad} frames")
    if not (episode.instruction or "").strip():
        raise EpisodeError(f"{where} has no instruction: demonstration shards need one")
    return actions


def demo_samples(episode: Episode, *, resize: int, crop: int, quality: int, split: str) -> EpisodeSamples:
    """One sample per frame: observation, instruction, the action taken there and success."""
    actions = check_demo_episode(episode)
    out = EpisodeSamples(episode.episode_id, episode.source, split, action_dim=int(actions.shape[1]))
    for t in range(episode.num_frames):
        meta = {
            "episode_id": episode.episode_id,
            "frame_index": t,
            "task": episode.task or "",
            "success": bool(episode.success[t]) if episode.success is not None else None,
        }
        out.samples.append(
            {
                "__key__": sample_key(episode.episode_id, t),
                "image.jpg": encode_jpeg(resize_crop(episode.frames[t], resize, crop), quality),
                "txt": episode.instruction,
                "action.npy": actions[t],
                "json": meta,
            }
        )
    return out
