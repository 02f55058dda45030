"""The WebDataset reading pipeline: shard list -> split by node -> split by worker -> tar samples ->
shuffle buffer -> decode to uint8 -> transforms -> batches (spec 2.1.2).

Batches are dicts of uint8 image tensors [B,3,H,W], float32/int64 arrays and lists of strings;
models normalise on their own device (``lapa.data.transforms.normalize``).

Splitting: with at least ranks x workers shards, each (rank, worker) slot reads its own shards;
with fewer, every slot reads all shards and keeps every n-th sample, so no slot is empty and no
sample is read twice (the case webdataset's ``empty_check`` refuses). With ``epoch_samples``
each slot draws shards with replacement and an epoch is a fixed number of batches: the mode for
step-based and multi-GPU training, where ranks must see equal numbers of batches.

Validation reads a ``ValidationSet`` (``validation_set``): the whole val split, or a seeded sample
stratified by task when capped, never a prefix of the shard order. Its samples are dealt to the
(rank, worker) slots in contiguous runs of shard order, so the slots read disjoint parts that
together cover the set exactly once (slot sizes differ by at most one sample).
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import random
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from lapa.config.data import LoaderConfig
from lapa.data.codec import decode_jpegs, decode_npy
from lapa.data.images import resize_square
from lapa.data.shard_reader import ShardReadError, iter_samples, list_shards, read_info, stream_samples
from lapa.data.transforms import FrameAugment

__all__ = [
    "ShardDataset",
    "ShardReadError",
    "ValidationSet",
    "collate",
    "list_shards",
    "make_dataset",
    "make_loader",
    "read_info",
    "stratified_sample",
    "validation_set",
]

log = logging.getLogger(__name__)

TASKS = ("laq", "foundation", "low_level")
REQUIRED_FIELDS = {
    "laq": ("t.jpg", "t1.jpg", "json"),
    "foundation": ("image.jpg", "txt", "latent.npy"),
    "low_level": ("image.jpg", "txt", "action.npy"),
}


def expand_shards(shards: str | list[str], train: bool = True) -> list[str]:
    """A list of tar paths from a list, a brace pattern, a glob, a single tar or a shard directory."""
    if isinstance(shards, (str, os.PathLike)):
        text = str(shards)
        if Path(text).is_dir():
            return list_shards(text, "train" if train else "val")
        if any(c in text for c in "*?["):
            found = sorted(glob.glob(text))
            if not found:
                raise FileNotFoundError(f"no shards match {text}")
            return found
        urls = list(braceexpand.braceexpand(text))
    else:
        urls = [str(s) for s in shards]
    if not urls:
        raise FileNotFoundError("empty shard list")
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(
            f"shard not found: {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return urls


# webdataset appends " @ <_io.BufferedReader name='...'>" to the message of a member it cannot read
_STREAM_SUFFIX = re.compile(r" @ <[^>]*?name='(?P<name>[^']+)'>")


def _shard_of(exn: BaseException) -> str:
    """The shard an error from webdataset's tar reading came from: the URL it appends to the
    exception's args, else the file named in the message's stream suffix, else ``?``."""
    args = getattr(exn, "args", ())
    for arg in reversed(args):
        if isinstance(arg, str) and arg.endswith(".tar"):
            return arg
    found = _STREAM_SUFFIX.search(str(args[0])) if args else None
    return found["name"] if found else "?"


def _first_arg(exn: BaseException) -> str:
    """The exception's own message, without what webdataset appends (the stream, the URL)."""
    return _STREAM_SUFFIX.sub("", str(exn.args[0])) if exn.args else str(exn)


class ErrorHandler:
    """webdataset exception handler: raise naming the shard, or log and count the skip."""

    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.loader.on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped = 0

    def __call__(self, exn: BaseException) -> bool:
        if isinstance(exn, ShardReadError):  # raised by this handler, then handed to it again
            message = _first_arg(exn)
        else:
            message = f"{_shard_of(exn)}: unreadable shard data: {type(exn).__name__}: {_first_arg(exn)}"
        if self.on_error == "raise":
            raise ShardReadError(message) from exn
        self.skipped += 1
        log.warning("skipped (%d so far in this reader): %s", self.skipped, message)
        return True


