"""Shared fixtures: synthetic frames that carry their own index, and videos encoded from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lapa.sim.env import prepare_headless_rendering

# Test modules import metaworld (and so MuJoCo) at collection; choose the headless backend first.
prepare_headless_rendering()

CODE_BASE, CODE_STEP = 20, 9  # background grey level of frame i: 20 + 9 i (i < 26), robust to JPEG/x264


def make_coded_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 [n,H,W,3]: grey background coding the frame index, and a square moving one step per frame."""
    if n > 26:
        raise ValueError("the grey-level code holds 26 frames")
    frames = np.empty((n, height, width, 3), np.uint8)
    side = max(4, height // 4)
    top = (height - side) // 2
    for i in range(n):
        frames[i] = CODE_BASE + CODE_STEP * i
        x = (2 * i) % (width - side)
        frames[i, top : top + side, x : x + side] = (230, 40, 40)
    return frames


def read_frame_code(image) -> int:
    """The index coded in an image (HWC or CHW, numpy or torch), read from its top rows."""
    arr = np.asarray(image)
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    rows = max(1, arr.shape[0] // 8)
    return round((float(np.median(arr[:rows])) - CODE_BASE) / CODE_STEP)


def encode_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264") -> Path:
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12"}
        container.start_encoding()  # writes the header even when there are no frames
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def coded_frames():
    return make_coded_frames


@pytest.fixture
def frame_code():
    return read_frame_code


@pytest.fixture
def write_video():
    return encode_video
