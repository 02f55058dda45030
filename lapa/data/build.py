"""Sources into a shard directory: planned, streamed with bounded memory, resumable by chunk.

1. **Plan.** Inputs are discovered (``lapa.data.sources``) and LeRobot datasets expanded into
   their episodes from ``meta/episodes`` alone. Every unit (a video, an image folder, a LeRobot
   episode) gets its episode id, its sample-key stem (``lapa.data.samples.key_stem``: readable id
   plus a hash of the source's real path; two units with one real path or one stem, however they
   were spelled, are an error naming both) and its split
   (``assign_splits``: known before anything is decoded, so it can guarantee both splits and
   stratify by task).
2. **Parts.** Units are streamed into parts: video and image-folder units in worker processes
   (``sharding.workers``), decoded frame by frame and paired as they come (only the frames pairs
   still need are held); LeRobot units in the main process, each dataset's video read front to
   back once. A part is a tar of the unit's samples and a summary (samples, or the reason it was
   skipped).
3. **Chunks.** ``sharding.chunk_sources`` consecutive units form a chunk; once all its parts are
   there they are packed, in unit order, into the chunk's shards
   ``<split>/<kind>-<split>-<chunk>-<n>.tar`` and the parts are deleted.
4. **Splits over what was written.** The default split rule is applied again to the episodes
   actually written (``_rebalance``): a skipped source cannot leave a split empty; a chunk holding
   an episode that moved is repacked from its own shards.
5. **Assembly.** The chunks' shards are linked into the output, with ``manifest.parquet`` and
   ``info.json``, and the directory is renamed into place.

Everything in between lives in ``.<out name>.build/`` beside the output. After a kill a rerun
with the same inputs and settings keeps every finished part and chunk whose sources are unchanged
(size and modification time) and continues, and its output is byte-identical to an uninterrupted
run's; with other settings or inputs it starts afresh. The shards do not depend on the number of
workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
from dataclasses import asdict, dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path

from lapa.config.data import ShardingConfig
from lapa.data.images import resize_crop
from lapa.data.samples import SPLITS, assign_splits, iter_pair_samples, key_stem, pair_tolerance
from lapa.data.shard_reader import iter_samples
from lapa.data.shards import (
    ShardDirBuilder,
    ShardWriter,
    _manifest_table,
    check_sharding,
    episode_samples,
    plain_settings,
    write_shard_dir_metadata,
)
from lapa.data.sources import Source, discover_sources, iter_file_frames, source_instruction
from lapa.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

PLAN_VERSION = 2
_NOT_IN_FINGERPRINT = ("workers", "resume")


@dataclass(frozen=True)
class Unit:
    """One episode to shard: a video, an image folder, or one episode of a LeRobot dataset."""

    index: int
    kind: str  # video | images | lerobot
    path: str
    episode_id: str
    uid: str
    stem: str
    task: str | None = None
    lerobot_episode: int | None = None
    split: str = "train"
    stat: str = ""  # size and mtime of the unit's files: a part is reused only while it matches


# ---------------------------------------------------------------------------------------------
# planning


def _file_stat(path: Path) -> list:
    try:
        st = path.stat()
        return [path.name, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path.name, None, None]


def _stat_digest(items: list) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


def _source_stat(source: Source) -> str:
    p = Path(source.path)
    if source.kind == "video":
        return _stat_digest([_file_stat(p), _file_stat(p.with_suffix(".txt"))])
    if source.kind == "images":
        files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else []
        return _stat_digest([_file_stat(f) for f in files] + [_file_stat(p.with_suffix(".txt"))])
    files = sorted(f for f in p.rglob("*") if f.is_file())
    return _stat_digest([[str(f.relative_to(p)), *_file_stat(f)[1:]] for f in files])


@dataclass
class Plan:
    units: list[Unit]
    skips: list[dict]  # sources skipped before any decoding (missing, unreadable, collisions)
    cameras: dict[str, str]  # LeRobot dataset path -> the camera read
    state_dim: int | None


def _skip_row(source: str, reason: str, episode_id: str | None = None) -> dict:
    return {"source": source, "reason": reason, "episode_id": episode_id}


def make_plan(kind: str, inputs: list[str], cfg: ShardingConfig) -> Plan:
    """Every unit in input order with its key stem and split; raises (or records skips) for bad inputs."""
    from lapa.data.lerobot import LeRobotDataset

    on_error = cfg.on_error
    sources, missing = discover_sources([str(i) for i in inputs], on_error)
    if not sources and not missing:
        raise ValueError("no inputs given")
    skips = [_skip_row(path, reason) for path, reason in missing]

    def fail(source: str, message: str, episode_id: str | None = None, exc_type=ValueError) -> None:
        if on_error == "raise":
            raise exc_type(message)
        log.warning("skipped %s: %s", source, message)
        skips.append(_skip_row(source, message, episode_id))

    units: list[dict] = []
    cameras: dict[str, str] = {}
    state_dim: int | None = None
    state_keys = tuple(cfg.state_keys) if kind == "demos" else ()
    for s in sources:
        if s.kind == "lerobot":
            try:
                ds = LeRobotDataset(s.path)
                cameras[s.path] = ds.camera(cfg.camera)
                if state_keys:
                    dim = ds.state_dim(state_keys)
                    if state_dim is not None and dim != state_dim:
                        raise ValueError(f"state {state_keys} has {dim} values here, {state_dim} elsewhere")
                    state_dim = dim
                entries = ds.entries()
                stat = _source_stat(s)
            except FileNotFoundError as exc:
                fail(s.path, f"{s.path}: {exc}", exc_type=FileNotFoundError)
                continue
            except ValueError as exc:
                fail(s.path, f"{s.path}: {exc}")
                continue
            for e in entries:
                units.append(
                    dict(
                        kind="lerobot",
                        path=s.path,
                        episode_id=e.episode_id,
                        uid=e.uid,
                        task=e.task,
                        lerobot_episode=e.index,
                        stat=stat,
                    )
                )
        elif kind == "demos":
            fail(
                s.path,
                f"{s.path}: {'an image-folder' if s.kind == 'images' else 'a video'} source has no actions: "
                "demonstration shards need LeRobot datasets",
            )
        else:
            units.append(
                dict(kind=s.kind, path=s.path, episode_id=s.episode_id, uid=s.uid, stat=_source_stat(s))
            )

    # keys: a stem names one source; the same source given twice is a real collision
    kept: list[dict] = []
    owners: dict[str, str] = {}
    by_uid: dict[str, str] = {}  # real path (and episode) -> the path it was first given as
    for u in units:
        stem = key_stem(u["episode_id"], u["uid"])
        if u["uid"] in by_uid:
            fail(
                u["path"],
                f"{by_uid[u['uid']]} and {u['path']} are one source ({u['uid']}): "
                "each source may be given once",
                u["episode_id"],
            )
            continue
        if stem in owners:
            fail(
                u["path"],
                f"sample keys {stem}_* would come from {owners[stem]} and again from {u['path']} "
                f"(episode {u['episode_id']!r}): each source may be given once",
                u["episode_id"],
            )
            continue
        owners[stem] = u["path"]
        by_uid[u["uid"]] = u["path"]
        kept.append({**u, "stem": stem})
    splits = assign_splits(
        [u["episode_id"] for u in kept],
        [u.get("task") for u in kept],
        seed=cfg.split_seed,
        val_fraction=cfg.val_fraction,
        train_per_task=cfg.train_episodes_per_task,
    )
    plan_units = [
        Unit(index=i, split=split, **u) for i, (u, split) in enumerate(zip(kept, splits, strict=True))
    ]
    return Plan(plan_units, skips, cameras, state_dim)


def _fingerprint(kind: str, inputs: list[str], cfg: ShardingConfig, plan: Plan) -> str:
    settings = {k: v for k, v in plain_settings(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    record = {
        "version": PLAN_VERSION,
        "kind": kind,
        "inputs": [str(i) for i in inputs],
        "settings": settings,
        "units": [{k: v for k, v in asdict(u).items() if k != "stat"} for u in plan.units],
        "skips": plan.skips,
        "cameras": plan.cameras,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# staging


class Staging:
    """``.<name>.build/`` beside the output: plan, lock, unit parts and packed chunks."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.chunks = self.root / "chunks"

    @classmethod
    def beside(cls, out_dir: Path) -> Staging:
        return cls(out_dir.parent / f".{out_dir.name}.build")

    def part_dir(self, unit: Unit) -> Path:
        return self.parts / f"u{unit.index:08d}"

    def part_summary(self, unit: Unit) -> Path:
        return self.parts / f"u{unit.index:08d}.json"

    def chunk_dir(self, chunk: int) -> Path:
        return self.chunks / f"{chunk:06d}"

    def open(self, fingerprint: str, resume: bool) -> None:
        plan_file = self.root / "plan.json"
        if self.root.is_dir():
            self._check_lock()
            same = False
            if resume and plan_file.is_file():
                try:
                    same = json.loads(plan_file.read_text()).get("fingerprint") == fingerprint
                except (OSError, json.JSONDecodeError):
                    same = False
            if not same:
                log.info("%s: an unfinished build of other inputs or settings: starting afresh", self.root)
                shutil.rmtree(self.root)
            else:
                log.info("%s: continuing an unfinished build", self.root)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.chunks.mkdir(parents=True, exist_ok=True)
        (self.root / "lock").write_text(str(os.getpid()))
        atomic_write_json(plan_file, {"fingerprint": fingerprint})

    def _check_lock(self) -> None:
        lock = self.root / "lock"
        try:
            pid = int(lock.read_text().strip())
        except (OSError, ValueError):
            return
        if pid == os.getpid():
            return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        raise RuntimeError(f"{self.root} is being written by another build (process {pid})")

    def close(self, keep: bool) -> None:
        if keep:
            (self.root / "lock").unlink(missing_ok=True)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# units into parts


