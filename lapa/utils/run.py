"""The plumbing the three training loops share: run identity, work folder, loggers, precision, resume.

Each stage keeps its own loop (``lapa/laq/train.py``, ``lapa/foundation/train.py``,
``lapa/finetune/train.py``); this module is the plumbing around them.

Run identity
    A run is named by a hash of what decides its weights: the input artifacts by content (shard
    directories, action statistics, upstream checkpoints: every file's SHA-256), the resolved config
    keys that decide the output (the stage leaves out ``max_steps`` and the other keys of
    ``lapa.config.training.NOT_IN_IDENTITY``) and the command's output-relevant arguments.
    A run lives in ``<workdir>/<identity[:16]>/`` with ``identity.json`` beside its checkpoints and
    logs, so it resumes only checkpoints made from the same inputs and settings; other inputs start
    fresh in their own folder (the log names what differs from the previous run there). A checkpoint
    past ``max_steps`` is refused with a message, never reported as this run's result.

File digests are cached in ``<workdir>/digests.json`` by (path, size, mtime, inode), so a rerun
does not read its inputs again.

The Fabric loops (foundation, finetuning)
    Their run state is a ``FabricRun``; ``save_checkpoint`` and ``resume_latest`` write and restore
    it, ``StepSchedule`` says at which steps a loop logs, validates, checkpoints and stops, and
    ``checkpoint_or_requeue`` ends each step (Slurm's requeue signal included).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.utils import checkpoint as ckpt
from lapa.utils.io import atomic_write_json

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"
DIGEST_CACHE = "digests.json"
CURRENT_FILE = "current.json"
_CHUNK = 8 << 20
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")  # TrainingConfig.accelerator; gpu is an alias of cuda


class RunMismatch(ValueError):
    """A checkpoint this run must not resume, with what differs and what to do."""


# -- input digests ----------------------------------------------------------------------------------


class DigestCache:
    """SHA-256 of files, remembered by (real path, size, mtime_ns, inode) in a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, str] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                self.entries = dict(json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                log.warning("ignoring unreadable digest cache %s: %s", path, exc)

    def file(self, path: Path) -> tuple[str, int]:
        """(sha256 hex, size in bytes) of ``path`` (links followed)."""
        real = path.resolve()
        st = real.stat()
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        digest = self.entries.get(key)
        if digest is None:
            h = hashlib.sha256()
            with open(real, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
            digest = self.entries[key] = h.hexdigest()
            self.dirty = True
        return digest, st.st_size

    def save(self) -> None:
        if self.path is not None and self.dirty:
            try:
                atomic_write_json(self.path, self.entries)
            except OSError as exc:  # a cache is never worth failing a run
                log.warning("cannot write digest cache %s: %s", self.path, exc)
            self.dirty = False


def fingerprint(path: str | os.PathLike, cache: DigestCache | None = None) -> dict:
    """The content fingerprint of a file or directory: ``{"sha256", "files", "bytes", "path"}``.

    A directory's digest covers every file under it (relative path, size and SHA-256; links are
    followed), except names starting with ``.`` (temporary files of interrupted writers).
    """
    path = Path(path)
    cache = cache or DigestCache(None)
    if path.is_file():
        digest, size = cache.file(path)
        return {"path": str(path), "sha256": digest, "files": 1, "bytes": size}
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    h = hashlib.sha256()
    files = total = 0
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            full = Path(root) / name
            digest, size = cache.file(full)
            h.update(f"{full.relative_to(path).as_posix()}\0{size}\0{digest}\n".encode())
            files += 1
            total += size
    return {"path": str(path), "sha256": h.hexdigest(), "files": files, "bytes": total}


def config_values(cfg: Any, keys: Sequence[str], drop: Sequence[str] = ()) -> dict:
    """Resolved values of the dotted ``keys`` of ``cfg`` as plain data, without the dotted ``drop`` keys."""
    from omegaconf import OmegaConf

    out: dict = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    for key in drop:
        for top in keys:
            if key.startswith(top + "."):
                node = out[top]
                *parents, leaf = key[len(top) + 1 :].split(".")
                for part in parents:
                    node = node.get(part, {}) if isinstance(node, dict) else {}
                if isinstance(node, dict):
                    node.pop(leaf, None)
    return out


# -- identity ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """What decides a run's weights; ``digest`` names it. ``record`` is what ``identity.json`` holds."""

    stage: str
    inputs: dict  # role -> fingerprint (or None for an absent optional input)
    config: dict  # dotted key -> resolved value
    args: dict  # output-relevant command arguments

    @property
    def digest(self) -> str:
        hashed = {
            "stage": self.stage,
            "inputs": {k: (v or {}).get("sha256") for k, v in self.inputs.items()},
            "config": self.config,
            "args": self.args,
        }
        blob = json.dumps(hashed, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def record(self) -> dict:
        return {
            "identity": self.digest,
            "stage": self.stage,
            "inputs": self.inputs,
            "config": self.config,
            "args": self.args,
        }

    @classmethod
    def from_record(cls, record: dict) -> RunIdentity:
        return cls(record["stage"], record["inputs"], record["config"], record["args"])

    def differences(self, other: dict) -> list[str]:
        """What differs from another run's ``identity.json`` record, in words."""
        diffs: list[str] = []
        if other.get("stage") != self.stage:
            diffs.append(f"stage {other.get('stage')!r} -> {self.stage!r}")
        theirs = other.get("inputs", {})
        for role in sorted(set(theirs) | set(self.inputs)):
            a, b = (theirs.get(role) or {}).get("sha256"), (self.inputs.get(role) or {}).get("sha256")
            if a != b:
                where = (self.inputs.get(role) or theirs.get(role) or {}).get("path", "")
                diffs.append(f"input {role} ({where}): content {str(a)[:12]} -> {str(b)[:12]}")
        diffs += _dict_diff(other.get("config", {}), self.config, "config ")
        diffs += _dict_diff(other.get("args", {}), self.args, "argument ")
        return diffs


def _flatten(value: Any, prefix: str) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _dict_diff(old: dict, new: dict, label: str) -> list[str]:
    a, b = _flatten(old, ""), _flatten(new, "")
    return [
        f"{label}{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "<unset>") != b.get(k, "<unset>")
    ]


def run_identity(
    stage: str,
    inputs: dict[str, str | os.PathLike | None],
    config: dict,
    args: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> RunIdentity:
    """Fingerprint ``inputs`` (role -> path, None for an absent optional input) and name the run."""
    cache = DigestCache(Path(cache_dir) / DIGEST_CACHE if cache_dir else None)
    prints = {role: (fingerprint(p, cache) if p is not None else None) for role, p in inputs.items()}
    cache.save()
    return RunIdentity(stage, prints, json.loads(json.dumps(config, default=str)), dict(args or {}))


# -- the run folder ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDir:
    """``<workdir>/<identity[:16]>/``: identity.json, checkpoints/, logs/ of one run."""

    workdir: Path
    path: Path
    identity: RunIdentity

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"


def default_workdir(out_dir: str | os.PathLike) -> Path:
    """``<out>.work`` beside ``out_dir``: where a Fabric stage keeps its run folders unless told."""
    out = Path(out_dir)
    return out.parent / f"{out.name}.work"


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def open_run_dir(workdir: str | os.PathLike, identity: RunIdentity, *, create: bool = True) -> RunDir:
    """The folder of ``identity`` under ``workdir`` (made, with identity.json, when ``create``).

    When ``workdir`` holds other runs, the log says what this one changes against the latest of them.
    """
    workdir = Path(workdir)
    path = workdir / identity.digest[:16]
    record_path = path / IDENTITY_FILE
    record = _read_record(record_path) if record_path.is_file() else None
    if record is not None and record.get("identity") != identity.digest:
        raise RunMismatch(
            f"{record_path} names run {record.get('identity')}, not {identity.digest}: "
            f"remove {path} to start over"
        )
    if record is None and create:
        others = []
        for other in workdir.glob(f"*/{IDENTITY_FILE}"):
            data = _read_record(other)
            if data is not None and other.parent != path:
                others.append((other.stat().st_mtime, other.parent, data))
        if (workdir / "checkpoints").is_dir():
            log.warning(
                "%s holds checkpoints of a run without an identity (an older layout): not resumed",
                workdir / "checkpoints",
            )
        if others:
            _, where, latest = max(others, key=lambda t: t[0])
            diffs = identity.differences(latest) or ["(nothing recorded)"]
            log.warning(
                "%s holds runs of other inputs or settings; not resuming %s, which differs in: %s. "
                "Starting fresh in %s",
                workdir,
                where,
                "; ".join(diffs),
                path,
            )
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record_path, identity.record)
    if create:
        atomic_write_json(workdir / CURRENT_FILE, {"run": path.name, "stage": identity.stage})
    return RunDir(workdir, path, identity)


def open_fabric_run_dir(
    fabric: Any, identity: Callable[[], RunIdentity], workdir: str | os.PathLike
) -> RunDir:
    """``open_run_dir`` for every rank of a Fabric run (collective).

    Rank 0 alone calls ``identity()`` (it reads every input file), makes the folder and broadcasts
    the identity; the other ranks get the same ``RunDir`` without writing. Returns after a barrier,
    so the folder exists on every rank.
    """
    ident = identity() if fabric.global_rank == 0 else None
    run_dir = open_run_dir(workdir, fabric.broadcast(ident), create=fabric.global_rank == 0)
    fabric.barrier()
    return run_dir


def check_resumable(step: int, max_steps: int, key: str, checkpoint: Path, run: RunDir) -> None:
    """Refuse a checkpoint beyond ``max_steps``: its weights are not this run's result."""
    if step > max_steps:
        raise RunMismatch(
            f"{checkpoint} is at step {step}, past {key}={max_steps}: this run cannot resume it. "
            f"Raise {key} to at least {step} to continue that run, or start over with another --workdir "
            f"(or remove {run.path})"
        )


# -- random generators ------------------------------------------------------------------------------


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain values (``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- devices and precision --------------------------------------------------------------------------


def resolve_accelerator(value: str, key: str) -> str:
    """``cpu`` or ``cuda`` from auto | cpu | cuda | gpu (``TrainingConfig.accelerator``)."""
    if value not in ACCELERATORS:
        raise ValueError(f"{key} must be one of {', '.join(ACCELERATORS)}, got {value!r}")
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if value == "gpu" else value


def resolve_precision(value: str, accelerator: str) -> str:
    """auto: bf16-mixed on CUDA, 32-true on CPU (bf16 autocast is several times slower on most CPUs)."""
    if value != "auto":
        return str(value)
    return "bf16-mixed" if accelerator == "cuda" else "32-true"


def set_cpu_threads(threads: int | None, processes: int) -> None:
    """Processes on one machine share its cores; oversubscribing them is very slow."""
    torch.set_num_threads(int(threads) if threads else max(1, torch.get_num_threads() // max(1, processes)))


# -- loggers ----------------------------------------------------------------------------------------


def make_loggers(cfg: Any, log_dir: Path, name: str, *, fabric: bool) -> list:
    """CSV (``<log_dir>/<name>/version_N/metrics.csv``) plus wandb when ``logging.wandb`` is on."""
    if fabric:
        from lightning.fabric.loggers import CSVLogger

        loggers: list = [CSVLogger(root_dir=str(log_dir), name=name)]
    else:
        from lightning.pytorch.loggers import CSVLogger

        loggers = [CSVLogger(save_dir=str(log_dir), name=name)]
    if cfg.logging.wandb:
        os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(project=cfg.logging.wandb_project, save_dir=str(log_dir), name=f"{cfg.name}-{name}")
        )
    return loggers


def log_metrics(loggers: Iterable, metrics: dict, step: int) -> None:
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def finalize_loggers(loggers: Iterable, status: str = "success") -> None:
    for logger in loggers:
        logger.finalize(status)


# -- the data position ------------------------------------------------------------------------------


def resumable_batches(
    make_epoch: Callable[[int], Iterable], progress: dict, batches_per_epoch: int, where: str = "the loader"
) -> Iterator:
    """Batches forever from the data position in ``progress`` (``epoch``, ``batch_in_epoch``).

    ``make_epoch(e)`` must give the same batches for the same ``e`` (seeded by the epoch alone).
    The position is advanced as batches are handed out, so a checkpoint taken after a batch was
    trained resumes at the next one; a finished epoch is recorded as the start of the next, so a
    resume at an epoch boundary reads nothing twice. Inside an epoch, the batches already trained
    are read again and dropped (``progress["fast_forwarded"]`` counts them).
    """
    while True:
        epoch, skip = int(progress["epoch"]), int(progress["batch_in_epoch"])
        iterator = iter(make_epoch(epoch))
        for index in range(batches_per_epoch):
            try:
                batch = next(iterator)
            except StopIteration:
                raise RuntimeError(
                    f"{where} ended after {index} of {batches_per_epoch} batches of epoch {epoch}"
                ) from None
            if index < skip:
                progress["fast_forwarded"] = progress.get("fast_forwarded", 0) + 1
                continue
            if index + 1 == batches_per_epoch:
                progress["epoch"], progress["batch_in_epoch"] = epoch + 1, 0
            else:
                progress["batch_in_epoch"] = index + 1
            yield batch
        del iterator


# -- Slurm requeue ----------------------------------------------------------------------------------


class RequeueSignal:
    """Slurm's warning before the time limit (``#SBATCH --signal=USR1@90``): checkpoint, requeue, leave.

    The handler only sets a flag; the loop asks ``requested()`` at each step boundary (agreed over
    ranks), saves a checkpoint and calls ``requeue()``; the requeued job resumes it. Installed only
    inside a Slurm job (``SLURM_JOB_ID``) unless ``always``.
    """

    def __init__(self, sig: int = signal.SIGUSR1, always: bool = False):
        self.flag = False
        self.sig = sig
        self.job_id = os.environ.get("SLURM_JOB_ID")
        self._previous = None
        if self.job_id or always:
            self._previous = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        log.warning("received signal %d: checkpointing and requeueing after this step", signum)
        self.flag = True

    def requested(self, fabric: Any = None) -> bool:
        if fabric is None or fabric.world_size == 1:
            return self.flag
        flag = torch.tensor([1.0 if self.flag else 0.0], device=fabric.device)
        return bool(fabric.all_reduce(flag, reduce_op="max").item() > 0)

    def requeue(self) -> bool:
        """``scontrol requeue $SLURM_JOB_ID``; False (logged) outside Slurm or when it fails."""
        if not self.job_id:
            log.warning("stopped on a signal outside a Slurm job: rerun the same command to resume")
            return False
        result = subprocess.run(["scontrol", "requeue", self.job_id], capture_output=True, text=True)
        if result.returncode != 0:
            log.error("scontrol requeue %s failed: %s", self.job_id, result.stderr.strip())
            return False
        log.info("requeued Slurm job %s", self.job_id)
        return True

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(self.sig, self._previous)
            self._previous = None


def lockstep(fabric: Any, batches):
    """(batch, counted) from this rank's ``batches`` until every rank has run out.

    A sharded (or DDP) forward is collective, so a rank that has run out while others have not
    repeats its last batch with ``counted`` False (its results are discarded). Each rank must
    have at least one batch.
    """
    spare = None
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        have = torch.tensor([0.0 if batch is None else 1.0], device=fabric.device)
        if fabric.world_size > 1:
            have = fabric.all_reduce(have, reduce_op="max")
        if float(have) < 1:
            return
        if batch is None:
            if spare is None:
                raise RuntimeError(f"rank {fabric.global_rank} has no validation batch while others have")
            yield spare, False
        else:
            spare = batch
            yield batch, True


# -- the state of a Fabric loop ---------------------------------------------------------------------


def _fresh_progress() -> dict:
    return {"step": 0, "epoch": 0, "batch_in_epoch": 0}


@dataclass(kw_only=True)
class FabricRun:
    """What the plumbing of a Fabric training loop reads; each stage's ``Run`` adds its own fields.

    ``progress`` is ``{"step", "epoch", "batch_in_epoch"}`` (optimizer steps done, and the data
    position of ``resumable_batches``); it is what a checkpoint records beside the weights.
    """

    fabric: Any
    plan: Any  # lapa.vla.parallelize.RunPlan
    cfg: Any  # the whole experiment config
    model: Any  # the Fabric-wrapped network
    raw_model: Any  # the module inside it (its parameters are DTensor shards under FSDP2)
    optimizer: Any
    scheduler: Any
    run_dir: RunDir
    loggers: list = field(default_factory=list)  # rank 0 only
    progress: dict = field(default_factory=_fresh_progress)

    @property
    def sharded(self) -> bool:
        return self.plan.strategy == "fsdp2"


def save_checkpoint(run: FabricRun, keep_last: int) -> Path:
    """Checkpoint the run at its current step in ``run_dir/checkpoints`` (collective; every rank calls it).

    Weights and optimizer (sharded under FSDP2) plus each rank's progress, scheduler and random
    generators (``lapa.utils.checkpoint.save_training_state``); the newest ``keep_last`` are kept.
    Returns the checkpoint directory.
    """
    own = {"progress": dict(run.progress), "scheduler": run.scheduler.state_dict(), "rng": rng_state()}
    return ckpt.save_training_state(
        run.fabric,
        run.run_dir.checkpoints,
        run.progress["step"],
        run.raw_model,
        run.optimizer,
        own,
        sharded=run.sharded,
        keep_last=keep_last,
    )


def resume_latest(run: FabricRun, max_steps: int, key: str, what: str = "") -> None:
    """Restore a Fabric run (model, optimiser, scheduler, RNG, ``run.progress``) from its newest
    complete checkpoint in ``run_dir/checkpoints``, if there is one; stale partial checkpoints are
    removed. ``key`` names ``max_steps`` in messages, ``what`` the run in the log.

    Raises (via ``check_resumable``) when the checkpoint is past ``max_steps``.
    """
    fabric, ckpt_dir = run.fabric, run.run_dir.checkpoints
    latest = None
    if fabric.global_rank == 0:
        ckpt.remove_stale(ckpt_dir)
        found = ckpt.completed(ckpt_dir)
        latest = str(found[-1]) if found else None
    latest = fabric.broadcast(latest)
    if latest is None:
        return
    latest = Path(latest)
    check_resumable(ckpt.step_of(latest), int(max_steps), key, latest, run.run_dir)
    own = ckpt.load_training_state(fabric, latest, run.raw_model, run.optimizer, sharded=run.sharded)
    run.scheduler.load_state_dict(own["scheduler"])
    set_rng_state(own["rng"])
    run.progress = dict(own["progress"])
    if fabric.global_rank == 0:
        log.info("resumed %sfrom %s at step %d", f"{what} " if what else "", latest, run.progress["step"])


# -- the step loop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepSchedule:
    """When a step-based loop logs, validates, checkpoints and stops; steps count from 1.

    ``max_steps`` ends the run; ``stop_at`` ends this invocation (``max_steps``, or
    ``stop_after_steps`` past the step it resumed at); ``log_every`` >= 1; ``val_every`` <= 0
    is no validation; ``ckpt_every`` 0 checkpoints only where the invocation stops.
    """

    max_steps: int
    stop_at: int
    log_every: int
    val_every: int
    ckpt_every: int

    @classmethod
    def of(cls, tcfg: Any, log_every_steps: int, step: int, validation: bool) -> StepSchedule:
        """From a stage's training section (``max_steps``, ``stop_after_steps``, ``val_every_steps``,
        ``checkpoint_every_steps``), ``logging.log_every_steps``, the step the run is at and
        whether it has a validation set."""
        max_steps = int(tcfg.max_steps)
        stop_at = max_steps
        if tcfg.stop_after_steps is not None:
            stop_at = min(max_steps, step + int(tcfg.stop_after_steps))
        val_every = int(tcfg.val_every_steps) if validation else 0
        return cls(
            max_steps, stop_at, max(1, int(log_every_steps)), val_every, int(tcfg.checkpoint_every_steps)
        )

    @property
    def validates(self) -> bool:
        return self.val_every > 0

    def log_due(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.stop_at

    def val_due(self, step: int) -> bool:
        return self.validates and (step % self.val_every == 0 or step == self.max_steps)

    def checkpoint_due(self, step: int) -> bool:
        return (self.ckpt_every > 0 and step % self.ckpt_every == 0) or step == self.stop_at


def checkpoint_or_requeue(
    run: FabricRun, schedule: StepSchedule, requeue: RequeueSignal, keep_last: int
) -> bool:
    """End a step (collective): checkpoint when the schedule says so or when Slurm asked to requeue
    (agreed over ranks), then have rank 0 requeue the job. True when the loop must stop now."""
    stopping = requeue.requested(run.fabric)
    if schedule.checkpoint_due(run.progress["step"]) or stopping:
        save_checkpoint(run, keep_last)
    if stopping and run.fabric.global_rank == 0:
        requeue.requeue()
    return stopping


def stopped_early(run: FabricRun, max_steps: int) -> bool:
    """True, said in the log, when the run stopped before ``max_steps`` (its checkpoint resumes it)."""
    step = run.progress["step"]
    if step >= max_steps:
        return False
    if run.fabric.global_rank == 0:
        log.info("stopped at step %d of %d; rerun the same command to resume", step, max_steps)
    return True


def norm_value(norm: Any) -> float:
    """A gradient norm from ``fabric.clip_gradients`` as a float: a DTensor (FSDP2) is gathered
    first; None (no clipping) is NaN."""
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(norm) if norm is not None else float("nan")
