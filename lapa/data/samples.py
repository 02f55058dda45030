"""Episodes into shard samples: frame selection by time, pairing, the train/val split and sample keys.

Pairs are made as frames stream in (``PairMaker``): only the frames a pair still needs are held,
so a source of any length is written with bounded memory.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from lapa.data.codec import encode_jpeg
from lapa.data.episode import Episode
from lapa.data.images import center_crop, resize_crop, resized_shape  # noqa: F401 (re-exported)
from lapa.data.video import select_on_time_grid

SPLITS = ("train", "val")


class EpisodeError(ValueError):
    """An episode that cannot become samples (no actions, NaN actions, no instruction...)."""


# ---------------------------------------------------------------------------------------------
# the split


def _unit_interval(episode_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(episode_id: str, seed: int, val_fraction: float) -> str:
    """The hash split of one episode: ``val`` when a hash of (seed, id) falls below ``val_fraction``."""
    return "val" if _unit_interval(episode_id, seed) < val_fraction else "train"


def assign_splits(
    episode_ids: list[str],
    tasks: list[str | None] | None = None,
    *,
    seed: int,
    val_fraction: float,
    train_per_task: int | None = None,
) -> list[str]:
    """The split of every episode, deterministic in (seed, ids[, tasks]).

    By default each episode goes by its hash (``split_of``: adding episodes does not move the
    others), except that with two or more episodes and ``val_fraction > 0`` neither split stays
    empty: the episode whose hash is lowest goes to ``val`` if none did, the highest to ``train``
    if none did. With ``train_per_task=N`` the episodes of each task (``tasks[i]``, None counting
    as one task) are ordered by hash and the first N train, the rest are held out; a task with N
    or fewer episodes raises ValueError, as it would have none held out.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"data.sharding.val_fraction must be in [0, 1], got {val_fraction}")
    u = [_unit_interval(i, seed) for i in episode_ids]
    if train_per_task is not None:
        if train_per_task < 1:
            raise ValueError(f"data.sharding.train_episodes_per_task must be >= 1, got {train_per_task}")
        tasks = list(tasks) if tasks is not None else [None] * len(episode_ids)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, task in enumerate(tasks):
            groups[task or ""].append(i)
        splits = ["train"] * len(episode_ids)
        for task, members in sorted(groups.items()):
            if len(members) <= train_per_task:
                raise ValueError(
                    f"task {task!r} has {len(members)} episodes: data.sharding.train_episodes_per_task="
                    f"{train_per_task} leaves none of them held out"
                )
            for rank, i in enumerate(sorted(members, key=lambda i: (u[i], episode_ids[i]))):
                splits[i] = "train" if rank < train_per_task else "val"
        return splits
    splits = ["val" if x < val_fraction else "train" for x in u]
    if len(episode_ids) >= 2 and val_fraction > 0:
        order = sorted(range(len(u)), key=lambda i: (u[i], episode_ids[i]))
        if "val" not in splits:
            splits[order[0]] = "val"
        if "train" not in splits:
            splits[order[-1]] = "train"
    return splits


# ---------------------------------------------------------------------------------------------
# keys

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
KEY_STEM_CHARS = 48
KEY_HASH_CHARS = 10


def key_stem(episode_id: str, uid: str) -> str:
    """``<readable id>-<hash>``: the episode id made tar-safe (no dots, which WebDataset reads as
    extension separators; letters, digits, ``_`` and ``-`` only; at most 48 characters) and the first
    10 hex digits of SHA-256 of ``uid`` (the source's real path, or dataset real path and episode index), so
    distinct sources never share keys however their names read (``a.v1.mp4`` / ``a_v1.mp4``)."""
    readable = _KEY_UNSAFE.sub("_", episode_id).strip("_")[:KEY_STEM_CHARS] or "x"
    digest = hashlib.sha256(uid.encode("utf-8")).hexdigest()[:KEY_HASH_CHARS]
    return f"{readable}-{digest}"


def sample_key(stem: str, frame_index: int) -> str:
    """The key of a sample: its source's ``key_stem`` and the frame number."""
    return f"{stem}_{frame_index:06d}"


def episode_stem(episode: Episode) -> str:
    return key_stem(episode.episode_id, episode.uid or episode.source or episode.episode_id)


# ---------------------------------------------------------------------------------------------
# frame selection and pairs


def sample_indices(num_frames: int, native_fps: float | None, target_fps: float | None) -> np.ndarray:
    """Frames kept when frames ``1/native_fps`` apart are sampled at ``target_fps`` (all when None)."""
    if not native_fps:
        return np.arange(num_frames)
    times = np.arange(num_frames) / float(native_fps)
    return _time_indices(times, 1.0 / float(native_fps), target_fps)


def _time_indices(times: np.ndarray, last_duration: float, fps: float | None) -> np.ndarray:
    n = len(times)
    if n == 0:
        return np.arange(0)
    end = float(times[-1]) + last_duration
    kept = select_on_time_grid(
        range(n), fps, time_of=lambda i: float(times[i]), end_of=lambda i: end if i == n - 1 else times[i]
    )
    return np.fromiter(kept, dtype=np.int64)