def _part_writer(staging_parts: Path, unit: Unit) -> ShardWriter:
    name = f"u{unit.index:08d}"
    return ShardWriter(
        staging_parts, name, "part", samples_per_shard=2**62, max_shard_bytes=2**62, check_keys=False
    )


def _finish_part(staging: Staging, unit: Unit, summary: dict) -> dict:
    summary = {"unit": unit.index, "stat": unit.stat, **summary}
    atomic_write_json(staging.part_summary(unit), summary)
    return summary


def _file_unit(job: tuple[Unit, str, dict, str]) -> dict:
    """A video or image-folder unit into its part (run in a worker process)."""
    unit, kind, settings, staging_root = job
    cfg = ShardingConfig(**settings)
    staging = Staging(Path(staging_root))
    shutil.rmtree(staging.part_dir(unit), ignore_errors=True)
    source = Source(unit.path, unit.kind, unit.episode_id)
    try:
        native = None
        if cfg.fps is None and cfg.frame_offset_s is not None and unit.kind == "video":
            from lapa.data.video import VideoReader

            with VideoReader(unit.path) as reader:
                native = reader.native_fps
        frames = iter_file_frames(source, fps=cfg.fps, resize=cfg.resize, crop=cfg.crop)
        meta = {"video_id": unit.episode_id, "instruction": source_instruction(source) or "", "task": ""}
        stats: dict = {}
        samples = iter_pair_samples(
            ((f.index, f.time, f.image, None) for f in frames),
            stem=unit.stem,
            meta=meta,
            frame_offset=cfg.frame_offset,
            frame_offset_s=cfg.frame_offset_s,
            tolerance_s=pair_tolerance(cfg.fps, native or (10.0 if unit.kind == "images" else None)),
            quality=cfg.jpeg_quality,
            stats=stats,
        )
        with _part_writer(staging.parts, unit) as writer:
            for sample in samples:
                writer.write(sample)
        summary = {"status": "written", "count": writer.total, "action_dim": None}
        if stats.get("too_short"):
            summary = {"status": "skipped", "reason": f"{unit.path}: {stats['too_short']}"}
        summary["notes"] = {k: stats[k] for k in ("unmatched",) if stats.get(k)}
    except FileNotFoundError as exc:
        summary = {"status": "failed", "missing": True, "reason": str(exc)}
    except (ValueError, OSError) as exc:
        message = str(exc) if unit.path in str(exc) else f"{unit.path}: {exc}"
        summary = {"status": "failed", "reason": message}
    return _finish_part(staging, unit, summary)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _lerobot_units(
    units: list[Unit], kind: str, cfg: ShardingConfig, staging: Staging, camera: str, on_done
) -> None:
    """The pending episodes of one LeRobot dataset into parts, reading its videos front to back."""
    from lapa.data.lerobot import LeRobotDataset

    by_episode = {u.lerobot_episode: u for u in units}
    pending = sorted(by_episode)
    state_keys = tuple(cfg.state_keys) if kind == "demos" else ()
    while pending:
        ds = LeRobotDataset(units[0].path)
        episodes = ds.iter_episodes(
            camera=camera,
            state_keys=state_keys,
            transform=lambda image: resize_crop(image, cfg.resize, cfg.crop),
            tolerance_s=cfg.timestamp_tolerance_s,
            only=set(pending),
        )
        while True:
            try:
                episode = next(episodes)
            except StopIteration:
                break
            except (ValueError, FileNotFoundError) as exc:  # the episode being read failed: go on after it
                unit = by_episode[pending.pop(0)]
                message = str(exc) if unit.path in str(exc) else f"{unit.path}: {exc}"
                missing = isinstance(exc, FileNotFoundError)
                on_done(
                    _finish_part(staging, unit, {"status": "failed", "reason": message, "missing": missing})
                )
                break
            index = int(episode.meta["episode_index"])
            pending.remove(index)
            on_done(_episode_part(episode, by_episode[index], kind, cfg, staging))


