"""Writing shard directories: the one writer (``ShardDirBuilder`` over atomic ``ShardWriter`` tars),
the manifest and ``info.json``, and in-memory episodes into shard directories.

A shard directory is ``train/`` + ``val/`` folders of tars, ``manifest.parquet`` (every sample
written and every source skipped, with the reason) and ``info.json``. It is built under a
temporary name (``atomic_directory``) so a killed run leaves nothing that looks complete.
Sources on disk go through ``lapa.data.build`` (streamed, resumable), which writes with the same
builder.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from lapa.config.data import ShardingConfig
from lapa.data.codec import encode_jpeg, encode_member
from lapa.data.episode import Episode
from lapa.data.images import RESAMPLER
from lapa.data.samples import (
    SPLITS,
    EpisodeSamples,
    assign_splits,
    demo_samples,
    episode_stem,
    pair_samples,
)
from lapa.utils.io import atomic_directory, atomic_write_json

__all__ = [
    "ShardDirBuilder",
    "ShardWriter",
    "encode_jpeg",
    "episode_samples",
    "write_demo_shards",
    "write_manifest",
    "write_pair_shards",
    "write_shard_dir_metadata",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["status", "split", "shard", "key", "episode_id", "frame_index", "source", "reason"]
MANIFEST_ROWS_PER_GROUP = 10_000


class ShardWriter:
    """Atomic tar shard writer: <out_dir>/<split>/<prefix>-<split>-[CCCCCC-]NNNNNN.tar (C: the chunk of
    a resumable build), rolled over at samples_per_shard samples or max_shard_bytes; each tar is
    written as a temp file and renamed on close. Members get fixed metadata (mtime 0, mode 644),
    so the same samples give byte-identical tars."""

    def __init__(
        self,
        out_dir,
        split: str,
        prefix: str,
        samples_per_shard: int = 1000,
        max_shard_bytes: int = 2_000_000_000,
        chunk: int | None = None,
        check_keys: bool = True,
    ):
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        if max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
        self.dir = Path(out_dir) / split  # made with the first shard: no sample, no folder
        self.split, self.prefix, self.chunk = split, prefix, chunk
        self.samples_per_shard, self.max_shard_bytes = samples_per_shard, max_shard_bytes
        self.paths: list[str] = []
        self.shard_index = 0
        self.count = 0  # samples in the open shard
        self.total = 0
        self._tar: tarfile.TarFile | None = None
        self._fh = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._keys: set[str] | None = set() if check_keys else None  # None: keys unique by construction

    @property
    def current_path(self) -> str | None:
        """Final path of the shard being written (the sample just written went there)."""
        return None if self._final is None else str(self._final)

    def _open(self) -> None:
        chunk = "" if self.chunk is None else f"{self.chunk:06d}-"
        name = f"{self.prefix}-{self.split}-{chunk}{self.shard_index:06d}.tar"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._final = self.dir / name
        self._tmp = self.dir / f".{name}.tmp"
        self._fh = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def _finish(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self._final)
        self.paths.append(str(self._final))
        self._tar = self._fh = self._tmp = None
        self.shard_index += 1

    def write(self, sample: dict) -> None:
        key = sample.get("__key__")
        if not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be non-empty without '.' or '/'")
        if self._keys is not None and key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.dir}")
        members = [
            (f"{key}.{ext}", encode_member(ext, value))
            for ext, value in sample.items()
            if not ext.startswith("__")
        ]
        if not members:
            raise ValueError(f"sample {key!r} has no fields")
        size = sum(512 + len(data) + 511 for _, data in members)
        if self._tar is not None and (
            self.count >= self.samples_per_shard
            or (self.count and self._fh.tell() + size > self.max_shard_bytes)
        ):
            self._finish()
        if self._tar is None:
            self._open()
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._tar.members.clear()  # tarfile keeps every header it wrote: memory would grow with the tar
        if self._keys is not None:
            self._keys.add(key)
        self.count += 1
        self.total += 1

    def close(self) -> list[str]:
        self._finish()
        return list(self.paths)

    def abort(self) -> None:
        """Drop the open shard's temporary file (used when the build fails)."""
        if self._tar is not None:
            try:
                self._tar.close()
                self._fh.close()
            finally:
                self._tmp.unlink(missing_ok=True)
                self._tar = self._fh = self._tmp = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------------------------
# manifest and info.json


