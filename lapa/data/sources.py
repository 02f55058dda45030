"""Input sources for sharding: video files, image-sequence folders, list files and LeRobot datasets.

A path is classified by what it is: a directory with ``meta/info.json`` is a LeRobot dataset, a
directory holding images is one image sequence, any other directory is searched for videos,
sequences and datasets; a ``.txt`` given as input lists paths (one a line, relative to it).
Inside directories ``<video>.txt`` files are instruction sidecars, not lists.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lapa.data.episode import Episode
from lapa.data.samples import center_crop, resize_crop, resized_shape

VIDEO_EXTS = {".mp4", ".webm", ".avi", ".mkv", ".mov"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is video | images | lerobot; ``episode_id`` names video/image episodes."""

    path: str
    kind: str
    episode_id: str = ""


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


def read_video(path: str, episode_id: str, *, fps: float | None, resize: int, crop: int) -> Episode:
    """Decode a video with PyAV at ``fps`` (native when None), shorter side to ``resize``, centre ``crop``."""
    import av

    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"{path}: cannot open video: {exc}") from exc
    frames: list[np.ndarray] = []
    kept: list[int] = []
    try:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        native = float(rate) if rate else None
        size: tuple[int, int] | None = None
        first_time: float | None = None
        last_bucket = -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else (i / native if native else float(i))
                if first_time is None:
                    first_time = t
                if fps is not None and native and fps < native:
                    bucket = int(np.floor((t - first_time) * fps + 1e-3))
                    if bucket <= last_bucket:
                        continue
                    last_bucket = bucket
                if size is None:
                    size = resized_shape(frame.height, frame.width, resize)
                image = frame.to_ndarray(format="rgb24", width=size[1], height=size[0], interpolation="AREA")
                frames.append(np.ascontiguousarray(center_crop(image, crop)))
                kept.append(i)
        except av.error.FFmpegError as exc:
            raise ValueError(f"{path}: cannot decode video after {len(frames)} frames: {exc}") from exc
    finally:
        container.close()
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    out_fps = fps if fps is not None and native and fps < native else (native or fps or 10.0)
    p = Path(path)
    return Episode(
        episode_id=episode_id,
        frames=np.stack(frames),
        fps=float(out_fps),
        instruction=_sidecar_instruction(p.with_suffix(".txt")),
        source=path,
        meta={"native_fps": native, "native_frame_indices": kept},
    )


def read_image_folder(path: str, episode_id: str, *, fps: float | None, resize: int, crop: int) -> Episode:
    """Every image of a folder (natural order) is one frame; instruction from ``instruction.txt`` or
    ``<folder>.txt``. The folder carries no timing, so all images are kept."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(path)
    frames = []
    for file in _image_files(folder):
        try:
            with Image.open(file) as img:
                image = np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{file}: cannot read image: {exc}") from exc
        frames.append(np.ascontiguousarray(resize_crop(image, resize, crop)))
    if not frames:
        raise ValueError(f"{folder}: no images")
    return Episode(
        episode_id=episode_id,
        frames=np.stack(frames),
        fps=float(fps or 10.0),
        instruction=_sidecar_instruction(folder / "instruction.txt", folder.with_suffix(".txt")),
        source=str(folder),
    )


def read_file_source(source: Source, *, fps: float | None, resize: int, crop: int) -> Episode:
    if source.kind == "video":
        return read_video(source.path, source.episode_id, fps=fps, resize=resize, crop=crop)
    if source.kind == "images":
        return read_image_folder(source.path, source.episode_id, fps=fps, resize=resize, crop=crop)
    raise ValueError(f"{source.path}: not a file source ({source.kind})")
