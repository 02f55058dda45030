"""``lapa train-laq``: step-based LAQ training over frame-pair shards, resumable after a kill.

Scratch state (checkpoints, logs, reconstruction grids) lives in the run folder
``<workdir>/<identity>/`` (``lapa.utils.run``): a rerun resumes only a run of the same shards (by
content) and settings. The declared outputs (``--out`` checkpoint, ``<stem>.metrics.json``,
``<stem>.recon.png``) are written atomically at the very end, so an interrupted job leaves
nothing that looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lapa.config.training import not_in_identity
from lapa.utils.io import atomic_path, atomic_write_json
from lapa.utils.run import (
    RunIdentity,
    check_resumable,
    config_values,
    make_loggers,
    open_run_dir,
    resolve_accelerator,
    resolve_precision,
    rng_state,
    run_identity,
    set_cpu_threads,
    set_rng_state,
)

log = logging.getLogger(__name__)

KEY = "laq.training"
CHECKPOINT_PREFIX = "step-"
# keys of the laq section that change no weight of the run
NOT_IN_IDENTITY = [
    *not_in_identity(KEY),
    f"{KEY}.export",
    f"{KEY}.num_images_to_log",
    "laq.label_batch_size",
    "laq.label_workers",
]


class ResumableLoader:
    """Wraps a shard DataLoader so Lightning can save and restore the data position.

    Each pass is seeded by its epoch number; after a resume the interrupted pass is replayed from
    its seed and the batches already consumed are skipped, so the run sees the same data as an
    uninterrupted one. Lightning fetches one batch ahead of the step it trains (``PREFETCHED``),
    so a checkpoint taken after step N has pulled N + 1 batches of which N were trained on.
    """

    PREFETCHED = 1

    def __init__(self, loader):
        self.loader = loader
        self.epoch = 0
        self.consumed = 0
        self._skip = 0

    def __iter__(self):
        self.loader.dataset.set_epoch(self.epoch)
        skip, self._skip = self._skip, 0
        self.consumed = 0
        for i, batch in enumerate(self.loader):
            if i < skip:
                self.consumed += 1
                continue
            self.consumed += 1
            yield batch
        self.epoch += 1
        self.consumed = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": max(self.consumed - self.PREFETCHED, 0)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self._skip = int(state["epoch"]), int(state["consumed"])


def _atomic_checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Checkpoints go to a temporary name and are renamed: a kill never leaves half a file."""

        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            with atomic_path(path, suffix=".ckpt") as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)

    return AtomicCheckpointIO()


def _run_callbacks(stop_at: int, every: int, ckpt_dir: Path):
    """RNG state in every checkpoint, and a resumable checkpoint where the run stops between periods."""
    import lightning as L

    class RunState(L.Callback):
        def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            checkpoint["rng"] = rng_state()

        def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
            if "rng" in checkpoint:
                set_rng_state(checkpoint["rng"])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step  # the periodic ModelCheckpoint saves multiples of ``every``
            if step == stop_at and (every <= 0 or step % every):
                trainer.save_checkpoint(ckpt_dir / f"{CHECKPOINT_PREFIX}{step:08d}.ckpt", weights_only=False)

    return RunState()


def _checkpoint_step(path: Path) -> int:
    name = path.stem
    if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
        return int(name[len(CHECKPOINT_PREFIX) :])
    return int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", -1))


def _newest_checkpoint(ckpt_dir: Path, hpc_dir: Path) -> tuple[Path | None, int]:
    """The resume point: the newest step checkpoint or SLURM requeue checkpoint, and its step."""
    candidates = [*ckpt_dir.glob(f"{CHECKPOINT_PREFIX}*.ckpt"), *hpc_dir.glob("hpc_ckpt_*.ckpt")]
    best, best_step = None, -1
    for path in candidates:
        try:
            step = _checkpoint_step(path)
        except Exception as exc:  # a checkpoint we cannot read is not a resume point
            log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
            continue
        if step > best_step:
            best, best_step = path, step
    return best, best_step