def _episode_part(episode, unit: Unit, kind: str, cfg: ShardingConfig, staging: Staging) -> dict:
    shutil.rmtree(staging.part_dir(unit), ignore_errors=True)
    try:
        result = episode_samples(episode, kind, cfg, unit.split)
    except ValueError as exc:
        return _finish_part(staging, unit, {"status": "failed", "reason": str(exc)})
    if result.skipped_reason is not None:
        return _finish_part(staging, unit, {"status": "skipped", "reason": result.skipped_reason})
    with _part_writer(staging.parts, unit) as writer:
        for sample in result.samples:
            writer.write(sample)
    notes = {k: v for k, v in result.notes.items() if isinstance(v, int)}
    return _finish_part(
        staging,
        unit,
        {"status": "written", "count": writer.total, "action_dim": result.action_dim, "notes": notes},
    )


# ---------------------------------------------------------------------------------------------
# parts into chunks, chunks into the output


def _pack_chunk(
    chunk: int,
    units: list[Unit],
    kind: str,
    cfg: ShardingConfig,
    staging: Staging,
    summaries: dict[int, dict] | None = None,
    samples_of=None,
) -> dict:
    """Pack one chunk's units (in order) into its shards; returns its done record.

    By default each unit's summary and samples come from its part, and the parts are deleted once
    packed; ``summaries`` (unit index -> summary) and ``samples_of(unit)`` repack from elsewhere.
    """
    from_parts = samples_of is None
    if summaries is None:
        summaries = {u.index: _read_json(staging.part_summary(u)) for u in units}
    if samples_of is None:

        def samples_of(unit: Unit):
            return iter_samples(sorted(staging.part_dir(unit).glob("*.tar")))

    cdir = staging.chunk_dir(chunk)
    shutil.rmtree(cdir, ignore_errors=True)
    cdir.mkdir(parents=True)
    builder = ShardDirBuilder(
        cdir,
        kind,
        cfg,
        cfg.crop,
        chunk=chunk,
        check_stems=False,  # stems were checked in the plan
        check_keys=False,
        stream_manifest=cdir / "rows.parquet",
    )
    try:
        for unit in units:
            summary = summaries[unit.index]
            if summary["status"] != "written":
                builder.skip(unit.path, summary["reason"], unit.episode_id)
                continue
            builder.check_action_dim(summary.get("action_dim"), f"{unit.path}: episode {unit.episode_id!r}")
            for name, count in (summary.get("notes") or {}).items():
                if name == "nan_actions":
                    builder.nan_actions += int(count)
                elif name != "state_dim":
                    builder.note(name, count)
            for sample in samples_of(unit):
                meta = json.loads(sample["json"])
                builder.write(
                    unit.split,
                    sample,
                    episode_id=unit.episode_id,
                    frame_index=meta.get("frame_index"),
                    source=unit.path,
                )
            builder.episodes[unit.split] += 1
        builder.close()
    except BaseException:
        builder.abort()
        raise
    builder.close_manifest()
    done = {
        "chunk": chunk,
        "stats": [u.stat for u in units],
        "counts": builder.counts,
        "episodes": builder.episodes,
        "skipped": builder.skipped,
        "action_dim": builder.action_dim,
        "nan_actions": builder.nan_actions,
        "notes": builder.notes,
        "units": [{"index": u.index, "split": u.split, "summary": summaries[u.index]} for u in units],
    }
    atomic_write_json(cdir / "done.json", done)
    if from_parts:
        for unit in units:
            shutil.rmtree(staging.part_dir(unit), ignore_errors=True)
            staging.part_summary(unit).unlink(missing_ok=True)
    return done


