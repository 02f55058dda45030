"""Input sources for sharding: video files, image-sequence folders, list files and LeRobot datasets.

A path is classified by what it is: a directory with ``meta/info.json`` is a LeRobot dataset, a
directory holding images is one image sequence, any other directory is searched for videos,
sequences and datasets; a ``.txt`` given as input lists paths (one a line, relative to it).
Inside directories ``<video>.txt`` files are instruction sidecars, not lists.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapa.data.episode import Episode
from lapa.data.images import resize_crop, to_uint8_rgb
from lapa.data.video import VideoReader, select_on_time_grid

VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mkv", ".mov"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is video | images | lerobot; ``episode_id`` names video/image episodes
    (the path relative to the input it was found under, without extension: it decides the split)."""

    path: str
    kind: str
    episode_id: str = ""

    @property
    def uid(self) -> str:
        """The source's identity for sample keys and duplicate checks: its real path (symlinks and
        relative spellings resolved, ``os.path.realpath``), extension included."""
        return os.path.realpath(self.path)


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _is_lerobot(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def _episode_id(path: Path, root: Path) -> str:
    """The path relative to the input it was found under, without extension (stem for single files)."""
    rel = path.relative_to(root) if path != root and root in path.parents else Path(path.name)
    return str(rel.with_suffix("")) if path.is_file() else str(rel)


def _scan_dir(folder: Path, root: Path) -> list[Source]:
    if _is_lerobot(folder):
        return [Source(str(folder), "lerobot")]
    if _image_files(folder):
        return [Source(str(folder), "images", _episode_id(folder, root.parent if folder == root else root))]
    found: list[Source] = []
    for child in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            found.extend(_scan_dir(child, root))
        elif child.suffix.lower() in VIDEO_EXTS:
            found.append(Source(str(child), "video", _episode_id(child, root)))
    return found


def discover_sources(
    inputs: list[str], on_error: str = "raise"
) -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand inputs into sources; returns (sources, [(path, reason) skipped]) under on_error=skip."""
    sources: list[Source] = []
    skipped: list[tuple[str, str]] = []

    def fail(path: str, reason: str, exc_type=ValueError) -> None:
        if on_error == "raise":
            raise exc_type(f"{path}: {reason}")
        skipped.append((path, reason))

    def visit(item: str, base: Path | None, depth: int) -> None:
        if any(c in item for c in "*?[") and not Path(item).exists():
            pattern = str(base / item) if base is not None and not Path(item).is_absolute() else item
            matches = sorted(glob.glob(pattern))
            if not matches:
                fail(pattern, "no files match this pattern", FileNotFoundError)
            for match in matches:
                visit(match, None, depth)
            return
        path = Path(item)
        if base is not None and not path.is_absolute():
            path = base / path
        if not path.exists():
            fail(str(path), "no such file or directory", FileNotFoundError)
        elif path.is_dir():
            found = _scan_dir(path, path)
            if not found:
                fail(str(path), "no videos, image sequences or LeRobot datasets in this directory")
            sources.extend(found)
        elif path.suffix.lower() == ".txt":
            if depth > 8:
                fail(str(path), "list files nest too deeply")
                return
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            entries = [ln for ln in lines if ln and not ln.startswith("#")]
            if not entries:
                fail(str(path), "list file names no paths")
            for entry in entries:
                visit(entry, path.parent, depth + 1)
        elif path.suffix.lower() in VIDEO_EXTS:
            sources.extend([Source(str(path), "video", path.stem)])
        else:
            fail(
                str(path),
                f"unsupported input (videos: {', '.join(sorted(VIDEO_EXTS))}; image folders; "
                ".txt lists; LeRobot directories)",
            )

    for item in inputs:
        visit(str(item), None, 0)
    return sources, skipped


def _sidecar_instruction(*candidates: Path) -> str | None:
    for path in candidates:
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            return text or None
    return None


def source_instruction(source: Source) -> str | None:
    """A video's ``<video>.txt``; an image folder's ``instruction.txt`` or ``<folder>.txt``."""
    p = Path(source.path)
    if source.kind == "images":
        return _sidecar_instruction(p / "instruction.txt", p.with_suffix(".txt"))
    return _sidecar_instruction(p.with_suffix(".txt"))


@dataclass
class SourceFrame:
    """A frame kept from a file source: ``index`` its number in the file (decode order or image
    order), ``time`` its presentation time in seconds, ``image`` uint8 [crop,crop,3]."""

    index: int
    time: float
    image: np.ndarray


def iter_video_frames(path: str, *, fps: float | None, resize: int, crop: int) -> Iterator[SourceFrame]:
    """Frames of a video sampled by presentation time at ``fps`` (every frame when None), as players
    show them (display rotation applied), shorter side to ``resize`` then the centre ``crop``.

    One decoded frame is held at a time. Raises ValueError naming the file when it cannot be
    opened or decoded or holds no frames.
    """
    with VideoReader(path) as reader:
        kept = select_on_time_grid(
            reader.frames(), fps, time_of=lambda f: f.time, end_of=lambda f: f.time + f.duration
        )
        n = 0
        for f in kept:
            n += 1
            yield SourceFrame(f.index, f.time, np.ascontiguousarray(resize_crop(f.rgb(), resize, crop)))
        if n == 0:
            raise ValueError(f"{path}: the video has no frames")


def read_image(file: Path) -> np.ndarray:
    """One image file as uint8 RGB [H,W,3] (16-bit and float images scaled by ``to_uint8_rgb``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            return to_uint8_rgb(img)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{file}: cannot read image: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from exc


def iter_image_folder_frames(
    path: str, *, fps: float | None, resize: int, crop: int
) -> Iterator[SourceFrame]:
    """Every image of a folder (natural order) is one frame, ``1/fps`` s apart (10 fps when None):
    the folder carries no timing, so all images are kept."""
    folder = Path(path)
    files = _image_files(folder)
    if not files:
        raise ValueError(f"{folder}: no images")
    dt = 1.0 / float(fps or 10.0)
    for i, file in enumerate(files):
        yield SourceFrame(i, i * dt, np.ascontiguousarray(resize_crop(read_image(file), resize, crop)))


def iter_file_frames(source: Source, *, fps: float | None, resize: int, crop: int) -> Iterator[SourceFrame]:
    if source.kind == "video":
        return iter_video_frames(source.path, fps=fps, resize=resize, crop=crop)
    if source.kind == "images":
        return iter_image_folder_frames(source.path, fps=fps, resize=resize, crop=crop)
    raise ValueError(f"{source.path}: not a file source ({source.kind})")


def _collect(source: Source, *, fps: float | None, resize: int, crop: int, rate: float | None) -> Episode:
    frames = list(iter_file_frames(source, fps=fps, resize=resize, crop=crop))
    if not frames:
        raise ValueError(f"{source.path}: no frames")
    return Episode(
        episode_id=source.episode_id,
        frames=np.stack([f.image for f in frames]),
        fps=float(rate),
        instruction=source_instruction(source),
        source=source.path,
        uid=source.uid,
        timestamps=np.array([f.time for f in frames], dtype=np.float64),
        meta={"native_frame_indices": [f.index for f in frames]},
    )


def read_video(path: str, episode_id: str, *, fps: float | None, resize: int, crop: int) -> Episode:
    """A whole video in memory (``iter_video_frames`` streams it): frames sampled by presentation
    time at ``fps`` (native when None), oriented, resized and cropped."""
    with VideoReader(path) as reader:
        native = reader.native_fps
    rate = fps if fps is not None else (native or 10.0)
    return _collect(Source(path, "video", episode_id), fps=fps, resize=resize, crop=crop, rate=rate)


def read_image_folder(path: str, episode_id: str, *, fps: float | None, resize: int, crop: int) -> Episode:
    """Every image of a folder (natural order) is one frame; instruction from ``instruction.txt`` or
    ``<folder>.txt``. The folder carries no timing, so all images are kept."""
    return _collect(Source(path, "images", episode_id), fps=fps, resize=resize, crop=crop, rate=fps or 10.0)


def read_file_source(source: Source, *, fps: float | None, resize: int, crop: int) -> Episode:
    if source.kind == "video":
        return read_video(source.path, source.episode_id, fps=fps, resize=resize, crop=crop)
    if source.kind == "images":
        return read_image_folder(source.path, source.episode_id, fps=fps, resize=resize, crop=crop)
    raise ValueError(f"{source.path}: not a file source ({source.kind})")
