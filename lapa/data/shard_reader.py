"""Reading shard directories: the one API every stage uses to open tar shards.

A shard directory holds ``train/*.tar`` and ``val/*.tar`` (WebDataset layout: the members of a
sample share a key, ``<key>.<ext>``, and come together), ``info.json`` and ``manifest.parquet``.
Readers here return member bytes by extension; decoding is left to the caller
(``lapa.data.codec``). Errors name the shard: ``ShardReadError`` (a ValueError) for unreadable
data, FileNotFoundError for missing directories or files.
"""

from __future__ import annotations

import logging
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lapa.data.codec import decode_npy
from lapa.utils.io import read_json_object

log = logging.getLogger(__name__)

ACTION_SUFFIX = ".action.npy"


class ShardReadError(ValueError):
    """Unreadable shard data (truncated tar, corrupt JPEG, missing field), naming the shard."""


def list_shards(shard_dir, split: str) -> list[str]:
    """The ``.tar`` shards of one split of a shard directory, sorted; FileNotFoundError when none."""
    root = Path(shard_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"shard directory not found: {root}")
    split_dir = root / split
    shards = sorted(str(p) for p in split_dir.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {split_dir} (is {shard_dir} a complete shard directory?)")
    return shards


def shard_paths(shard_dir, split: str = "train") -> list[Path]:
    """``list_shards`` as paths."""
    return [Path(p) for p in list_shards(shard_dir, split)]


def read_info(shard_dir) -> dict:
    """``info.json`` of a shard directory (counts, image size, action_dim, num_tokens/vocab_size...)."""
    path = Path(shard_dir) / "info.json"
    return read_json_object(path, missing=f"{path} not found: {shard_dir} is not a complete shard directory")


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/key.ext.more`` -> (``dir/key``, ``ext.more``): WebDataset's rule (first dot of the base name)."""
    head, _, base = name.rpartition("/")
    if "." not in base:
        return None
    key, ext = base.split(".", 1)
    return (f"{head}/{key}" if head else key), ext


class ShardFile:
    """One tar shard opened for random access: ``index()`` (headers only), ``read(member)``, ``samples()``."""

    def __init__(self, path) -> None:
        self.path = str(path)
        try:
            self._tar = tarfile.open(self.path, mode="r:")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"shard not found: {self.path}") from exc
        except (tarfile.TarError, OSError) as exc:
            raise ShardReadError(
                f"{self.path}: not a readable tar shard: {type(exc).__name__}: {exc}"
            ) from exc

    def _members(self, keep: bool = True):
        """(member, (key, ext)) in tar order; ``keep=False`` forgets headers once passed, so a pass
        over a tar of any size holds one header at a time (``read`` then takes the member itself)."""
        try:
            while True:
                member = self._tar.next()
                if member is None:
                    break
                if not keep:
                    self._tar.members.clear()
                if member.isfile():
                    parts = split_member_name(member.name)
                    if parts is not None:
                        yield member, parts
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ShardReadError(f"{self.path}: unreadable shard: {type(exc).__name__}: {exc}") from exc

    def index(self) -> OrderedDict[str, dict[str, str]]:
        """key -> {ext: member name}, in tar order, reading headers only."""
        samples: OrderedDict[str, dict[str, str]] = OrderedDict()
        for member, (key, ext) in self._members():
            samples.setdefault(key, {})[ext] = member.name
        return samples

    def read(self, member: str | tarfile.TarInfo) -> bytes:
        """The bytes of one member (a name, or a header from the pass); ShardReadError when unreadable."""
        try:
            handle = self._tar.extractfile(member)
            if handle is None:
                raise ShardReadError(f"{self.path}: {member} is not a file")
            return handle.read()
        except KeyError as exc:
            raise ShardReadError(f"{self.path}: no member {member}") from exc
        except (tarfile.TarError, OSError, EOFError) as exc:
            name = getattr(member, "name", member)
            raise ShardReadError(f"{self.path}: cannot read {name}: {type(exc).__name__}: {exc}") from exc

    def samples(self, exts: Iterable[str] | None = None) -> Iterator[dict]:
        """Samples in tar order: ``{"__key__", "__url__", ext: bytes...}``; only ``exts`` when given (the
        other members' data is skipped, not read). A sample's members must be adjacent, as written."""
        wanted = None if exts is None else set(exts)
        current: dict | None = None
        for member, (key, ext) in self._members(keep=False):
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": self.path}
            if wanted is None or ext in wanted:
                current[ext] = self.read(member)
        if current is not None:
            yield current

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_shard(path) -> ShardFile:
    return ShardFile(path)


def index_shard(path) -> OrderedDict[str, dict[str, str]]:
    """key -> {ext: member name}, in tar order, reading headers only (ValueError naming a bad shard)."""
    with ShardFile(path) as shard:
        return shard.index()


def iter_samples(paths: str | Path | Iterable, exts: Iterable[str] | None = None) -> Iterator[dict]:
    """Samples of one tar or of several in order (see ``ShardFile.samples``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    exts = None if exts is None else tuple(exts)
    for path in paths:
        with ShardFile(path) as shard:
            yield from shard.samples(exts)


def stream_samples(urls: Iterable[str], handler) -> Iterator[dict]:
    """Samples streamed from tar urls (local paths or any URL WebDataset opens), for the loaders:
    ``{"__key__", "__url__", ext: bytes}``; ``handler(exc)`` decides on errors (raise or skip)."""
    from webdataset.tariterators import tarfile_samples

    return tarfile_samples(({"url": u} for u in urls), handler=handler)


def read_shard_actions(
    shard_dir: str | Path, split: str = "train", on_error: str = "raise"
) -> tuple[np.ndarray, dict]:
    """All actions of a split as float32 [N, A], and a report (samples read, skipped, reasons).

    A member that is not a readable float array of the common length raises a ValueError naming
    the shard and member, or with ``on_error="skip"`` is skipped and counted in the report.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    rows: list[np.ndarray] = []
    skipped: list[str] = []
    dim: int | None = None
    paths = shard_paths(shard_dir, split)
    ext = ACTION_SUFFIX[1:]
    for path in paths:
        with ShardFile(path) as shard:
            for member, (_key, member_ext) in shard._members(keep=False):
                if member_ext != ext:
                    continue
                where = f"{path}:{member.name}"
                try:
                    arr = decode_npy(shard.read(member))
                    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
                        raise ValueError(f"expected a 1-D numeric array, got {arr.dtype} {arr.shape}")
                    if dim is not None and arr.shape[0] != dim:
                        raise ValueError(f"action has {arr.shape[0]} dimensions, earlier samples {dim}")
                    if not np.all(np.isfinite(arr)):
                        raise ValueError("action contains NaN or infinite values")
                except (ValueError, OSError, EOFError) as exc:
                    if on_error == "raise":
                        raise ValueError(f"{where}: bad action: {exc}") from exc
                    skipped.append(f"{where}: {exc}")
                    log.warning("skipping %s: %s", where, exc)
                    continue
                dim = arr.shape[0]
                rows.append(arr.astype(np.float32))
    if not rows:
        raise ValueError(
            f"no actions ({ACTION_SUFFIX} members) found in {len(paths)} shard(s) of {shard_dir}/{split}"
        )
    report = {
        "shards": len(paths),
        "samples": len(rows),
        "skipped": len(skipped),
        "skip_reasons": skipped[:100],
    }
    return np.stack(rows), report