def _dist_info() -> tuple[int, int]:
    """(rank, world_size) from an initialised process group, else RANK/WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except (ImportError, RuntimeError):
        pass
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _action_dim_from_info(shards: list[str]) -> int | None:
    info = Path(shards[0]).parent.parent / "info.json"
    if info.is_file():
        try:
            return json.loads(info.read_text()).get("action_dim")
        except json.JSONDecodeError:
            return None
    return None


class ShardDataset(IterableDataset):
    """Batches of one task read from tar shards; see the module docstring for how work is split."""

    def __init__(
        self,
        shards: list[str],
        task: str,
        cfg: LoaderConfig,
        train: bool,
        *,
        epoch_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        action_dim: int | None = None,
        entries: ValidationSet | Sequence[tuple[str, str]] | None = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown loader task {task!r}; expected one of {', '.join(TASKS)}")
        if epoch_samples is not None and epoch_samples < 1:
            raise ValueError(f"epoch_samples must be >= 1, got {epoch_samples}")
        if cfg.batch_size < 1:
            raise ValueError(f"data.loader.batch_size must be >= 1, got {cfg.batch_size}")
        if train and cfg.augment and cfg.horizontal_flip and task == "low_level":
            raise ValueError(
                "data.loader.horizontal_flip would mirror images but not their actions (task low_level)"
            )
        if entries is not None and (train or epoch_samples is not None):
            raise ValueError(
                "a list of validation entries is read once in order: train=False, no epoch_samples"
            )
        self.entries = (
            None
            if entries is None
            else tuple((str(u), str(k)) for u, k in getattr(entries, "entries", entries))
        )
        self.shards = list(shards)
        self.task, self.train, self.seed = task, train, seed
        self.batch_size = int(cfg.batch_size)
        self.shuffle_buffer = int(cfg.shuffle_buffer) if train else 0
        self.image_size = int(cfg.image_size)
        self.epoch_samples = epoch_samples
        self.handler = ErrorHandler(cfg.on_error)
        self.augment = (
            FrameAugment(
                self.image_size,
                scale=cfg.random_resized_crop_scale,
                jitter=cfg.color_jitter,
                flip=cfg.horizontal_flip,
            )
            if train and cfg.augment
            else None
        )
        self.action_dim = action_dim if action_dim is not None else _action_dim_from_info(self.shards)
        self._dist = (rank, world_size) if rank is not None and world_size is not None else None
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self._epoch: int | None = None
        self._iterations = 0

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch that seeds shuffling (otherwise each new iteration reshuffles on its own)."""
        self._epoch = int(epoch)

    def __getstate__(self):
        # resolve the rank in the parent process: a spawned loader worker has no process group
        state = self.__dict__.copy()
        if state["_dist"] is None:
            state["_dist"] = _dist_info()
        return state

    @property
    def skipped(self) -> int:
        """Samples or shards skipped so far by this process's reader (on_error=skip)."""
        return self.handler.skipped

    # -- the stream ---------------------------------------------------------------------------
    def _slot(self) -> tuple[int, int, int, int, int]:
        rank, world = self._dist or _dist_info()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self._epoch is not None:
            token = self._epoch
        elif info is not None:
            token = info.seed - info.id  # the loader's base seed: new every epoch, shared by its workers
        else:
            token = self._iterations
        self._iterations += 1
        return rank, world, worker, workers, token

    def __iter__(self):
        rank, world, worker, workers, token = self._slot()
        rng = random.Random(f"{self.seed}-{rank}-{worker}-{token}")
        slots, slot = world * workers, rank * workers + worker
        keep_every = 1
        if self.entries is not None:
            start, stop = share_bounds(len(self.entries), slot, slots)
            wanted = set(self.entries[start:stop])
            urls = list(dict.fromkeys(u for u, _ in self.entries[start:stop]))
            samples = (
                s for s in stream_samples(urls, self.handler) if (s["__url__"], s["__key__"]) in wanted
            )
            yield from self._batches(self._decoded(samples, rng))
            return
        if self.epoch_samples is not None:
            urls = self._resampled(rng)
        elif len(self.shards) >= slots:
            urls = self.shards[slot::slots]
            if self.train:
                urls = rng.sample(urls, len(urls))
        else:
            urls, keep_every = self.shards, slots
        samples = stream_samples(urls, self.handler)
        if keep_every > 1:
            samples = (s for i, s in enumerate(samples) if i % keep_every == slot)
        if self.shuffle_buffer > 1:
            samples = _shuffle(samples, self.shuffle_buffer, rng)
        batches = self._batches(self._decoded(samples, rng))
        if self.epoch_samples is not None:
            per_worker = math.ceil(self.epoch_samples / self.batch_size / workers)
            batches = (b for _, b in zip(range(per_worker), batches, strict=False))
        yield from batches

    def _resampled(self, rng: random.Random):
        while True:
            yield rng.choice(self.shards)

    def _decoded(self, samples, rng: random.Random):
        decode = getattr(self, f"_decode_{self.task}")
        for sample in samples:
            try:
                missing = [f for f in REQUIRED_FIELDS[self.task] if f not in sample]
                if missing:
                    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__')!r}"
                    raise ShardReadError(f"{where} lacks {', '.join(missing)}")
                yield decode(sample, rng)
            except ShardReadError as exn:
                self.handler(exn)
            except Exception as exn:
                self.handler(
                    ShardReadError(
                        f"{sample.get('__url__', '?')}: corrupt sample {sample.get('__key__')!r}: "
                        f"{type(exn).__name__}: {exn}"
                    )
                )

    def _images(self, jpegs: list[bytes], rng: random.Random) -> tuple[torch.Tensor, bool]:
        """uint8 [N,3,S,S] and whether flipped. The frames stay in the decoder's HWC memory (a
        channels-last view) until ``collate`` copies them into the batch: one copy per pixel."""
        frames = torch.from_numpy(decode_jpegs(jpegs)).permute(0, 3, 1, 2)
        if self.augment is not None:
            return self.augment(frames, rng)
        return resize_square(frames, self.image_size, contiguous=False), False

    def _action(self, value) -> np.ndarray:
        if value is None:
            return np.full(self.action_dim or 0, np.nan, dtype=np.float32)
        action = np.asarray(value, dtype=np.float32).reshape(-1)
        if self.action_dim is not None and len(action) != self.action_dim:
            raise ValueError(f"action has {len(action)} values, info.json says action_dim {self.action_dim}")
        return action

    def _decode_laq(self, sample: dict, rng: random.Random) -> dict:
        meta = json.loads(sample["json"])
        frames, flipped = self._images([sample["t.jpg"], sample["t1.jpg"]], rng)
        action = self._action(None if flipped else meta.get("action"))
        return {
            "frame_t": frames[0],
            "frame_t1": frames[1],
            "action": action,
            "has_action": bool(len(action)) and bool(np.isfinite(action).all()),
            "key": sample["__key__"],
            "video_id": str(meta.get("video_id", "")),
            "frame_index": int(meta.get("frame_index", -1)),
            "instruction": meta.get("instruction") or "",
            "task": meta.get("task") or "",
        }

    def _decode_foundation(self, sample: dict, rng: random.Random) -> dict:
        meta = json.loads(sample["json"]) if "json" in sample else {}
        frames, flipped = self._images([sample["image.jpg"]], rng)
        latent = decode_npy(sample["latent.npy"]).astype(np.int64).reshape(-1)
        return {
            "image": frames[0],
            "text": sample["txt"].decode("utf-8"),
            "latent": latent,
            "key": sample["__key__"],
            "action": self._action(None if flipped else meta.get("action")),
        }

    def _decode_low_level(self, sample: dict, rng: random.Random) -> dict:
        meta = json.loads(sample["json"]) if "json" in sample else {}
        frames, _ = self._images([sample["image.jpg"]], rng)
        out = {
            "image": frames[0],
            "text": sample["txt"].decode("utf-8"),
            "action": self._action(decode_npy(sample["action.npy"])),
            "key": sample["__key__"],
            "episode_id": str(meta.get("episode_id", "")),
        }
        if "state.npy" in sample:  # demonstrations built with data.sharding.state_keys
            out["state"] = decode_npy(sample["state.npy"]).astype(np.float32).reshape(-1)
        return out

    def _batches(self, samples):
        batch: list[dict] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch and not self.train:  # validation sees every sample; training keeps batch shapes fixed
            yield collate(batch)


