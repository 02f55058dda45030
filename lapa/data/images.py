"""The one image module: any camera image to uint8 RGB, one resampler, centre crop, display orientation.

Every place a picture enters lapa (video and image-folder sources, LeRobot frames, the loader's
resize, the policy's preprocessing, the VLA processor, the policy server) goes through these
functions, so a frame is resampled the same way in pretraining pairs, demonstrations and at
deployment.

Conventions: numpy images are channels-last (HWC, or [N,H,W,C] batches), torch tensors are
channels-first ([C,H,W] or [N,C,H,W]); both are uint8 once through ``to_uint8_rgb``.

The resampler is bilinear with antialiasing (a triangle filter widened by the scale factor when
shrinking, as PIL's ``BILINEAR``), computed by ``torch.nn.functional.interpolate`` on uint8. Its
name, ``RESAMPLER``, is recorded in shard ``info.json`` and the policy's
``preprocessor_config.json``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLER = "bilinear-antialias"
RESAMPLER_DETAIL = (
    "torch.nn.functional.interpolate(mode='bilinear', antialias=True, align_corners=False) on uint8; "
    "PIL's BILINEAR filter to within one grey level"
)


class ImageFormatError(ValueError, TypeError):
    """An image lapa cannot turn into uint8 RGB (dtype, range, shape or mode); a ValueError
    (and a TypeError, for callers that caught the earlier uint8-only check)."""


_PIL_8BIT_MODES = {
    "1",
    "L",
    "LA",
    "La",
    "P",
    "PA",
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "CMYK",
    "YCbCr",
    "LAB",
    "HSV",
}
_PIL_16BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _from_pil(image: Any) -> np.ndarray:
    mode = image.mode
    if mode in _PIL_16BIT_MODES:
        return np.asarray(image).astype(np.uint16)
    if mode == "I":  # 32-bit integer mode: how Pillow often opens 16-bit greyscale PNGs
        arr = np.asarray(image)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageFormatError(
                f"PIL image of mode 'I' holds values in [{lo}, {hi}], outside 16 bits: cannot scale to 8 bits"
            )
        return arr.astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode in _PIL_8BIT_MODES:
        return np.asarray(image.convert("RGB"))
    raise ImageFormatError(f"unsupported PIL image mode {mode!r}")


def _channels_last(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim != 3:
        raise ImageFormatError(f"an image must be HWC, CHW or HW, got shape {tuple(arr.shape)}")
    if arr.shape[-1] in (1, 3, 4):
        return arr
    if arr.shape[0] in (1, 3, 4):
        return arr.transpose(1, 2, 0)
    raise ImageFormatError(
        f"an image needs 1 (grey), 3 (RGB) or 4 (RGBA) channels, got shape {tuple(arr.shape)}"
    )


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size:
            if not np.isfinite(arr).all():
                raise ImageFormatError("a float image holds NaN or infinite values")
            lo, hi = float(arr.min()), float(arr.max())
            if lo < -1e-6 or hi > 1.0 + 1e-6:
                raise ImageFormatError(
                    f"a float image must hold values in [0, 1], got [{lo:.4g}, {hi:.4g}] "
                    "(scale it, or pass uint8 / uint16)"
                )
        return np.round(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageFormatError(
        f"unsupported image dtype {arr.dtype}: pass uint8, uint16 or float in [0, 1] "
        "(or a PIL image of an 8- or 16-bit mode)"
    )


def to_uint8_rgb(image: Any) -> np.ndarray:
    """Any camera image to a contiguous, writable uint8 RGB array [H, W, 3].

    Accepts numpy arrays and torch tensors (HWC, CHW or HW) and PIL images. Grey is repeated to
    three channels and the alpha of RGBA dropped. uint8 passes through; uint16 (and PIL's 16-bit
    modes ``I;16``/``I;16B``/``I;16L``, and mode ``I`` holding 16-bit values) is scaled by
    255/65535; float in [0, 1] (PIL mode ``F`` too) is scaled by 255; both are rounded.

    Raises ValueError for other dtypes (signed or wider integers, bool), floats outside [0, 1]
    or non-finite, shapes that are not one image, empty images and unknown PIL modes.
    """
    if isinstance(image, np.ndarray):
        arr = image
    elif _is_tensor(image):
        arr = image.detach().cpu().numpy()
    elif hasattr(image, "mode") and hasattr(image, "getbands"):
        arr = _from_pil(image)
    else:
        raise ImageFormatError(
            f"unsupported image type {type(image).__name__}: pass a numpy array, tensor or PIL image"
        )
    arr = _channels_last(np.asarray(arr))
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageFormatError(f"empty image of shape {tuple(arr.shape)}")
    arr = _scale_to_uint8(arr)
    channels = arr.shape[-1]
    if channels == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif channels == 4:
        arr = arr[..., :3]
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()  # PIL's buffers are read-only


# ---------------------------------------------------------------------------------------------
# geometry


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) with the shorter side scaled to ``shorter`` and the aspect ratio kept."""
    if shorter < 1:
        raise ValueError(f"resize size must be >= 1, got {shorter}")
    scale = shorter / min(height, width)
    return max(shorter, round(height * scale)), max(shorter, round(width * scale))