@dataclass
class PairFrame:
    """A kept frame waiting for its partner: native ``index``, ``time`` (s), JPEG bytes, its action
    (the executed one) and, when the source records it, the ``intended`` action (before noise)."""

    index: int
    time: float
    jpeg: bytes
    action: list | None
    ordinal: int = 0  # position among the kept frames
    intended: list | None = None


class PairMaker:
    """Frame pairs (t, t+k) from a stream of kept frames, holding only the frames pairs still need.

    With ``frame_offset_s`` the partner of frame t is the kept frame nearest ``time(t) + offset_s``,
    if it lies within ``tolerance_s`` (half a frame); otherwise the partner is ``frame_offset``
    kept frames later. ``push`` returns the samples a new frame completes, ``finish`` the rest.
    """

    def __init__(
        self,
        *,
        stem: str,
        meta: dict,
        frame_offset: int,
        frame_offset_s: float | None,
        tolerance_s: float,
    ) -> None:
        if frame_offset < 1:
            raise ValueError(f"data.sharding.frame_offset must be >= 1, got {frame_offset}")
        if frame_offset_s is not None and frame_offset_s <= 0:
            raise ValueError(f"data.sharding.frame_offset_s must be positive, got {frame_offset_s}")
        self.stem, self.meta = stem, meta
        self.k, self.offset_s, self.tol = frame_offset, frame_offset_s, tolerance_s
        self.window: deque[PairFrame] = deque()
        self.kept = 0
        self.pairs = 0
        self.unmatched = 0  # frames whose partner time fell in a gap of the stream
        self.last_time: float | None = None

    def _sample(self, a: PairFrame, b: PairFrame) -> dict:
        self.pairs += 1
        meta = {
            **self.meta,
            "frame_index": a.index,
            "frame_index_t1": b.index,
            "offset": b.ordinal - a.ordinal,
            "time_s": round(a.time, 6),
            "offset_s": round(b.time - a.time, 6),
            "action": a.action,
        }
        if a.intended is not None:
            meta["intended_action"] = a.intended
        return {"__key__": sample_key(self.stem, a.index), "t.jpg": a.jpeg, "t1.jpg": b.jpeg, "json": meta}

    def _resolve_first(self, final: bool) -> dict | None:
        first = self.window.popleft()
        target = first.time + self.offset_s
        best = min(self.window, key=lambda f: abs(f.time - target), default=None)
        if best is not None and abs(best.time - target) <= self.tol + 1e-9:
            return self._sample(first, best)
        if not final or (self.last_time is not None and target <= self.last_time):
            self.unmatched += 1
        return None

    def push(self, frame: PairFrame) -> list[dict]:
        if self.last_time is not None and frame.time <= self.last_time:
            raise ValueError(
                f"frame {frame.index} at {frame.time:.6f} s does not follow the previous one "
                f"({self.last_time:.6f} s): frames must come in presentation order"
            )
        frame.ordinal = self.kept
        self.kept += 1
        self.last_time = frame.time
        self.window.append(frame)
        out = []
        if self.offset_s is None:
            if len(self.window) > self.k:
                out.append(self._sample(self.window[0], self.window[self.k]))
                self.window.popleft()
            return out
        while self.window and frame.time > self.window[0].time + self.offset_s + self.tol:
            sample = self._resolve_first(final=False)
            if sample is not None:
                out.append(sample)
        return out

    def finish(self) -> list[dict]:
        out = []
        if self.offset_s is not None:
            while self.window:
                sample = self._resolve_first(final=True)
                if sample is not None:
                    out.append(sample)
        self.window.clear()
        return out

    def too_short_reason(self) -> str:
        if self.offset_s is not None:
            return f"too short: {self.kept} frames kept, none {self.offset_s} s after another"
        return f"too short: {self.kept} frames kept, offset {self.k} needs {self.k + 1}"


def clean_action(action) -> tuple[list | None, bool]:
    """(the action as a list, or None when missing or not finite; whether it was non-finite)."""
    if action is None:
        return None, False
    arr = np.asarray(action, dtype=np.float32).reshape(-1)
    if not np.isfinite(arr).all():
        return None, True
    return arr.tolist(), False


