"""JPEG and array (de)serialisation for shard members: one implementation used by writers and readers."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np
import simplejpeg


def encode_jpeg(image_uint8_hwc: np.ndarray, quality: int = 95) -> bytes:
    """RGB uint8 [H,W,3] to JPEG. 4:4:4 chroma keeps thin coloured edges (grippers, pucks) intact."""
    image = np.ascontiguousarray(image_uint8_hwc)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"encode_jpeg needs uint8 [H,W,3], got {image.dtype} {tuple(image.shape)}")
    return simplejpeg.encode_jpeg(image, quality=int(quality), colorspace="RGB", colorsubsampling="444")


def decode_jpeg(data: bytes, out: np.ndarray | None = None) -> np.ndarray:
    """JPEG to RGB uint8 [H,W,3] (libjpeg-turbo; several times faster than PIL to float).

    ``out``: a writable C-contiguous uint8 array to decode into (a slot of a caller's batch buffer,
    sparing a copy); the image is returned as a view of it. ValueError when it is too small.
    """
    return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)


def decode_jpegs(frames: Sequence[bytes]) -> np.ndarray:
    """JPEGs of one size (the frames of one sample) to RGB uint8 [N,H,W,3], each decoded straight
    into its slot: no per-frame array and no stacking copy. ValueError when the sizes differ."""
    if not frames:
        raise ValueError("decode_jpegs needs at least one JPEG")
    height, width = simplejpeg.decode_jpeg_header(frames[0])[:2]
    out = np.empty((len(frames), height, width, 3), np.uint8)
    for i, data in enumerate(frames):
        image = decode_jpeg(data, out=out[i])
        if image.shape[:2] != (height, width):
            raise ValueError(
                f"frame {i} is {image.shape[0]}x{image.shape[1]}, frame 0 is {height}x{width}: "
                "the frames of one sample must have one size"
            )
    return out


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_member(ext: str, value) -> bytes:
    """Serialise one sample field by its extension (the webdataset convention)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    last = ext.rsplit(".", 1)[-1]
    if last == "json":
        return json.dumps(value, sort_keys=True, allow_nan=False).encode("utf-8")
    if last in ("txt", "text"):
        return str(value).encode("utf-8")
    if last == "npy":
        return encode_npy(value)
    if last in ("jpg", "jpeg") and isinstance(value, np.ndarray):
        return encode_jpeg(value)
    raise ValueError(f"cannot serialise field {ext!r} of type {type(value).__name__}; pass bytes")
