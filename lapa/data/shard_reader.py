"""Read only the actions of demonstration shards (no image decoding) for the statistics."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ACTION_SUFFIX = ".action.npy"


def shard_paths(shard_dir: str | Path, split: str = "train") -> list[Path]:
    """The ``.tar`` shards of one split of a demonstration shard directory, sorted."""
    root = Path(shard_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"shard directory not found: {root}")
    folder = root / split
    paths = sorted(folder.glob("*.tar")) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(f"no .tar shards in {folder}")
    return paths


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
    for path in paths:
        try:
            tar = tarfile.open(path)
        except (tarfile.TarError, OSError) as exc:
            raise ValueError(f"{path}: not a readable tar shard: {exc}") from exc
        with tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(ACTION_SUFFIX):
                    continue
                where = f"{path}:{member.name}"
                try:
                    data = tar.extractfile(member).read()
                    arr = np.load(io.BytesIO(data), allow_pickle=False)
                    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
                        raise ValueError(f"expected a 1-D numeric array, got {arr.dtype} {arr.shape}")
                    if dim is not None and arr.shape[0] != dim:
                        raise ValueError(f"action has {arr.shape[0]} dimensions, earlier samples {dim}")
                    if not np.all(np.isfinite(arr)):
                        raise ValueError("action contains NaN or infinite values")
                except (ValueError, OSError, EOFError, tarfile.TarError) as exc:
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