def _shuffle(samples, bufsize: int, rng: random.Random):
    """Reservoir-style shuffle buffer (fills to ``bufsize``, then yields a random element per input)."""
    buf: list = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(len(buf))
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


def _shared_out(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack straight into shared memory in a loader worker: saves the copy made when sending the batch."""
    first = tensors[0]
    storage = first.untyped_storage()._new_shared(len(tensors) * first.numel() * first.element_size())
    return first.new_empty(0).set_(storage).view(len(tensors), *first.shape)


def collate(samples: list[dict]) -> dict:
    """Stack tensors and arrays; keep strings (and other scalars) as lists."""
    in_worker = torch.utils.data.get_worker_info() is not None
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, (torch.Tensor, np.ndarray)):
            tensors = [torch.as_tensor(v) for v in values]
            out[key] = torch.stack(tensors, out=_shared_out(tensors)) if in_worker else torch.stack(tensors)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


def make_dataset(
    shards: str | list[str],
    task: str,
    cfg: LoaderConfig,
    train: bool,
    *,
    epoch_samples: int | None = None,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    action_dim: int | None = None,
    entries: ValidationSet | Sequence[tuple[str, str]] | None = None,
) -> ShardDataset:
    """The batching IterableDataset over ``shards`` for ``task`` (laq | foundation | low_level).

    Training shuffles (shards per slot and a sample buffer) and augments; validation reads every
    sample exactly once in order. ``epoch_samples`` switches to resampled step-based epochs of
    that many samples per rank. ``rank``/``world_size`` override the process group / env.
    ``entries`` (a ``ValidationSet`` or (shard, key) pairs, validation only) restricts reading to
    those samples, each read once by exactly one (rank, worker) slot.
    """
    if entries is not None and not shards:
        shards = list(dict.fromkeys(u for u, _ in getattr(entries, "entries", entries)))
    return ShardDataset(
        expand_shards(shards, train),
        task,
        cfg,
        train,
        epoch_samples=epoch_samples,
        seed=seed,
        rank=rank,
        world_size=world_size,
        action_dim=action_dim,
        entries=entries,
    )


def make_loader(shards, task: str, cfg: LoaderConfig, train: bool, **kw) -> DataLoader:
    """A DataLoader over ``make_dataset`` (batches come from the dataset: ``batch_size=None``)."""
    pin_memory = kw.pop("pin_memory", False)
    num_workers = int(kw.pop("num_workers", cfg.num_workers))
    dataset = make_dataset(shards, task, cfg, train, **kw)
    extra = {"prefetch_factor": 4, "persistent_workers": False} if num_workers > 0 else {}
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **extra)


# -- validation sets ----------------------------------------------------------------------------


def share_bounds(n: int, slot: int, slots: int) -> tuple[int, int]:
    """[start, stop) of slot ``slot`` of ``slots`` in a list of ``n``: contiguous, disjoint,
    covering all ``n``, sizes differing by at most one."""
    if not 0 <= slot < slots:
        raise ValueError(f"slot {slot} out of range for {slots} slots")
    return n * slot // slots, n * (slot + 1) // slots


def stratified_sample(strata: Sequence[str], limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices int64 [min(limit, N)] of a seeded sample of ``strata`` (one label per item),
    stratified: strata get shares in proportion to their sizes (largest remainders) with at least one
    item each when ``limit`` >= the number of strata (else ``limit`` strata drawn at random get one
    each), and the items of a stratum are drawn at random. ``limit`` None or
    >= N: every index. Deterministic in (``strata``, ``limit``, ``seed``)."""
    n = len(strata)
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    if limit < 1:
        raise ValueError(f"a validation sample needs at least one item, got limit={limit}")
    labels = np.asarray([str(x) for x in strata])
    names, inverse = np.unique(labels, return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(names))
    rng = np.random.default_rng([seed, 0x7A11D])
    quota = np.zeros(len(names), dtype=np.int64)
    if limit < len(names):
        quota[rng.choice(len(names), limit, replace=False)] = 1
    else:
        exact = sizes * limit / n
        quota = np.maximum(np.floor(exact).astype(np.int64), 1)
        while quota.sum() > limit:  # the minimum of one lifted some: take back from the most over
            over = np.where(quota > 1, quota - exact, -np.inf)
            quota[int(np.argmax(over))] -= 1
        while quota.sum() < limit:  # largest remainders
            under = np.where(quota < sizes, exact - quota, -np.inf)
            quota[int(np.argmax(under))] += 1
    picked = []
    for g, name in enumerate(names):
        members = np.flatnonzero(inverse == g)
        own = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])  # independent of other strata
        picked.append(own.choice(members, int(quota[g]), replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _sample_task(sample: dict) -> str:
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ShardReadError(
                f"{sample['__url__']}: sample {sample['__key__']!r}: bad json: {exc}"
            ) from exc
    task = meta.get("task") or meta.get("instruction")
    if not task and "txt" in sample:
        task = sample["txt"].decode("utf-8", "replace")
    return str(task or "")


@dataclass(frozen=True)
class ValidationSet:
    """The samples a validation reads and what they were drawn from.

    ``entries``: (shard path, sample key) in shard order; ``tasks``: each entry's task (the
    sample's ``task``, else its instruction); ``split_tasks``: (task, samples in the split) for the
    whole split; ``limit`` the cap asked for (None: the whole split) and ``seed`` the sample's seed.
    """

    entries: tuple[tuple[str, str], ...]
    tasks: tuple[str, ...]
    split_size: int
    split_tasks: tuple[tuple[str, int], ...]
    limit: int | None
    seed: int

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def shards(self) -> list[str]:
        """The shards holding at least one entry, in order."""
        return list(dict.fromkeys(u for u, _ in self.entries))

    def count(self, rank: int = 0, world_size: int = 1) -> int:
        """Samples rank ``rank`` of ``world_size`` reads (any number of loader workers)."""
        start, stop = share_bounds(len(self.entries), rank, world_size)
        return stop - start

    def summary(self) -> dict:
        """JSON-ready: samples read, split size, cap, seed, and per task (read, in split)."""
        read = Counter(self.tasks)
        return {
            "samples": len(self.entries),
            "split_samples": self.split_size,
            "limit": self.limit,
            "seed": self.seed,
            "tasks": {task: [int(read.get(task, 0)), int(total)] for task, total in self.split_tasks},
        }


def validation_set(shards: str | list[str], limit: int | None = None, seed: int = 0) -> ValidationSet:
    """The validation set of a val split: every sample (``limit`` None), or ``stratified_sample``
    of ``limit`` samples stratified by task and seeded by ``seed``; never a prefix of shard order.

    ``shards``: a shard directory (its val split), a list of tars or a pattern. Reads the ``json``
    and ``txt`` members only. Raises FileNotFoundError for missing shards, ShardReadError naming a
    shard it cannot read, ValueError for ``limit`` < 1.
    """
    if limit is not None and int(limit) < 1:
        raise ValueError(f"val_samples must be None (the whole split) or >= 1, got {limit}")
    urls = expand_shards(shards, train=False)
    entries, tasks = [], []
    for sample in iter_samples(urls, exts=("json", "txt")):
        entries.append((str(sample["__url__"]), str(sample["__key__"])))
        tasks.append(_sample_task(sample))
    if not entries:
        raise ShardReadError(f"no samples in the validation shards {urls[0]}...")
    keep = stratified_sample(tasks, None if limit is None else int(limit), seed)
    return ValidationSet(
        entries=tuple(entries[i] for i in keep),
        tasks=tuple(tasks[i] for i in keep),
        split_size=len(entries),
        split_tasks=tuple(sorted(Counter(tasks).items())),
        limit=None if limit is None else int(limit),
        seed=int(seed),
    )


def broadcast_validation_set(fabric, val_shards: list[str], limit, seed: int, key: str, where):
    """The run's ``ValidationSet`` (``validation_set``), read by rank 0 and broadcast over ``fabric``:
    the whole val split (``limit`` None) or a sample of ``limit`` stratified by task, seeded by
    ``seed``, so every validation of the run, and every run with that seed, reads the same samples.
    None when ``val_shards`` is empty. Raises (on every rank) when the set cannot give each rank a sample.
    """
    if not val_shards:
        return None
    if limit is not None and int(limit) < 0:
        raise ValueError(f"{key}.val_samples must be null (the whole val split), 0 (off) or positive")
    found, problem = None, None
    if fabric.global_rank == 0:
        try:
            found = validation_set(val_shards, limit, seed)
            if len(found) < fabric.world_size:
                problem = f"{where}/val holds {len(found)} samples for {fabric.world_size} processes"
        except (OSError, ValueError) as exc:
            problem = f"{where}/val: {exc}"
    found, problem = fabric.broadcast((found, problem))
    if problem:
        raise ValueError(problem)
    if fabric.global_rank == 0:
        kind = "whole split" if found.limit is None else f"sample stratified by task, seed {seed}"
        log.info("validation on %d of %d val samples (%s)", len(found), found.split_size, kind)
    return found
