"""Short mp4 clips of rollouts, for looking at what a policy did."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from lapa.utils.io import atomic_path


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Encode uint8 [T, H, W, 3] frames (even H and W) as H.264 (MPEG-4 without x264), atomically."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"{path}: need uint8 [T,H,W,3] frames, got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise ValueError(f"{path}: frame size {h}x{w} must be even")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w") as container:
            if "libx264" in av.codecs_available:
                stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
            else:
                stream = container.add_stream("mpeg4", rate=rate)
                stream.bit_rate = int(w * h * float(fps) * 2)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts = i
                frame.time_base = Fraction(1) / rate
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
