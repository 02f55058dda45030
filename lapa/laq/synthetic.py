"""A world with known discrete actions: a sprite moving in one of K directions per step.

Used to check that a LAQ recovers the true action from pixels (a collapsed or copying model
cannot) and as small real data for the pipeline. Frames are built directly as arrays.
"""

from __future__ import annotations

import numpy as np

# Compass directions, counter-clockwise from +x; the first K are used.
DIRECTIONS = np.array([(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1)], dtype=np.int64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour gradient with faint static texture: static content the decoder must copy."""
    a, b = rng.integers(0, 90, 3), rng.integers(0, 90, 3)
    ramp = np.linspace(0, 1, size)[None, :, None]
    if rng.random() < 0.5:
        ramp = ramp.transpose(1, 0, 2)
    bg = a * (1 - ramp) + b * ramp + rng.integers(-8, 9, (size, size, 1))
    return np.clip(bg, 0, 255).astype(np.uint8)


def _draw(bg: np.ndarray, x: int, y: int, sprite: int, colour: np.ndarray) -> np.ndarray:
    frame = bg.copy()
    frame[y : y + sprite, x : x + sprite] = colour
    return frame


def sprite_video(
    rng: np.random.Generator,
    length: int,
    size: int = 32,
    sprite: int = 5,
    step: int = 3,
    num_directions: int = 8,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames uint8 [T, S, S, 3], direction ids int64 [T], moves float32 [T, 2]).

    Entry t is the move from frame t to frame t+1; the last entry repeats the previous one.
    """
    if not 1 <= num_directions <= len(DIRECTIONS):
        raise ValueError(f"num_directions must be in 1..{len(DIRECTIONS)}, got {num_directions}")
    bg = _background(rng, size)
    colour = rng.integers(160, 256, 3).astype(np.uint8)
    hi = size - sprite
    x, y = (int(v) for v in rng.integers(0, hi + 1, 2))
    frames, ids = [_draw(bg, x, y, sprite, colour)], []
    for _ in range(length - 1):
        options = [
            k
            for k in range(num_directions)
            if 0 <= x + DIRECTIONS[k, 0] * step <= hi and 0 <= y + DIRECTIONS[k, 1] * step <= hi
        ]
        k = int(rng.choice(options))
        x, y = x + int(DIRECTIONS[k, 0]) * step, y + int(DIRECTIONS[k, 1]) * step
        frames.append(_draw(bg, x, y, sprite, colour))
        ids.append(k)
    ids.append(ids[-1] if ids else 0)
    ids = np.asarray(ids, dtype=np.int64)
    moves = (DIRECTIONS[ids] * step).astype(np.float32)
    return np.stack(frames), ids, moves


def sprite_pairs(
    num_pairs: int, size: int = 32, num_directions: int = 8, seed: int = 0, pairs_per_video: int = 8, **kw
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame_t uint8 [N, 3, S, S], frame_t1 uint8 [N, 3, S, S], direction ids [N])."""
    rng = np.random.default_rng(seed)
    ft, ft1, ids, count = [], [], [], 0
    while count < num_pairs:
        frames, dirs, _ = sprite_video(rng, pairs_per_video + 1, size, num_directions=num_directions, **kw)
        ft.append(frames[:-1])
        ft1.append(frames[1:])
        ids.append(dirs[:-1])
        count += pairs_per_video

    def to_chw(parts: list[np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(parts)[:num_pairs].transpose(0, 3, 1, 2))

    return to_chw(ft), to_chw(ft1), np.concatenate(ids)[:num_pairs]


def sprite_episodes(num_videos: int, length: int = 9, size: int = 32, num_directions: int = 8, seed: int = 0):
    """Episodes (``lapa.data.episode.Episode``) whose actions are the (dx, dy) moves."""
    from lapa.data.episode import Episode

    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_videos):
        frames, _, moves = sprite_video(rng, length, size, num_directions=num_directions)
        out.append(
            Episode(
                episode_id=f"sprite-{seed}-{i:05d}",
                frames=frames,
                fps=10.0,
                instruction="move the sprite",
                task="sprite",
                actions=moves,
                source="synthetic sprite world",
            )
        )
    return out