def _manifest_table(rows: list[dict]):
    import pandas as pd
    import pyarrow as pa

    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    frame["frame_index"] = frame["frame_index"].astype("Int64")
    for col in MANIFEST_COLUMNS:
        if col != "frame_index":
            frame[col] = frame[col].astype("string")
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_manifest(path, row_batches: Iterable[list[dict]]) -> int:
    """Write ``manifest.parquet`` from batches of rows (one row group each, so memory stays bounded
    by a batch); returns the number of rows. Columns: ``MANIFEST_COLUMNS``."""
    import pyarrow.parquet as pq

    writer = None
    schema = None
    count = 0
    try:
        for rows in row_batches:
            table = _manifest_table(rows)
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(str(path), schema)
            writer.write_table(table.cast(schema))
            count += len(rows)
        if writer is None:
            pq.write_table(_manifest_table([]), str(path))
    finally:
        if writer is not None:
            writer.close()
    return count


def write_shard_dir_metadata(
    out_dir,
    *,
    kind: str,
    counts: dict,
    image_size: int | None,
    action_dim: int | None,
    manifest_rows: list[dict] | None = None,
    num_tokens: int | None = None,
    vocab_size: int | None = None,
    **extra,
) -> dict:
    """Write ``info.json`` (and ``manifest.parquet`` when rows are given) of a shard directory.

    ``counts`` maps split to number of samples. Shard lists are read from the directory so the
    record matches what is on disk. Returns the info dict.
    """
    out_dir = Path(out_dir)
    info = {
        "kind": kind,
        "counts": {s: int(counts.get(s, 0)) for s in SPLITS},
        "shards": {s: sorted(p.name for p in (out_dir / s).glob("*.tar")) for s in SPLITS},
        "image_size": image_size,
        "action_dim": action_dim,
        "resampler": RESAMPLER,
    }
    if num_tokens is not None:
        info["num_tokens"] = int(num_tokens)
    if vocab_size is not None:
        info["vocab_size"] = int(vocab_size)
    info.update(extra)
    if manifest_rows is not None:
        write_manifest(out_dir / "manifest.parquet", [manifest_rows])
    atomic_write_json(out_dir / "info.json", info)
    return info


# ---------------------------------------------------------------------------------------------
# the one writer