def iter_pair_samples(
    frames: Iterable[tuple[int, float, np.ndarray, object]],
    *,
    stem: str,
    meta: dict,
    frame_offset: int,
    frame_offset_s: float | None,
    tolerance_s: float,
    quality: int,
    stats: dict,
) -> Iterator[dict]:
    """Pair samples from kept frames ``(index, time, image uint8 [S,S,3], action or None[, intended
    action or None])``.

    Each frame is JPEG-encoded once, when it arrives. A pair's JSON holds frame t's ``action`` and,
    when given, its ``intended_action`` (non-finite ones become None like actions; they are not
    counted in ``nan_actions``). ``stats`` receives ``kept``, ``pairs``,
    ``nan_actions``, ``unmatched`` and, when no pair came out, ``too_short`` (the reason).
    """
    maker = PairMaker(
        stem=stem,
        meta=meta,
        frame_offset=frame_offset,
        frame_offset_s=frame_offset_s,
        tolerance_s=tolerance_s,
    )
    nan_actions = 0
    for index, time, image, action, *intended in frames:
        clean, was_nan = clean_action(action)
        nan_actions += was_nan
        frame = PairFrame(int(index), float(time), encode_jpeg(image, quality), clean)
        frame.intended = clean_action(intended[0])[0] if intended else None
        yield from maker.push(frame)
    yield from maker.finish()
    stats.update(kept=maker.kept, pairs=maker.pairs, nan_actions=nan_actions, unmatched=maker.unmatched)
    if maker.pairs == 0:
        stats["too_short"] = maker.too_short_reason()


@dataclass
class EpisodeSamples:
    """What one in-memory episode contributes to a shard directory (samples, or why it was skipped)."""

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


def pair_tolerance(fps: float | None, native_fps: float | None) -> float:
    """Half a frame at the sampled rate: how far a pair's partner may lie from ``t + frame_offset_s``."""
    rate = fps or native_fps or 10.0
    return 0.5 / float(rate)


def pair_samples(
    episode: Episode,
    *,
    frame_offset: int,
    resize: int,
    crop: int,
    quality: int,
    fps: float | None,
    split: str,
    frame_offset_s: float | None = None,
) -> EpisodeSamples:
    """Frame pairs of an in-memory episode: frames sampled by time at ``fps``, pairs (t, t+k) over the
    kept frames (k counts kept frames) or (t, nearest t + ``frame_offset_s``)."""
    if frame_offset < 1:
        raise ValueError(f"data.sharding.frame_offset must be >= 1, got {frame_offset}")
    out = EpisodeSamples(episode.episode_id, episode.source, split)
    times = episode.times()
    keep = _time_indices(times, 1.0 / float(episode.fps), fps)
    actions = _clean_actions(episode)
    out.action_dim = None if actions is None else int(actions.shape[1])
    intended = None if episode.intended_actions is None else np.asarray(episode.intended_actions, np.float32)
    native = episode.meta.get("native_frame_indices")  # frames sampled at decode time keep their numbering
    number = (lambda i: int(native[i])) if native is not None else int
    frames = (
        (
            number(i),
            times[i],
            resize_crop(episode.frames[i], resize, crop),
            None if actions is None else actions[i],
            None if intended is None else intended[i],
        )
        for i in keep
    )
    stats: dict = {}
    meta = {
        "video_id": episode.episode_id,
        "instruction": episode.instruction or "",
        "task": episode.task or "",
    }
    out.samples = list(
        iter_pair_samples(
            frames,
            stem=episode_stem(episode),
            meta=meta,
            frame_offset=frame_offset,
            frame_offset_s=frame_offset_s,
            tolerance_s=pair_tolerance(fps, episode.fps),
            quality=quality,
            stats=stats,
        )
    )
    if not out.samples:
        out.skipped_reason = stats["too_short"]
    if stats.get("nan_actions"):
        out.notes["nan_actions"] = stats["nan_actions"]
    if stats.get("unmatched"):
        out.notes["unmatched"] = stats["unmatched"]
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
    if episode.state is not None and not np.isfinite(np.asarray(episode.state, dtype=np.float32)).all():
        raise EpisodeError(f"{where} has non-finite state values")
    return actions


def demo_samples(episode: Episode, *, resize: int, crop: int, quality: int, split: str) -> EpisodeSamples:
    """One sample per frame: observation, instruction, the action taken there, success, and the
    robot state (``state.npy``, float32 [S]) when the episode carries one."""
    actions = check_demo_episode(episode)
    out = EpisodeSamples(episode.episode_id, episode.source, split, action_dim=int(actions.shape[1]))
    stem = episode_stem(episode)
    state = None if episode.state is None else np.asarray(episode.state, dtype=np.float32)
    if state is not None:
        state = state.reshape(len(state), -1)
        out.notes["state_dim"] = int(state.shape[1])
    times = episode.times()
    for t in range(episode.num_frames):
        meta = {
            "episode_id": episode.episode_id,
            "frame_index": t,
            "time_s": round(float(times[t]), 6),
            "task": episode.task or "",
            "success": bool(episode.success[t]) if episode.success is not None else None,
        }
        sample = {
            "__key__": sample_key(stem, t),
            "image.jpg": encode_jpeg(resize_crop(episode.frames[t], resize, crop), quality),
            "txt": episode.instruction,
            "action.npy": actions[t],
        }
        if state is not None:
            sample["state.npy"] = state[t]
        sample["json"] = meta
        out.samples.append(sample)
    return out


__all__ = [
    "SPLITS",
    "EpisodeError",
    "EpisodeSamples",
    "PairMaker",
    "assign_splits",
    "demo_samples",
    "iter_pair_samples",
    "key_stem",
    "pair_samples",
    "sample_indices",
    "sample_key",
    "split_of",
]
