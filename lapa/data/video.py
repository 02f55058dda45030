"""Decoding video with PyAV: presentation times, display orientation, time-grid sampling.

Frames are handed out one at a time in presentation order, so a reader holds only the frames it
still needs, whatever the length of the video.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from lapa.data.images import orient

T = TypeVar("T")


@dataclass
class DecodedFrame:
    """One decoded frame: ``index`` in decode order, ``time`` and ``duration`` in seconds."""

    index: int
    time: float
    duration: float
    frame: Any  # av.VideoFrame
    matrix: np.ndarray | None = None  # display matrix (FFmpeg layout) or None

    def rgb(self) -> np.ndarray:
        """uint8 [H,W,3] as a player shows it: any pixel format (8/10/16-bit, grey) through swscale,
        then the display matrix (rotation/flip) applied."""
        return orient(self.frame.to_ndarray(format="rgb24"), self.matrix)


def display_matrix(frame) -> np.ndarray | None:
    """The frame's 3x3 display matrix (FFmpeg's int32 layout) or None when it has none."""
    try:
        side = frame.side_data
    except AttributeError:
        return None
    for item in side:
        if getattr(item.type, "name", str(item.type)).endswith("DISPLAYMATRIX"):
            data = bytes(item)
            if len(data) >= 36:
                return np.frombuffer(data[:36], dtype=np.int32).copy()
    return None


class VideoReader:
    """A video file opened with PyAV; iterate ``frames()`` for ``DecodedFrame``s in presentation order.

    Errors name the file: ValueError when it cannot be opened or decoded or its data is cut short
    (a packet the demuxer reads incomplete), FileNotFoundError when it does not exist.
    """

    def __init__(self, path: str) -> None:
        import av

        self.path = str(path)
        try:
            self.container = av.open(self.path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.path}: no such file") from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise ValueError(f"{self.path}: cannot open video: {exc}") from exc
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.native_fps: float | None = float(rate) if rate else None
        self.decoded = 0

    def frames(self) -> Iterator[DecodedFrame]:
        import av

        default_dt = 1.0 / self.native_fps if self.native_fps else 0.1
        last_time: float | None = None
        # the matrix is read from a frame's side data when its rotation changes (in practice once):
        # reading side data for every frame makes PyAV's memory grow with the video
        rotation: int | None = None
        matrix: np.ndarray | None = None
        try:
            for frame in self._decoded():
                angle = getattr(frame, "rotation", 0)
                if angle != rotation:
                    rotation, matrix = angle, display_matrix(frame)
                i = self.decoded
                self.decoded += 1
                if frame.time is not None:
                    t = float(frame.time)
                else:  # no timestamps: assume the nominal rate
                    t = i * default_dt if last_time is None else last_time + default_dt
                duration = default_dt
                if frame.duration and frame.time_base is not None:
                    duration = float(frame.duration * frame.time_base)
                last_time = t
                yield DecodedFrame(i, t, duration, frame, matrix)
        except av.error.FFmpegError as exc:
            raise ValueError(f"{self.path}: cannot decode video after {self.decoded} frames: {exc}") from exc

    def _decoded(self):
        """PyAV frames in presentation order. A packet the demuxer reads short (a file cut off inside
        it) is an error: the threaded decoder would otherwise drop the frames around it without a
        word and the video would just end early."""
        for packet in self.container.demux(self.stream):
            if packet.is_corrupt:
                at = f" at {float(packet.pts * packet.time_base):.3f} s" if packet.pts is not None else ""
                raise ValueError(
                    f"{self.path}: the video data is cut short or corrupt{at} after {self.decoded} "
                    "decoded frames (an incomplete copy or download?)"
                )
            yield from packet.decode()

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def select_on_time_grid(
    items: Iterable[T],
    fps: float | None,
    time_of: Callable[[T], float],
    end_of: Callable[[T], float],
) -> Iterator[T]:
    """Sample a stream by presentation time: for each grid time ``t0 + k / fps`` the item nearest to it
    within half a grid step (each item at most once; ties go to the earlier item).

    ``t0`` is the first item's time; grid times at or after the end of the last item (its time
    plus the interval before it, or ``end_of`` for a single item) are not sampled. With
    ``fps=None`` every item is kept. Items must come in increasing time (decoders hand frames out
    in presentation order). A variable frame rate is handled like any other: only times count.
    """
    if fps is None:
        yield from items
        return
    if fps <= 0:
        raise ValueError(f"data.sharding.fps must be positive, got {fps}")
    step, tol = 1.0 / fps, 0.5 / fps
    eps = 1e-9
    t0: float | None = None
    k = 0
    best: T | None = None  # the nearest item so far to grid time k
    best_gap = math.inf
    last: T | None = None
    last_dt: float | None = None
    for item in items:
        t = time_of(item)
        if last is not None:
            last_dt = t - time_of(last)
        last = item
        if t0 is None:
            t0 = t
        while True:
            g = t0 + k * step
            gap = abs(t - g)
            if best is not None:
                if gap < best_gap - eps and gap <= tol + eps:
                    best, best_gap = item, gap  # this one is nearer to grid time k
                    break
                if t > g:  # the later items are farther still: grid time k is decided
                    yield best
                    best, best_gap = None, math.inf
                    k += 1
                    continue
                break  # an item before g that is not nearer: drop it
            if t < g - tol - eps:
                break  # before the window of grid time k: not sampled
            if gap <= tol + eps:
                best, best_gap = item, gap
                break
            # after the window of grid time k (a gap in the stream): move the grid on
            k = max(k + 1, math.ceil((t - tol - t0) / step - 1e-9))
    if best is not None and last is not None and t0 is not None:
        end = time_of(last) + last_dt if last_dt is not None else end_of(last)
        if t0 + k * step < end - 1e-6:
            yield best
