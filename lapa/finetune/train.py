"""``lapa finetune``: build the policy network, train it with a Lightning Trainer, write the policy.

Resumable: the Trainer keeps ``last.ckpt`` in ``<workdir>/checkpoints`` (default workdir
``<out>.work`` beside the output) and a rerun continues from it. Validation runs every
``val_every_steps`` steps: the training loader's epochs are that many batches long.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lapa.data.action_codec import ActionStats

log = logging.getLogger(__name__)

INITS = ("foundation", "scratch")


def default_workdir(out_dir: str | os.PathLike) -> Path:
    out = Path(out_dir)
    return out.parent / f"{out.name}.work"


def _loader_config(cfg: Any, batch_size: int):
    from omegaconf import OmegaConf

    loader = OmegaConf.to_object(cfg.data.loader) if OmegaConf.is_config(cfg.data.loader) else cfg.data.loader
    return replace(loader, batch_size=int(batch_size))


def build_model(cfg: Any, init: str, foundation_dir, backbones_dir, stats: ActionStats):
    """(model, tokenizer, foundation section) for the chosen initialisation."""
    from lapa.policy.build import check_backbones_for, policy_from_backbones, policy_from_foundation

    if init not in INITS:
        raise ValueError(f"finetune.init must be one of {INITS}, got {init!r}")
    if not Path(backbones_dir).is_dir():
        raise FileNotFoundError(f"--backbones directory not found: {backbones_dir}")
    if init == "scratch":
        if foundation_dir is not None:
            raise ValueError(
                "finetune.init=scratch trains without a foundation checkpoint: omit --foundation"
            )
        return policy_from_backbones(cfg.foundation, backbones_dir, stats.action_dim, stats.num_bins)
    if foundation_dir is None:
        raise ValueError("--foundation is required unless finetune.init=scratch")
    if not Path(foundation_dir).is_dir():
        raise FileNotFoundError(f"--foundation directory not found: {foundation_dir}")
    model, tokenizer, fcfg = policy_from_foundation(foundation_dir, stats.action_dim, stats.num_bins)
    check_backbones_for(fcfg, backbones_dir)
    return model, tokenizer, fcfg


def _precision(value: str) -> str:
    if value != "auto":
        return value
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _strategy(name: str, devices: int, num_nodes: int):
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        return FSDPStrategy(auto_wrap_policy={LlamaDecoderLayer}, state_dict_type="full")
    if name in ("auto", "ddp"):
        return "ddp" if name == "ddp" or devices * num_nodes > 1 else "auto"
    raise ValueError(f"finetune.strategy must be auto, ddp or fsdp, got {name!r}")


def atomic_checkpoint_io():
    """Lightning's checkpoint writer, renaming into place so a killed job never leaves a torn last.ckpt."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lapa.utils.io import atomic_path

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            with atomic_path(path) as tmp:
                super().save_checkpoint(checkpoint, tmp, storage_options)

    return AtomicCheckpointIO()


