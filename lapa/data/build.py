"""Sources into a shard directory, decoding file sources in a process pool (``sharding.workers``).

Video and image-folder sources are decoded and JPEG-encoded in worker processes, in input order
(``imap``), so the shards are the same whatever the number of workers; LeRobot datasets are
streamed episode by episode in the main process to keep memory bounded.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lapa.config.data import ShardingConfig
from lapa.data.samples import EpisodeSamples
from lapa.data.shards import ShardDirBuilder, check_on_error, episode_samples, plain_settings
from lapa.data.sources import Source, discover_sources, read_file_source
from lapa.utils.io import atomic_directory

log = logging.getLogger(__name__)


@dataclass
class _Failure:
    source: str
    message: str
    missing: bool = False


def _encode_file_source(job: tuple[Source, str, ShardingConfig]) -> EpisodeSamples | _Failure:
    source, kind, cfg = job
    try:
        episode = read_file_source(source, fps=cfg.fps, resize=cfg.resize, crop=cfg.crop)
        return episode_samples(episode, kind, cfg)
    except FileNotFoundError as exc:
        return _Failure(source.path, str(exc), missing=True)
    except (ValueError, OSError) as exc:
        return _Failure(source.path, str(exc))


def _remove_stale_builds(out_dir: Path) -> None:
    """Temporary directories of killed runs (``.<name>.tmp-<pid>`` with a dead pid) are removed."""
    for tmp in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing the unfinished build %s", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:
            pass


def build_shards(
    kind: str, inputs: list[str], out_dir, cfg: ShardingConfig, *, progress: bool = True
) -> dict:
    """Read ``inputs`` (see ``lapa.data.sources``) into a ``pairs`` or ``demos`` shard directory.

    Returns info.json's content. Bad inputs raise naming the file (on_error=raise) or are skipped
    and listed in the manifest with the reason (on_error=skip).
    """
    from tqdm import tqdm

    from lapa.data.lerobot import read_lerobot_dataset

    if kind not in ("pairs", "demos"):
        raise ValueError(f"unknown shard kind {kind!r} (pairs or demos)")
    cfg = ShardingConfig(**plain_settings(cfg))
    on_error = check_on_error(cfg.on_error)
    if cfg.crop > cfg.resize:
        raise ValueError(
            f"data.sharding.crop ({cfg.crop}) must not exceed data.sharding.resize ({cfg.resize})"
        )
    sources, missing = discover_sources([str(i) for i in inputs], on_error)
    if not sources and not missing:
        raise ValueError("no inputs given")
    out_dir = Path(out_dir)
    _remove_stale_builds(out_dir)

    def fail(source: str, message: str, builder: ShardDirBuilder, exc_type=ValueError) -> None:
        if on_error == "raise":
            raise exc_type(message)
        builder.skip(source, message)

    with atomic_directory(out_dir) as tmp:
        builder = ShardDirBuilder(tmp, kind, cfg, cfg.crop)
        try:
            for path, reason in missing:
                builder.skip(path, reason)
            file_jobs = []
            for s in sources:
                if s.kind != "lerobot" and kind == "demos":
                    fail(
                        s.path,
                        f"{s.path}: a {s.kind} source has no actions: demonstration shards need "
                        "LeRobot datasets",
                        builder,
                    )
                elif s.kind != "lerobot":
                    file_jobs.append((s, kind, cfg))
            workers = min(max(1, int(cfg.workers)), len(file_jobs))
            pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
            try:
                results = (
                    pool.imap(_encode_file_source, file_jobs) if pool else map(_encode_file_source, file_jobs)
                )
                bar = tqdm(total=len(sources), unit="source", desc=f"shards {kind}", disable=not progress)
                for s in sources:
                    if s.kind == "lerobot":
                        _add_lerobot(s, kind, cfg, builder, fail, read_lerobot_dataset)
                    elif kind == "pairs":
                        outcome = next(results)
                        if isinstance(outcome, _Failure):
                            fail(
                                outcome.source,
                                outcome.message,
                                builder,
                                FileNotFoundError if outcome.missing else ValueError,
                            )
                        else:
                            builder.add(outcome)
                    bar.update()
                    bar.set_postfix(
                        train=builder.counts["train"], val=builder.counts["val"], skipped=builder.skipped
                    )
                bar.close()
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
            info = builder.finish(inputs=[str(i) for i in inputs])
        except BaseException:
            builder.abort()
            raise
    log.info("wrote %s: %s samples, %d skipped", out_dir, info["counts"], info["skipped"])
    return info


def _add_lerobot(
    source: Source, kind: str, cfg: ShardingConfig, builder: ShardDirBuilder, fail, read_lerobot_dataset
) -> None:
    try:
        for episode in read_lerobot_dataset(source.path):
            try:
                result = episode_samples(episode, kind, cfg)
            except ValueError as exc:
                if cfg.on_error == "raise":
                    raise
                builder.skip(episode.source or source.path, str(exc), episode.episode_id)
                continue
            builder.add(result)
    except FileNotFoundError as exc:
        fail(source.path, f"{source.path}: {exc}", builder, FileNotFoundError)
    except ValueError as exc:
        if cfg.on_error == "raise":
            raise
        fail(source.path, f"{source.path}: {exc}", builder)