def resample(images, height: int, width: int, *, contiguous: bool = True):
    """The resampler: uint8 images to ``height`` x ``width`` (bilinear, antialiased when shrinking).

    numpy HWC [H,W,C] or [N,H,W,C] in, numpy out; torch [C,H,W] or [N,C,H,W] in, torch out (on
    the input's device). Returns the input itself when the size already matches. ``contiguous=False``
    (torch) returns the same values in the resampler's channels-last memory layout, sparing a copy
    to callers that copy the result anyway (a loader's collate, a float conversion).
    """
    import torch
    import torch.nn.functional as F

    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ImageFormatError(
                f"resample needs uint8 [H,W,C] or [N,H,W,C], got {images.dtype} {images.shape}"
            )
        if images.shape[-3:-1] == (height, width):
            return images
        arr = np.ascontiguousarray(images)
        x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        x = (x[None] if x.ndim == 3 else x).permute(0, 3, 1, 2)  # channels-last strides: the fast path
        out = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        out = out.permute(0, 2, 3, 1).numpy()
        return np.ascontiguousarray(out[0] if images.ndim == 3 else out)
    if not _is_tensor(images):
        raise ImageFormatError(f"resample takes numpy arrays or torch tensors, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim not in (3, 4):
        raise ImageFormatError(
            f"resample needs uint8 [C,H,W] or [N,C,H,W], got {images.dtype} {tuple(images.shape)}"
        )
    if tuple(images.shape[-2:]) == (height, width):
        return images
    x = images[None] if images.ndim == 3 else images
    x = x.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    if contiguous:
        out = out.contiguous()
    return out[0] if images.ndim == 3 else out


def _hw(images) -> tuple[int, int]:
    if isinstance(images, np.ndarray):
        return int(images.shape[-3]), int(images.shape[-2])
    return int(images.shape[-2]), int(images.shape[-1])


def resize_shorter(images, size: int):
    """Shorter side to ``size``, aspect ratio kept (numpy HWC or torch CHW, single or batched)."""
    h, w = _hw(images)
    return resample(images, *resized_shape(h, w, size))


def center_crop(images, size: int):
    """The centre ``size`` x ``size`` square (numpy HWC / torch CHW, single or batched); a view."""
    h, w = _hw(images)
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a {h}x{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    if isinstance(images, np.ndarray):
        return images[..., top : top + size, left : left + size, :]
    return images[..., top : top + size, left : left + size]


def resize_crop(images, resize: int, crop: int):
    """Shorter side to ``resize``, then the centre ``crop`` square; ``crop``-sized squares pass as they are.

    This is the shard writer's step and the policy's first step on a raw camera frame.
    """
    h, w = _hw(images)
    if (h, w) == (crop, crop):
        return images
    if min(h, w) != resize:
        images = resize_shorter(images, resize)
    return center_crop(images, crop)


def resize_square(images, size: int, *, contiguous: bool = True):
    """Resize to ``size`` x ``size`` (the loader's step from the stored square to the model's size);
    ``contiguous`` as in ``resample``."""
    return resample(images, size, size, contiguous=contiguous)


# ---------------------------------------------------------------------------------------------
# orientation


def display_rotation(matrix) -> tuple[int, bool, bool]:
    """(clockwise degrees in {0, 90, 180, 270}, hflip, vflip) of a 3x3 display matrix (FFmpeg layout).

    Follows FFmpeg's own autorotation: the angle is ``-av_display_rotation_get`` rounded; a matrix
    with a reflection adds a flip. Angles that are not a multiple of 90 degrees raise ValueError.
    """
    m = np.asarray(matrix, dtype=np.float64).reshape(9)
    sx, sy = np.hypot(m[0], m[3]), np.hypot(m[1], m[4])
    if sx == 0 or sy == 0:
        raise ValueError(f"degenerate display matrix {m.tolist()}")
    ccw = -np.degrees(np.arctan2(m[1] / sy, m[0] / sx))  # av_display_rotation_get (PyAV's frame.rotation)
    theta = -round(ccw)
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    theta = int(theta) % 360
    if theta not in (0, 90, 180, 270):
        raise ValueError(f"display rotation of {theta} degrees is not a multiple of 90")
    # FFmpeg's choice of filters: a reflected matrix turns a rotation into a transpose or a flip
    hflip = vflip = False
    if theta == 90:
        vflip = m[3] > 0  # transpose=cclock_flip instead of clock
    elif theta == 180:
        hflip, vflip = m[0] < 0, m[4] < 0
    elif theta == 270:
        vflip = m[3] < 0  # transpose=clock_flip instead of cclock
    else:
        vflip = m[4] < 0
    return theta, bool(hflip), bool(vflip)


def orient(image: np.ndarray, matrix) -> np.ndarray:
    """Apply a display matrix to an HWC image: the frame as players show it (FFmpeg's autorotate).

    ``matrix`` is None (identity) or 9 numbers in FFmpeg's layout. 90 degrees maps a stored
    320x240 (WxH) frame to a 240x320 portrait one, turned clockwise.
    """
    if matrix is None:
        return image
    theta, hflip, vflip = display_rotation(matrix)
    if theta == 90:
        # FFmpeg: transpose=clock, or cclock_flip (a plain transpose) for a reflected matrix
        out = image.transpose(1, 0, 2) if vflip else np.rot90(image, k=-1)
    elif theta == 270:
        # FFmpeg: transpose=cclock, or clock_flip (the anti-transpose) for a reflected matrix
        out = np.rot90(image, k=-1)[::-1] if vflip else np.rot90(image, k=1)
    elif theta == 180:  # hflip and vflip together are the half turn
        out = image[:, ::-1] if hflip else image
        out = out[::-1] if vflip else out
    else:
        out = image[::-1] if vflip else image
    return np.ascontiguousarray(out)
