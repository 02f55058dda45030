"""``lapa train-laq``: step-based LAQ training over frame-pair shards, resumable after a kill.

Scratch state (checkpoints, logs, reconstruction grids) lives in the work dir; the declared
outputs (``--out`` checkpoint, ``<stem>.metrics.json``, ``<stem>.recon.png``) are written
atomically at the very end, so an interrupted job leaves nothing that looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf

from lapa.utils.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)


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


def _newest_checkpoint(ckpt_dir: Path, hpc_dir: Path) -> Path | None:
    """The resume point: the last checkpoint or a SLURM requeue checkpoint, whichever is newer."""
    candidates = [p for p in [ckpt_dir / "last.ckpt", *hpc_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    best, best_step = None, -1
    for path in candidates:
        try:
            step = int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", -1))
        except Exception as exc:  # a checkpoint we cannot read is not a resume point
            log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
            continue
        if step > best_step:
            best, best_step = path, step
    return best


def _check_same_run(path: Path, hparams: dict) -> None:
    stored = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    if stored.get("arch") != hparams["arch"]:
        raise ValueError(
            f"{path} was written with a different LAQ architecture; remove its work directory "
            f"({path.parent.parent}) to start over, or restore the config to resume"
        )


def _scalars(metrics, prefix: str) -> dict:
    return {k: float(v) for k, v in metrics.items() if k.startswith(prefix) and v.numel() == 1}


def _precision(cfg, accelerator: str) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if accelerator == "gpu" else "32-true"


def train_laq(cfg, shards: str | Path, out: str | Path, workdir: str | Path | None = None) -> dict:
    """Train (or resume) a LAQ on ``shards``; write ``out`` and ``<stem>.metrics.json``; return metrics."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from lapa.data.pipeline import list_shards, make_loader, read_info
    from lapa.laq.model import architecture_from_config
    from lapa.laq.task import LAQTask

    shards, out = Path(shards), Path(out)
    workdir = Path(workdir) if workdir else out.parent / "work"
    tcfg = cfg.laq.training
    info = read_info(shards)
    if info.get("kind") not in (None, "pairs"):
        raise ValueError(f"{shards}/info.json: kind {info.get('kind')!r}; train-laq needs frame-pair shards")
    train_shards = list_shards(shards, "train")
    try:
        val_shards = list_shards(shards, "val")
    except FileNotFoundError:
        val_shards = []
        log.warning("%s has no val shards: no validation metrics, export=last", shards)

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
            seed=cfg.seed,
            num_workers=workers,
        )
    )
    val_cfg = OmegaConf.merge(loader_cfg, {"augment": False})
    val_loader = (
        make_loader(val_shards, "laq", val_cfg, False, num_workers=min(workers, 1)) if val_shards else None
    )

    arch = architecture_from_config(cfg.laq)
    training = {**OmegaConf.to_container(tcfg, resolve=True), "log_every_steps": cfg.logging.log_every_steps}
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = LAQTask(arch, training, grid_dir=str(workdir / "recon"))

    ckpt_dir = workdir / "checkpoints"
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="last",
            every_n_train_steps=tcfg.checkpoint_every_steps,
            save_top_k=1,
            enable_version_counter=False,
            save_on_train_epoch_end=False,
        ),
        LearningRateMonitor(logging_interval="step"),
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
    loggers = [CSVLogger(workdir, name="logs", version=0)]
    if cfg.logging.wandb:
        import os

        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
        loggers.append(WandbLogger(project=cfg.logging.wandb_project, save_dir=str(workdir), name=cfg.name))
    accelerator = (
        tcfg.accelerator if tcfg.accelerator != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    )
    plugins = [_atomic_checkpoint_io()]
    if SLURMEnvironment.detect():
        import signal

        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=tcfg.devices,
        num_nodes=tcfg.num_nodes,
        precision=_precision(tcfg, accelerator),
        max_steps=tcfg.max_steps,
        max_epochs=-1,
        val_check_interval=tcfg.val_every_steps if val_loader is not None else None,
        check_val_every_n_epoch=None,
        limit_val_batches=tcfg.val_batches if val_loader is not None else 0,
        num_sanity_val_steps=0,
        gradient_clip_val=tcfg.gradient_clip,
        gradient_clip_algorithm="norm",
        log_every_n_steps=cfg.logging.log_every_steps,
        callbacks=callbacks,
        logger=loggers,
        plugins=plugins,
        default_root_dir=str(workdir),
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=tcfg.deterministic,
    )
    resume = _newest_checkpoint(ckpt_dir, workdir)
    if resume is not None:
        _check_same_run(resume, task.hparams)
        log.info("resuming from %s", resume)
    trainer.fit(task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume)
    if val_loader is not None and trainer.global_step % tcfg.val_every_steps != 0:
        trainer.validate(task, dataloaders=val_loader, verbose=False)
    final = ckpt_dir / "final.ckpt"
    trainer.save_checkpoint(final)
    if not trainer.is_global_zero:
        return {}
    source = final
    best = ckpt_dir / "best.ckpt"
    if tcfg.export == "best" and best.is_file():
        source = best
    elif tcfg.export not in ("last", "best"):
        raise ValueError(f"laq.training.export must be last or best, got {tcfg.export!r}")
    metrics = {
        "global_step": int(trainer.global_step),
        "exported": tcfg.export if source == best else "last",
        "val": task.last_val_metrics,
        "train": {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith("train/") and v.numel() == 1
        },
        "code_restarts": int(task.model.quantizer.restarts),
        "num_tokens": task.model.num_tokens,
        "vocab_size": task.model.vocab_size,
        "shards": str(shards),
    }
    if task.last_grid is not None and task.last_grid.is_file():
        with atomic_path(out.with_suffix(".recon.png"), suffix=".png") as tmp:
            shutil.copyfile(task.last_grid, tmp)
    atomic_write_json(out.with_suffix(".metrics.json"), metrics)
    with atomic_path(out, suffix=".ckpt") as tmp:
        shutil.copyfile(source, tmp)
    log.info("wrote %s (%s) and %s", out, metrics["exported"], out.with_suffix(".metrics.json"))
    return json.loads(json.dumps(metrics))