class ShardDirBuilder:
    """Writes the tars of a shard directory by split and records every sample and skip for its manifest.

    ``write`` takes one sample (``{"__key__", ext: value}``), ``add`` the samples of an episode
    (checking the action dimension and that no two sources share a key stem), ``skip`` records a
    skipped source, episode or frame with its reason; ``finish`` closes the tars and writes
    ``manifest.parquet`` and ``info.json``. ``chunk`` names the tars of one chunk of a resumable
    build. Nothing is renamed into place here: callers build inside ``atomic_directory``.
    """

    def __init__(
        self,
        root,
        kind: str,
        cfg: ShardingConfig | None = None,
        image_size: int | None = None,
        *,
        samples_per_shard: int | None = None,
        max_shard_bytes: int | None = None,
        chunk: int | None = None,
        check_stems: bool = True,
        check_keys: bool = True,
        stream_manifest: Path | None = None,
    ):
        self.root, self.kind, self.cfg, self.image_size = Path(root), kind, cfg, image_size
        per_shard = samples_per_shard or (cfg.samples_per_shard if cfg is not None else 1000)
        max_bytes = max_shard_bytes or (cfg.max_shard_bytes if cfg is not None else 2_000_000_000)
        self.writers = {
            s: ShardWriter(root, s, kind, per_shard, max_bytes, chunk=chunk, check_keys=check_keys)
            for s in SPLITS
        }
        self.rows: list[dict] = []
        self._manifest_path = stream_manifest  # rows go there in groups, so memory stays bounded
        self._manifest_writer = None
        self._manifest_schema = None
        self.counts = dict.fromkeys(SPLITS, 0)
        self.episodes = dict.fromkeys(SPLITS, 0)
        self.skipped = 0
        self.action_dim: int | None = None
        self.nan_actions = 0
        self.notes: dict[str, int] = {}
        self._stems: dict[str, str] | None = {} if check_stems else None

    def write(self, split: str, sample: dict, *, episode_id=None, frame_index=None, source=None) -> None:
        """Write one sample to ``split`` and record it for the manifest."""
        writer = self.writers[split]
        writer.write(sample)
        if frame_index is None and isinstance(sample.get("json"), dict):
            frame_index = sample["json"].get("frame_index")
        self.rows.append(
            {
                "status": "written",
                "split": split,
                "shard": os.path.relpath(writer.current_path, self.root),
                "key": sample["__key__"],
                "episode_id": episode_id,
                "frame_index": frame_index,
                "source": source,
                "reason": None,
            }
        )
        self.counts[split] += 1
        if self._manifest_path is not None and len(self.rows) >= MANIFEST_ROWS_PER_GROUP:
            self._flush_rows()

    def _flush_rows(self) -> None:
        import pyarrow.parquet as pq

        if not self.rows and self._manifest_writer is not None:
            return
        table = _manifest_table(self.rows)
        if self._manifest_writer is None:
            self._manifest_schema = table.schema
            self._manifest_writer = pq.ParquetWriter(str(self._manifest_path), table.schema)
        self._manifest_writer.write_table(table.cast(self._manifest_schema))
        self.rows = []

    def close_manifest(self) -> None:
        """Write the remaining rows of a streamed manifest and close it."""
        if self._manifest_path is None:
            return
        self._flush_rows()
        self._manifest_writer.close()
        self._manifest_writer = None

    def claim_stem(self, stem: str, source: str) -> None:
        """Refuse a key stem already used by another source (ValueError naming both)."""
        if self._stems is None:
            return
        if stem in self._stems:
            raise ValueError(
                f"sample keys {stem}_*: the episode appears twice, from {self._stems[stem]} and from "
                f"{source}; each source may be given once"
            )
        self._stems[stem] = source

    def check_action_dim(self, action_dim: int | None, where: str) -> None:
        if action_dim is None:
            return
        if self.action_dim is not None and action_dim != self.action_dim:
            raise ValueError(f"{where} has {action_dim}-D actions, earlier episodes {self.action_dim}-D")
        self.action_dim = action_dim

    def note(self, name: str, count: int) -> None:
        if count:
            self.notes[name] = self.notes.get(name, 0) + int(count)

    def add(self, result: EpisodeSamples, stem: str | None = None) -> None:
        """The samples of one episode (or its skip, when ``result.skipped_reason`` is set)."""
        if stem is not None:
            self.claim_stem(stem, result.source or result.episode_id)
        if result.skipped_reason is not None:
            self.skip(result.source, result.skipped_reason, result.episode_id)
            return
        self.check_action_dim(result.action_dim, f"{result.source}: episode {result.episode_id!r}")
        self.nan_actions += int(result.notes.get("nan_actions", 0))
        for name, count in result.notes.items():
            if name != "nan_actions" and isinstance(count, int) and name != "state_dim":
                self.note(name, count)
        for sample in result.samples:
            self.write(result.split, sample, episode_id=result.episode_id, source=result.source)
        self.episodes[result.split] += 1

    def skip(self, source: str, reason: str, episode_id: str | None = None) -> None:
        log.warning("skipped %s%s: %s", source, f" (episode {episode_id})" if episode_id else "", reason)
        self.skipped += 1
        self.rows.append(
            {
                "status": "skipped",
                "split": None,
                "shard": None,
                "key": None,
                "episode_id": episode_id,
                "frame_index": None,
                "source": source,
                "reason": reason,
            }
        )
        if self._manifest_path is not None and len(self.rows) >= MANIFEST_ROWS_PER_GROUP:
            self._flush_rows()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()

    def finish(self, *, manifest_rows: Iterable[list[dict]] | None = None, **extra) -> dict:
        """Close the tars, write ``manifest.parquet`` (this builder's rows, or ``manifest_rows``
        batches) and ``info.json`` (counts, shards, image size, action_dim, skips, settings, ``extra``)."""
        self.close()
        info_extra: dict = {"skipped": self.skipped}
        if self.cfg is not None or any(self.episodes.values()):  # episodes into samples
            info_extra.update(episodes=self.episodes, frames_with_nan_action=self.nan_actions)
        if self.notes:
            info_extra["notes"] = dict(sorted(self.notes.items()))
        if self.cfg is not None:
            info_extra["settings"] = plain_settings(self.cfg)
            for split in SPLITS:
                if not self.counts[split] and (split == "train" or self.cfg.val_fraction > 0):
                    log.warning(
                        "%s: the %s split is empty (%d episodes in all)",
                        self.root,
                        split,
                        sum(self.episodes.values()),
                    )
        info_extra.update(extra)
        write_manifest(
            self.root / "manifest.parquet", manifest_rows if manifest_rows is not None else [self.rows]
        )
        return write_shard_dir_metadata(
            self.root,
            kind=self.kind,
            counts=self.counts,
            image_size=self.image_size,
            action_dim=info_extra.pop("action_dim", self.action_dim),
            **info_extra,
        )