def make_loggers(cfg: Any, workdir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list = [CSVLogger(save_dir=str(workdir / "logs"), name="finetune")]
    if cfg.logging.wandb:
        os.environ.setdefault("WANDB_MODE", cfg.logging.wandb_mode)
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(
            WandbLogger(project=cfg.logging.wandb_project, save_dir=str(workdir), name=f"{cfg.name}-finetune")
        )
    return loggers


def finetune(
    cfg: Any,
    *,
    foundation_dir,
    backbones_dir,
    action_stats_path,
    shards_dir,
    out_dir: Path,
    workdir: Path | None = None,
) -> dict:
    """Train and write the policy directory; returns the last validation metrics."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lapa.data.pipeline import list_shards, make_loader, read_info
    from lapa.finetune.task import FinetuneTask
    from lapa.policy.build import freeze_for_finetuning
    from lapa.policy.policy import preprocessor_settings, save_policy
    from lapa.vla.processor import VLAProcessor

    fc = cfg.finetune
    stats = ActionStats.load(action_stats_path)
    info = read_info(shards_dir)
    if info.get("action_dim") is not None and int(info["action_dim"]) != stats.action_dim:
        raise ValueError(
            f"{action_stats_path} has action_dim {stats.action_dim} but "
            f"{shards_dir}/info.json says {info['action_dim']}"
        )
    train_shards = list_shards(shards_dir, "train")
    try:
        val_shards = list_shards(shards_dir, "val")
    except FileNotFoundError:
        log.warning("%s has no val split: finetuning without validation", shards_dir)
        val_shards = []
    workdir = Path(workdir) if workdir else default_workdir(out_dir)
    ckpt_dir = workdir / "checkpoints"

    seed = int(fc.seed if fc.seed is not None else cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    model, tokenizer, fcfg = build_model(cfg, fc.init, foundation_dir, backbones_dir, stats)
    counts = freeze_for_finetuning(model, fc.freeze_vision, fc.freeze_projector)
    log.info("policy model: %(parameters)d parameters, %(trainable)d trainable", counts)
    processor = VLAProcessor(tokenizer, fcfg.vision.image_size, fcfg.max_text_tokens)
    task = FinetuneTask(model, processor, stats, fc)

    loader_cfg = _loader_config(cfg, fc.batch_size)
    world = int(fc.devices) * int(fc.num_nodes)
    train_loader = make_loader(
        train_shards,
        task="low_level",
        cfg=loader_cfg,
        train=True,
        epoch_samples=int(fc.val_every_steps) * int(fc.batch_size),
        seed=seed,
    )
    val_loader = (
        make_loader(val_shards, task="low_level", cfg=loader_cfg, train=False) if val_shards else None
    )

    checkpoint = ModelCheckpoint(
        dirpath=str(ckpt_dir),
        filename="step-{step:07d}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=int(fc.checkpoint_every_steps),
        save_on_train_epoch_end=False,
    )
    trainer = L.Trainer(
        accelerator="auto",
        devices=int(fc.devices),
        num_nodes=int(fc.num_nodes),
        strategy=_strategy(fc.strategy, int(fc.devices), int(fc.num_nodes)),
        precision=_precision(fc.precision),
        max_steps=int(fc.max_steps),
        max_epochs=-1,
        gradient_clip_val=float(fc.gradient_clip) if fc.gradient_clip else None,
        limit_val_batches=int(fc.val_batches) if val_loader is not None else 0,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        logger=make_loggers(cfg, workdir),
        callbacks=[checkpoint],
        plugins=[atomic_checkpoint_io()],
        log_every_n_steps=int(cfg.logging.log_every_steps),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        use_distributed_sampler=False,  # the shard loader splits by rank itself
    )
    last = ckpt_dir / "last.ckpt"
    resume = str(last) if last.is_file() else None
    if resume:
        log.info("resuming finetuning from %s", resume)
    with warnings.catch_warnings():
        # the frozen vision towers are in eval mode on purpose (no dropout noise in frozen features)
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer.fit(task, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=resume)
    if world > 1 and trainer.world_size != world:
        log.warning("expected %d processes, trainer ran %d", world, trainer.world_size)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    state = trainer.strategy.lightning_module_state_dict()
    if trainer.is_global_zero:
        model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(model_state)
        extra = {
            "init": fc.init,
            "foundation_dir": str(foundation_dir) if foundation_dir else None,
            "backbones_dir": str(backbones_dir),
            "action_stats": str(action_stats_path),
            "training": {"steps": int(trainer.global_step), "seed": seed, "val_metrics": metrics, **counts},
        }
        pre = preprocessor_settings(fcfg, cfg.data.sharding, loader_cfg)
        save_policy(model.float(), tokenizer, fcfg, stats, pre, out_dir, extra)
        log.info("policy written to %s (%d steps, %s)", out_dir, trainer.global_step, metrics)
    trainer.strategy.barrier()
    return metrics