def _rebalance(
    kind: str,
    cfg: ShardingConfig,
    staging: Staging,
    chunks: list[tuple[int, list[Unit]]],
    done: dict[int, dict],
) -> list[tuple[int, list[Unit]]]:
    """Splits decided over the episodes actually written, so a skipped source cannot empty a split.

    The plan's splits are made before anything is decoded; once every chunk is packed the default
    rule (``assign_splits`` without ``train_episodes_per_task``) is applied again to the written
    episodes alone. Hash-decided splits never move; only the rule's "neither split empty" choice
    can, and the chunks holding a moved episode are repacked from their own shards. Returns the
    chunks with their units' final splits.
    """
    recorded = {r["index"]: r for c in done for r in done[c]["units"]}
    written = [
        u for _, members in chunks for u in members if recorded[u.index]["summary"]["status"] == "written"
    ]
    if cfg.train_episodes_per_task is not None or not written:
        return chunks
    splits = assign_splits(
        [u.episode_id for u in written], seed=cfg.split_seed, val_fraction=cfg.val_fraction
    )
    final = {u.index: split for u, split in zip(written, splits, strict=True)}
    out = []
    for c, members in chunks:
        moved = [dataclass_replace(u, split=final.get(u.index, u.split)) for u in members]
        if any(recorded[u.index]["split"] != u.split for u in moved if u.index in final):
            log.info("chunk %d: episodes moved between splits after skips: repacking it", c)
            old = staging.chunk_dir(c).with_name(f"{staging.chunk_dir(c).name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(staging.chunk_dir(c), old)

            def samples_of(unit: Unit, old=old):
                shards = sorted((old / recorded[unit.index]["split"]).glob("*.tar"))
                return (s for s in iter_samples(shards) if s["__key__"].rsplit("_", 1)[0] == unit.stem)

            summaries = {u.index: recorded[u.index]["summary"] for u in members}
            record = _pack_chunk(c, moved, kind, cfg, staging, summaries, samples_of)
            done[c] = {**record, "dir": str(staging.chunk_dir(c))}
            shutil.rmtree(old, ignore_errors=True)
        out.append((c, moved))
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _assemble(
    tmp: Path,
    kind: str,
    cfg: ShardingConfig,
    plan: Plan,
    chunks: list[tuple[int, list[Unit]]],
    done: dict[int, dict],
    inputs: list[str],
) -> dict:
    import pyarrow.parquet as pq

    for split in SPLITS:
        (tmp / split).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(SPLITS, 0)
    episodes = dict.fromkeys(SPLITS, 0)
    skipped = len(plan.skips)
    nan_actions = 0
    notes: dict[str, int] = {}
    action_dim = None
    for c, _ in chunks:
        record = done[c]
        cdir = Path(record["dir"])
        for split in SPLITS:
            for tar in sorted((cdir / split).glob("*.tar")):
                _link(tar, tmp / split / tar.name)
            counts[split] += record["counts"][split]
            episodes[split] += record["episodes"][split]
        skipped += record["skipped"]
        nan_actions += record["nan_actions"]
        for name, count in record["notes"].items():
            notes[name] = notes.get(name, 0) + count
        dim = record["action_dim"]
        if dim is not None:
            if action_dim is not None and dim != action_dim:
                raise ValueError(f"episodes with {dim}-D and {action_dim}-D actions in one shard directory")
            action_dim = dim
    head = _manifest_table(
        [
            {
                "status": "skipped",
                "split": None,
                "shard": None,
                "key": None,
                "episode_id": s["episode_id"],
                "frame_index": None,
                "source": s["source"],
                "reason": s["reason"],
            }
            for s in plan.skips
        ]
    )
    writer = pq.ParquetWriter(str(tmp / "manifest.parquet"), head.schema)
    try:
        writer.write_table(head)
        for c, _ in chunks:
            writer.write_table(pq.read_table(Path(done[c]["dir"]) / "rows.parquet").cast(head.schema))
    finally:
        writer.close()
    for split in SPLITS:
        if not counts[split] and (split == "train" or cfg.val_fraction > 0):
            log.warning("%s: the %s split is empty (%d episodes in all)", tmp, split, sum(episodes.values()))
    cameras = sorted(set(plan.cameras.values()))
    extra = {}
    if notes:
        extra["notes"] = dict(sorted(notes.items()))
    return write_shard_dir_metadata(
        tmp,
        kind=kind,
        counts=counts,
        image_size=cfg.crop,
        action_dim=action_dim,
        episodes=episodes,
        skipped=skipped,
        frames_with_nan_action=nan_actions,
        settings=plain_settings(cfg),
        camera=cameras[0] if len(cameras) == 1 else (cameras or None),
        state_keys=list(cfg.state_keys) if kind == "demos" else [],
        state_dim=plan.state_dim,
        inputs=[str(i) for i in inputs],
        **extra,
    )


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


def check_output_dir(out_dir, kind: str, inputs: list[str], sources: list[str] = ()) -> None:
    """Refuse an output directory whose replacement would destroy data.

    Raises ValueError naming the path when ``out_dir`` is, contains or lies inside an input (or a
    source found through one), or when it is an existing non-empty directory other than a ``kind``
    shard directory (one whose ``info.json`` says ``"kind": kind``); FileExistsError when it is an
    existing non-directory.
    """
    out_dir = Path(out_dir)
    out = Path(os.path.realpath(out_dir))
    for item in [*inputs, *sources]:
        src = Path(os.path.realpath(item))
        if out == src or src in out.parents or out in src.parents:
            raise ValueError(
                f"{out_dir}: the output directory {'is' if out == src else 'overlaps'} the input {item}; "
                "it would be replaced: choose another output directory"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a directory: choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        try:
            found = json.loads((out_dir / "info.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != kind:
            raise ValueError(
                f"{out_dir}: exists and is not a {kind} shard directory (no info.json of kind {kind!r}); "
                "refusing to replace it: remove it or choose another output directory"
            )


def build_shards(
    kind: str, inputs: list[str], out_dir, cfg: ShardingConfig, *, progress: bool = True
) -> dict:
    """Read ``inputs`` (see ``lapa.data.sources``) into a ``pairs`` or ``demos`` shard directory.

    Returns info.json's content. ``out_dir`` is checked first (``check_output_dir``). Bad inputs
    raise naming the file (on_error=raise) or are skipped and listed in the manifest with the
    reason (on_error=skip). See the module docstring for the stages, memory and resuming.
    """
    from tqdm import tqdm

    if kind not in ("pairs", "demos"):
        raise ValueError(f"unknown shard kind {kind!r} (pairs or demos)")
    cfg = ShardingConfig(**plain_settings(cfg))
    check_sharding(cfg)
    if cfg.chunk_sources < 1:
        raise ValueError(f"data.sharding.chunk_sources must be >= 1, got {cfg.chunk_sources}")
    on_error = cfg.on_error
    out_dir = Path(out_dir)
    check_output_dir(out_dir, kind, [str(i) for i in inputs])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(out_dir)
    plan = make_plan(kind, inputs, cfg)
    check_output_dir(out_dir, kind, [], [u.path for u in plan.units])
    staging = Staging.beside(out_dir)
    staging.open(_fingerprint(kind, inputs, cfg, plan), cfg.resume)
    units = plan.units
    chunks = [
        (c, units[start : start + cfg.chunk_sources])
        for c, start in enumerate(range(0, len(units), cfg.chunk_sources))
    ]
    chunk_of = {u.index: c for c, members in chunks for u in members}
    done: dict[int, dict] = {}
    summaries: dict[int, dict] = {}
    ok = False
    try:
        for c, members in chunks:  # finished chunks of an earlier run, with unchanged sources
            record = _read_json(staging.chunk_dir(c) / "done.json")
            if record is not None and record.get("stats") == [u.stat for u in members]:
                done[c] = {**record, "dir": str(staging.chunk_dir(c))}
            else:
                shutil.rmtree(staging.chunk_dir(c), ignore_errors=True)
        for u in units:
            if chunk_of[u.index] in done:
                continue
            summary = _read_json(staging.part_summary(u))  # failures are tried again
            if summary is not None and summary.get("stat") == u.stat and summary["status"] != "failed":
                summaries[u.index] = summary
        bar = tqdm(total=len(units), unit="episode", desc=f"shards {kind}", disable=not progress)
        bar.update(sum(len(m) for c, m in chunks if c in done) + len(summaries))

        def record(summary: dict) -> None:
            unit = units[summary["unit"]]
            if summary["status"] == "failed" and on_error == "raise":
                raise (FileNotFoundError if summary.get("missing") else ValueError)(summary["reason"])
            summaries[unit.index] = summary
            bar.update()
            c = chunk_of[unit.index]
            members = chunks[c][1]
            if c not in done and all(m.index in summaries for m in members):
                done[c] = {**_pack_chunk(c, members, kind, cfg, staging), "dir": str(staging.chunk_dir(c))}
            bar.set_postfix(chunks=f"{len(done)}/{len(chunks)}")

        for u in units:  # parts finished before a kill whose chunk was not packed yet
            if u.index in summaries:
                s = summaries.pop(u.index)
                bar.update(-1)
                record(s)
        pending = [u for u in units if chunk_of[u.index] not in done and u.index not in summaries]
        file_jobs = [
            (u, kind, plain_settings(cfg), str(staging.root)) for u in pending if u.kind != "lerobot"
        ]
        workers = min(max(1, int(cfg.workers)), len(file_jobs)) if file_jobs else 0
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker) if workers > 1 else None
        try:
            results = pool.imap_unordered(_file_unit, file_jobs) if pool else None
            by_dataset: dict[str, list[Unit]] = {}
            for u in pending:
                if u.kind == "lerobot":
                    by_dataset.setdefault(u.path, []).append(u)

            def on_lerobot(summary: dict) -> None:
                record(summary)
                while results is not None:  # pack file units finished meanwhile
                    try:
                        record(results.next(timeout=0))
                    except mp.TimeoutError:
                        break
                    except StopIteration:
                        break

            for path, members in by_dataset.items():
                _lerobot_units(members, kind, cfg, staging, plan.cameras[path], on_lerobot)
            if results is not None:
                for summary in results:
                    record(summary)
            else:
                for job in file_jobs:
                    record(_file_unit(job))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        bar.close()
        missing_chunks = [c for c, _ in chunks if c not in done]
        if missing_chunks:
            raise RuntimeError(f"chunks {missing_chunks[:5]} were not packed")
        chunks = _rebalance(kind, cfg, staging, chunks, done)
        with atomic_directory(out_dir) as tmp:
            info = _assemble(tmp, kind, cfg, plan, chunks, done, inputs)
        ok = True
    finally:
        staging.close(keep=not ok and cfg.resume)
    log.info("wrote %s: %s samples, %d skipped", out_dir, info["counts"], info["skipped"])
    return info


__all__ = ["Plan", "Unit", "build_shards", "check_output_dir", "make_plan"]