# ---------------------------------------------------------------------------------------------
# in-memory episodes


def check_sharding(cfg: ShardingConfig) -> None:
    """Settings checked before any source is read; ValueError naming the ``data.sharding`` key."""
    if not 1 <= int(cfg.jpeg_quality) <= 100:
        raise ValueError(f"data.sharding.jpeg_quality must be in [1, 100], got {cfg.jpeg_quality}")
    if cfg.crop > cfg.resize:
        raise ValueError(
            f"data.sharding.crop ({cfg.crop}) must not exceed data.sharding.resize ({cfg.resize})"
        )
    check_on_error(cfg.on_error)


def episode_samples(episode: Episode, kind: str, cfg: ShardingConfig, split: str = "train") -> EpisodeSamples:
    """Encode one in-memory episode into the samples of a ``pairs`` or ``demos`` shard directory."""
    check_sharding(cfg)
    if kind == "pairs":
        return pair_samples(
            episode,
            frame_offset=cfg.frame_offset,
            frame_offset_s=cfg.frame_offset_s,
            resize=cfg.resize,
            crop=cfg.crop,
            quality=cfg.jpeg_quality,
            fps=cfg.fps,
            split=split,
        )
    if kind == "demos":
        return demo_samples(episode, resize=cfg.resize, crop=cfg.crop, quality=cfg.jpeg_quality, split=split)
    raise ValueError(f"unknown shard kind {kind!r} (pairs or demos)")


def plain_settings(cfg) -> dict:
    """A config section (dataclass or DictConfig) as a plain dict for info.json."""
    from dataclasses import asdict, is_dataclass

    from omegaconf import DictConfig, OmegaConf

    if is_dataclass(cfg):
        return asdict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def check_on_error(value: str, key: str = "data.sharding.on_error") -> str:
    if value not in ("raise", "skip"):
        raise ValueError(f"{key} must be 'raise' or 'skip', got {value!r}")
    return value


def episode_task(episode: Episode) -> str | None:
    """What an episode counts as for a split by task: its task name, else its instruction."""
    return episode.task or episode.instruction or None


def _write_episodes(episodes: Iterable[Episode], out_dir, cfg: ShardingConfig, kind: str) -> dict:
    if kind not in ("pairs", "demos"):
        raise ValueError(f"unknown shard kind {kind!r} (pairs or demos)")
    cfg = ShardingConfig(**plain_settings(cfg))
    check_sharding(cfg)
    on_error = cfg.on_error
    with atomic_directory(out_dir) as tmp:
        builder = ShardDirBuilder(tmp, kind, cfg, cfg.crop)
        try:
            episodes = list(episodes)  # the split needs every episode id (and task) first
            splits = assign_splits(
                [e.episode_id for e in episodes],
                [episode_task(e) for e in episodes],
                seed=cfg.split_seed,
                val_fraction=cfg.val_fraction,
                train_per_task=cfg.train_episodes_per_task,
            )
            for episode, split in zip(episodes, splits, strict=True):
                try:
                    builder.claim_stem(episode_stem(episode), episode.source or episode.episode_id)
                    result = episode_samples(episode, kind, cfg, split)
                except ValueError as exc:
                    if on_error == "raise":
                        raise
                    builder.skip(episode.source or episode.episode_id, str(exc), episode.episode_id)
                    continue
                builder.add(result)
            info = builder.finish()
        except BaseException:
            builder.abort()
            raise
    return info


def write_pair_shards(episodes: Iterable[Episode], out_dir, cfg: ShardingConfig) -> dict:
    """Frame-pair shards (``t.jpg``, ``t1.jpg``, ``json``) of in-memory episodes; returns info.json."""
    return _write_episodes(episodes, out_dir, cfg, "pairs")


def write_demo_shards(episodes: Iterable[Episode], out_dir, cfg: ShardingConfig) -> dict:
    """Demonstration shards (``image.jpg``, ``txt``, ``action.npy``, [``state.npy``], ``json``) of
    in-memory episodes; returns info.json."""
    return _write_episodes(episodes, out_dir, cfg, "demos")