def _strategy(tcfg) -> str:
    from lapa.config.training import STRATEGIES

    world = int(tcfg.devices) * int(tcfg.num_nodes)
    name = tcfg.strategy
    if name not in STRATEGIES:
        raise ValueError(f"{KEY}.strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "fsdp2":
        raise ValueError(f"{KEY}.strategy=fsdp2: the LAQ is small enough for ddp; use auto or ddp")
    if name == "single" and world > 1:
        raise ValueError(f"{KEY}.strategy=single needs devices=1 and num_nodes=1")
    return "ddp" if name == "ddp" or world > 1 else "auto"


def identity(cfg, shards: str | Path, cache_dir: str | Path | None = None) -> RunIdentity:
    """What decides the LAQ weights: the shards by content, the seed, the laq section and the loader."""
    config = config_values(cfg, ["seed", "laq", "data.loader"], NOT_IN_IDENTITY)
    return run_identity("laq", {"shards": shards}, config, cache_dir=cache_dir)


def train_laq(cfg, shards: str | Path, out: str | Path, workdir: str | Path | None = None) -> dict:
    """Train (or resume) a LAQ on ``shards``; write ``out`` and ``<stem>.metrics.json``; return metrics.

    Returns the metrics written (``complete: False`` and nothing written when the run stopped
    early through ``laq.training.stop_after_steps``). Raises ``RunMismatch`` when this run's
    checkpoint is past ``laq.training.max_steps``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from lapa.data.pipeline import list_shards, make_loader, read_info, validation_set
    from lapa.laq.model import architecture_from_config
    from lapa.laq.task import LAQTask

    shards, out = Path(shards), Path(out)
    workdir = Path(workdir) if workdir else out.parent / "work"
    tcfg = cfg.laq.training
    if tcfg.export not in ("last", "best"):
        raise ValueError(f"{KEY}.export must be last or best, got {tcfg.export!r}")
    accelerator = resolve_accelerator(tcfg.accelerator, f"{KEY}.accelerator")
    strategy = _strategy(tcfg)
    info = read_info(shards)
    if info.get("kind") not in (None, "pairs"):
        raise ValueError(f"{shards}/info.json: kind {info.get('kind')!r}; train-laq needs frame-pair shards")
    train_shards = list_shards(shards, "train")
    val_samples = tcfg.val_samples
    if val_samples is not None and int(val_samples) < 0:
        raise ValueError(f"{KEY}.val_samples must be null (the whole val split), 0 (off) or positive")
    try:
        val_shards = list_shards(shards, "val") if val_samples != 0 and int(tcfg.val_every_steps) > 0 else []
    except FileNotFoundError:
        val_shards = []
        log.warning("%s has no val shards: no validation metrics, export=last", shards)
    run = open_run_dir(workdir, identity(cfg, shards, workdir))
    max_steps = int(tcfg.max_steps)
    resume, resume_step = _newest_checkpoint(run.checkpoints, run.path)
    if resume is not None:
        check_resumable(resume_step, max_steps, f"{KEY}.max_steps", resume, run)
        log.info("resuming from %s (step %d)", resume, resume_step)
    stop_at = max_steps
    if tcfg.stop_after_steps is not None:
        stop_at = min(max_steps, max(resume_step, 0) + int(tcfg.stop_after_steps))
    if accelerator == "cpu":
        set_cpu_threads(tcfg.cpu_threads, int(tcfg.devices))
    seed = int(tcfg.seed if tcfg.seed is not None else cfg.seed)

    loader_cfg = OmegaConf.merge(
        cfg.data.loader, {"image_size": cfg.laq.image_size, "batch_size": tcfg.batch_size}
    )
    workers = tcfg.num_workers if tcfg.num_workers is not None else loader_cfg.num_workers
    train_loader = ResumableLoader(
        make_loader(
            train_shards,
            "laq",
            loader_cfg,
            True,
            epoch_samples=tcfg.epoch_samples,
            seed=seed,
            num_workers=workers,
        )
    )
    val_cfg = OmegaConf.merge(loader_cfg, {"augment": False})
    val_every = int(tcfg.val_every_steps)
    val_loader, val_set = None, None
    if val_shards:
        # the same samples at every validation, split over the ranks when the trainer starts them
        val_set = validation_set(val_shards, val_samples, seed)
        world = int(tcfg.devices) * int(tcfg.num_nodes)
        if len(val_set) < world:
            raise ValueError(
                f"{shards}/val holds {len(val_set)} samples for {world} processes: every rank needs one"
            )
        log.info(
            "validation on %d of %d val pairs (%s)",
            len(val_set),
            val_set.split_size,
            "whole split" if val_set.limit is None else f"sample stratified by task, seed {seed}",
        )
        val_loader = make_loader(
            val_set.shards, "laq", val_cfg, False, num_workers=min(workers, 1), entries=val_set
        )

    arch = architecture_from_config(cfg.laq)
    training = {**OmegaConf.to_container(tcfg, resolve=True), "log_every_steps": cfg.logging.log_every_steps}
    L.seed_everything(seed, workers=True, verbose=False)
    task = LAQTask(arch, training, grid_dir=str(run.path / "recon"))

    ckpt_dir, every = run.checkpoints, int(tcfg.checkpoint_every_steps)
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename=CHECKPOINT_PREFIX + "{step:08d}",
            auto_insert_metric_name=False,
            monitor="step",
            mode="max",
            every_n_train_steps=max(every, 0),
            every_n_epochs=0,
            save_top_k=max(1, int(tcfg.keep_last)),
            enable_version_counter=False,
            save_on_train_epoch_end=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        _run_callbacks(stop_at, every, ckpt_dir),
    ]
    if val_loader is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor="val/loss_reconstruction",
                mode="min",
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    plugins = [_atomic_checkpoint_io()]
    if SLURMEnvironment.detect():
        import signal

        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=int(tcfg.devices),
        num_nodes=int(tcfg.num_nodes),
        strategy=strategy,
        precision=resolve_precision(tcfg.precision, accelerator),
        max_steps=stop_at,
        max_epochs=-1,
        val_check_interval=val_every if val_loader is not None else None,
        check_val_every_n_epoch=None,
        limit_val_batches=1.0 if val_loader is not None else 0,  # all of the validation set
        num_sanity_val_steps=0,
        gradient_clip_val=float(tcfg.gradient_clip) if tcfg.gradient_clip else None,
        gradient_clip_algorithm="norm",
        log_every_n_steps=cfg.logging.log_every_steps,
        callbacks=callbacks,
        logger=make_loggers(cfg, run.logs, "laq", fabric=False),
        plugins=plugins,
        default_root_dir=str(run.path),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=tcfg.deterministic,
    )
    trainer.fit(
        task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume, weights_only=True
    )
    step = int(trainer.global_step)
    if step < max_steps:
        log.info("stopped at step %d of %d; rerun the same command to resume", step, max_steps)
        return {"complete": False, "global_step": step}
    if val_loader is not None and (step % val_every != 0 or not task.last_val_metrics):
        trainer.validate(task, dataloaders=val_loader, verbose=False)
    final = ckpt_dir / "final.ckpt"
    trainer.save_checkpoint(final, weights_only=False)  # a full (resumable) checkpoint
    if not trainer.is_global_zero:
        return {}
    source = final
    best = ckpt_dir / "best.ckpt"
    if tcfg.export == "best" and best.is_file():
        source = best
    metrics = {
        "complete": True,
        "global_step": step,
        "exported": tcfg.export if source == best else "last",
        "val": task.last_val_metrics,
        "val_set": val_set.summary() if val_set is not None else None,
        "train": {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and v.numel() == 1
        },
        "code_restarts": int(task.model.quantizer.restarts),
        "num_tokens": task.model.num_tokens,
        "vocab_size": task.model.vocab_size,
        "shards": str(shards),
        "run_identity": run.identity.digest,
    }
    if task.last_grid is not None and task.last_grid.is_file():
        with atomic_path(out.with_suffix(".recon.png"), suffix=".png") as tmp:
            shutil.copyfile(task.last_grid, tmp)
    atomic_write_json(out.with_suffix(".metrics.json"), metrics)
    with atomic_path(out, suffix=".ckpt") as tmp:
        shutil.copyfile(source, tmp)
    log.info("wrote %s (%s) and %s", out, metrics["exported"], out.with_suffix(".metrics.json"))
    return json.loads(json.dumps(metrics))
