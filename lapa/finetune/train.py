"""``lapa finetune`` with Lightning Fabric, litgpt-style: ``setup`` builds, ``fit`` loops, ``export`` writes.

The policy network (``lapa.policy.build``) is the foundation VLA with one action query and a
binned continuous head, trained with per-dimension cross-entropy on actions binned by the
action statistics. It runs on the foundation stage's plan (``lapa.vla.parallelize``): one
process, DDP, or FSDP2 (``fully_shard``, one unit per decoder layer), chosen by
``finetune.training.{devices,num_nodes,strategy}``.

Data: step-based. Loader epoch ``e`` is ``checkpoint_every_steps`` batches per rank
(``max_steps`` when 0), drawn with seed (seed, rank, e) alone: the stream does not depend on the
model built or on any global random state, so every arm (scratch, lapa, action-pretrained) sees
the same batches in the same order with the same augmentation draws.

Resume: the run folder ``<workdir>/<identity>/`` (``lapa.utils.run``) is named by the inputs'
content (foundation, backbones, action statistics, demonstrations) and the settings, so a rerun
resumes only its own run; model, optimizer, scheduler, step, data position and random state are
restored, so a killed and rerun job writes exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapa.config.training import not_in_identity
from lapa.data.action_codec import ActionStats
from lapa.data.pipeline import broadcast_validation_set
from lapa.data.stream import train_stream, validation_batches, validation_shards
from lapa.utils.run import (
    FabricRun,
    RequeueSignal,
    RunIdentity,
    StepSchedule,
    checkpoint_or_requeue,
    config_values,
    default_workdir,
    finalize_loggers,
    log_metrics,
    make_loggers,
    norm_value,
    open_fabric_run_dir,
    resume_latest,
    run_identity,
    set_cpu_threads,
    stopped_early,
)

log = logging.getLogger(__name__)

INITS = ("foundation", "scratch")
KEY = "finetune.training"


def _loader_config(cfg: Any, batch_size: int):
    from omegaconf import OmegaConf

    loader = OmegaConf.to_object(cfg.data.loader) if OmegaConf.is_config(cfg.data.loader) else cfg.data.loader
    return replace(loader, batch_size=int(batch_size))


def check_init(init: str, foundation_dir, backbones_dir) -> None:
    """The initialisation and the directories it needs, checked before anything is read."""
    if init not in INITS:
        raise ValueError(f"finetune.init must be one of {INITS}, got {init!r}")
    if not Path(backbones_dir).is_dir():
        raise FileNotFoundError(f"--backbones directory not found: {backbones_dir}")
    if init == "scratch":
        if foundation_dir is not None:
            raise ValueError(
                "finetune.init=scratch trains without a foundation checkpoint: omit --foundation"
            )
        return
    if foundation_dir is None:
        raise ValueError("--foundation is required unless finetune.init=scratch")
    if not Path(foundation_dir).is_dir():
        raise FileNotFoundError(f"--foundation directory not found: {foundation_dir}")


def build_model(
    cfg: Any, init: str, foundation_dir, backbones_dir, stats: ActionStats, *, meta_llm: bool = False
):
    """(model, tokenizer, foundation section, source) for the chosen initialisation.

    With ``meta_llm`` (FSDP2) the Llama is on the meta device and ``source`` holds the weights
    each rank reads its shard of after sharding (``lapa.vla.meta``); else ``source`` is None.
    """
    from lapa.policy.build import check_backbones_for, policy_from_backbones, policy_from_foundation

    check_init(init, foundation_dir, backbones_dir)
    n, bins = stats.action_dim, stats.num_bins
    if init == "scratch":
        return policy_from_backbones(cfg.foundation, backbones_dir, n, bins, meta_llm=meta_llm)
    model, tokenizer, fcfg, source = policy_from_foundation(foundation_dir, n, bins, meta_llm=meta_llm)
    check_backbones_for(fcfg, backbones_dir)
    return model, tokenizer, fcfg, source


def identity(
    cfg: Any, foundation_dir, backbones_dir, action_stats_path, shards_dir, cache_dir=None
) -> RunIdentity:
    """What decides the policy: the four inputs by content, the seed and the sections the run reads.

    ``foundation`` (less its training keys) builds the scratch arm's network, ``data.sharding``
    is recorded in the policy's preprocessing, ``data.loader`` makes the batches.
    """
    config = config_values(
        cfg,
        ["seed", "finetune", "foundation", "data.loader", "data.sharding"],
        [
            *not_in_identity(KEY),
            "foundation.training",
            "finetune.stats",
            "finetune.decoding",
            "data.sharding.workers",
        ],
    )
    inputs = {
        "foundation": foundation_dir,
        "backbones": backbones_dir,
        "action_stats": action_stats_path,
        "shards": shards_dir,
    }
    return run_identity("finetune", inputs, config, cache_dir=cache_dir)


@dataclass
class Run(FabricRun):
    """Everything ``fit`` and ``export`` need, built by ``setup`` (``model``: the policy network)."""

    processor: Any
    tokenizer: Any
    fcfg: Any  # the foundation section the network was built from
    stats: ActionStats
    counts: dict  # parameters, trainable
    train_shards: list[str]
    val_shards: list[str]
    val_set: Any  # lapa.data.pipeline.ValidationSet, None without validation
    loader_cfg: Any
    seed: int
    batches_per_epoch: int
    out_dir: Path
    sources: dict  # what the policy's config.json records about its inputs


def setup(
    fabric: Any,
    plan: Any,
    cfg: Any,
    *,
    foundation_dir,
    backbones_dir,
    action_stats_path,
    shards_dir,
    out_dir,
    workdir=None,
) -> Run:
    """Check the inputs, open the run folder, build network, optimizer and data; resume the run."""
    from lapa.data.pipeline import list_shards, read_info
    from lapa.policy.build import freeze_for_finetuning
    from lapa.utils.optim import make_optimizer
    from lapa.vla.meta import setup_meta_module
    from lapa.vla.processor import VLAProcessor

    fc, tcfg = cfg.finetune, cfg.finetune.training
    check_init(fc.init, foundation_dir, backbones_dir)
    check_target(fc)
    stats = ActionStats.load(action_stats_path)
    info = read_info(shards_dir)
    if info.get("action_dim") is not None and int(info["action_dim"]) != stats.action_dim:
        raise ValueError(
            f"{action_stats_path} has action_dim {stats.action_dim} but "
            f"{shards_dir}/info.json says {info['action_dim']}"
        )
    train_shards = list_shards(shards_dir, "train")
    val_shards = validation_shards(shards_dir, tcfg.val_samples, tcfg.val_every_steps)
    workdir = Path(workdir) if workdir else default_workdir(out_dir)
    run_dir = open_fabric_run_dir(
        fabric,
        lambda: identity(cfg, foundation_dir, backbones_dir, action_stats_path, shards_dir, workdir),
        workdir,
    )

    seed = int(tcfg.seed if tcfg.seed is not None else cfg.seed)
    val_set = broadcast_validation_set(fabric, val_shards, tcfg.val_samples, seed, KEY, shards_dir)
    fabric.seed_everything(seed)  # the same new head on every rank (the data stream has its own seeds)
    sharded = plan.strategy == "fsdp2"  # then no rank builds the whole Llama (lapa.vla.meta)
    model, tokenizer, fcfg, source = build_model(
        cfg, fc.init, foundation_dir, backbones_dir, stats, meta_llm=sharded
    )
    counts = freeze_for_finetuning(model, fc.freeze_vision, fc.freeze_projector)
    if fabric.global_rank == 0:
        log.info("policy model: %(parameters)d parameters, %(trainable)d trainable", counts)
    if tcfg.activation_checkpointing:
        model.enable_activation_checkpointing()
    wrapped = setup_meta_module(fabric, model, source) if sharded else fabric.setup_module(model)
    optimizer, scheduler = make_optimizer(model, tcfg, head_prefix="head.", head_lr=tcfg.head_lr)
    optimizer = fabric.setup_optimizers(optimizer)

    every = int(tcfg.checkpoint_every_steps) or int(tcfg.max_steps)
    run = Run(
        fabric=fabric,
        plan=plan,
        cfg=cfg,
        model=wrapped,
        raw_model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        processor=VLAProcessor(tokenizer, fcfg.vision.image_size, fcfg.max_text_tokens),
        tokenizer=tokenizer,
        fcfg=fcfg,
        stats=stats,
        counts=counts,
        train_shards=train_shards,
        val_shards=val_shards,
        val_set=val_set,
        loader_cfg=_loader_config(cfg, tcfg.batch_size),
        seed=seed,
        batches_per_epoch=max(1, every),
        out_dir=Path(out_dir),
        sources={
            "init": fc.init,
            "foundation_dir": str(foundation_dir) if foundation_dir else None,
            "backbones_dir": str(backbones_dir),
            "action_stats": str(action_stats_path),
        },
        run_dir=run_dir,
        loggers=make_loggers(cfg, run_dir.logs, "finetune", fabric=True) if fabric.global_rank == 0 else [],
    )
    _resume(run)
    return run


def _resume(run: Run) -> None:
    max_steps = int(run.cfg.finetune.training.max_steps)
    resume_latest(run, max_steps, f"{KEY}.max_steps", "finetuning")


# -- data and loss ----------------------------------------------------------------------------


def train_batches(run: Run):
    """Training batches forever from the saved data position; epoch ``e`` seeded by (seed, rank, e)."""
    fabric = run.fabric
    yield from train_stream(
        run.train_shards,
        "low_level",
        run.loader_cfg,
        run.progress,
        run.batches_per_epoch,
        seed=run.seed,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
    )


def _forward(run: Run, batch: dict) -> torch.Tensor:
    """Logits [B, action_dim, num_bins]."""
    inputs = run.processor(batch["image"], batch["text"])
    device = run.fabric.device
    return run.model(*(inputs[k].to(device) for k in ("images", "input_ids", "attention_mask")))


def _bins(run: Run, actions: torch.Tensor) -> torch.Tensor:
    """The target bins (int64 [B, action_dim]) of continuous actions."""
    bins = run.stats.quantize(actions.detach().float().cpu().numpy())
    return torch.from_numpy(bins).to(run.fabric.device)


def check_target(fc: Any) -> None:
    """``finetune.decoding``, ``label_sigma`` and ``l1_weight``, checked before anything runs."""
    from lapa.vla.heads import check_decoding

    check_decoding(str(fc.decoding), "finetune.decoding")
    for key in ("label_sigma", "l1_weight"):
        if not float(getattr(fc, key)) >= 0:
            raise ValueError(f"finetune.{key} must be >= 0, got {getattr(fc, key)}")


def _loss(run: Run, logits: torch.Tensor, actions: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """``lapa.vla.heads.binned_loss`` with the run's target options; the L1 term on normalised actions."""
    from lapa.vla.heads import bin_values, binned_loss

    fc = run.cfg.finetune
    l1_weight = float(fc.l1_weight)
    values = target = None
    if l1_weight > 0:
        device = logits.device
        values = torch.from_numpy(run.stats.normalize(bin_values(run.stats).T).T).to(device)
        true = np.clip(run.stats.normalize(actions.detach().float().cpu().numpy()), -1.0, 1.0)
        target = torch.from_numpy(true).to(device)
    return binned_loss(
        logits, bins, label_sigma=float(fc.label_sigma), l1_weight=l1_weight, values=values, target=target
    )


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Loss, normalised-action MSE and bin accuracy over the validation set, beside chance.

    The set (``run.val_set``) is the whole val split or its seeded sample stratified by task
    (``finetune.training.val_samples``), the same for every arm of a seed. Each rank reads its own
    contiguous part; ranks step in lockstep (a sharded forward is collective) and sum their counts
    before the figures are computed. ``val/bin_accuracy_chance`` is the majority-bin rate of the
    validated actions (``ActionMetrics``), ``val/samples`` the number of frames validated.
    ``val/loss`` is the plain cross-entropy whatever the target; ``val/action_mse`` decodes with
    ``finetune.decoding``.
    """
    from lapa.evaluation.metrics import ActionMetrics
    from lapa.vla.heads import binned_cross_entropy, decode_actions

    fabric = run.fabric
    decoding = str(run.cfg.finetune.decoding)
    metrics = ActionMetrics(run.stats)
    loss_sum = 0.0
    run.model.eval()
    for batch, counted in validation_batches(run.val_set, "low_level", run.loader_cfg, fabric):
        logits = _forward(run, batch)
        if counted:
            loss = binned_cross_entropy(logits, _bins(run, batch["action"]))
            loss_sum += float(loss) * len(batch["text"])
            metrics.update(
                logits.argmax(-1).cpu().numpy(),
                batch["action"].float().cpu().numpy(),
                pred_actions=decode_actions(logits, run.stats, decoding),
            )
    run.model.train()
    dim, bins = run.stats.action_dim, run.stats.num_bins
    if fabric.world_size > 1:  # sum every rank's counts, then compute as one
        flat = np.concatenate(
            [metrics.sq_err, metrics.correct, metrics.true_bins.ravel(), [metrics.count, loss_sum]]
        )
        flat = fabric.all_reduce(
            torch.as_tensor(flat, dtype=torch.float64, device=fabric.device), reduce_op="sum"
        )
        flat = flat.cpu().numpy()
        metrics.sq_err = flat[:dim]
        metrics.correct = np.rint(flat[dim : 2 * dim]).astype(np.int64)
        metrics.true_bins = np.rint(flat[2 * dim : 2 * dim + dim * bins]).astype(np.int64).reshape(dim, bins)
        metrics.count, loss_sum = int(round(flat[-2])), float(flat[-1])
    if metrics.count == 0:
        return {}
    figures = metrics.compute()
    out = {
        "val/loss": loss_sum / metrics.count,
        "val/action_mse": figures["mse"],
        "val/bin_accuracy": figures["bin_accuracy"],
        "val/bin_accuracy_chance": figures["bin_accuracy_chance"],  # the majority-bin rate
        "val/samples": float(figures["num_samples"]),
    }
    out.update({f"val/action_mse_dim{d}": float(v) for d, v in enumerate(figures["mse_per_dim"])})
    out.update(
        {
            f"val/bin_accuracy_chance_dim{d}": float(v)
            for d, v in enumerate(figures["bin_accuracy_chance_per_dim"])
        }
    )
    return out


# -- loop -------------------------------------------------------------------------------------


def fit(run: Run) -> dict:
    """Train to ``max_steps`` (or ``stop_after_steps`` more, or until Slurm asks to requeue), then export.

    Returns ``{"complete", "step", <last train/val metrics>}``; the policy is written only when
    complete. An incomplete run leaves a checkpoint the same command resumes.
    """
    fabric, tcfg = run.fabric, run.cfg.finetune.training
    schedule = StepSchedule.of(
        tcfg, run.cfg.logging.log_every_steps, run.progress["step"], validation=run.val_set is not None
    )
    clip = float(tcfg.gradient_clip or 0.0)
    multi = fabric.world_size > 1

    metrics: dict[str, float] = {}
    requeue = RequeueSignal()
    batches = train_batches(run)
    run.model.train()
    sums, steps_summed = torch.zeros(2, dtype=torch.float64), 0
    try:
        while run.progress["step"] < schedule.stop_at:
            batch = next(batches)
            logits = _forward(run, batch)
            bins = _bins(run, batch["action"])
            loss = _loss(run, logits, batch["action"], bins)
            fabric.backward(loss)
            grad_norm = fabric.clip_gradients(run.model, run.optimizer, max_norm=clip) if clip > 0 else None
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            lr = run.scheduler.get_last_lr()[0]
            run.scheduler.step()
            run.progress["step"] += 1
            step = run.progress["step"]
            with torch.no_grad():
                accuracy = (logits.argmax(-1) == bins).float().mean()
            sums += torch.tensor([float(loss.detach()), float(accuracy)], dtype=torch.float64)
            steps_summed += 1

            if schedule.log_due(step):
                mean = (sums / steps_summed).to(fabric.device)
                if multi:
                    mean = fabric.all_reduce(mean, reduce_op="mean")
                metrics = {
                    "train/loss": float(mean[0]),
                    "train/bin_accuracy": float(mean[1]),
                    "train/lr": lr,
                    "train/grad_norm": norm_value(grad_norm),
                }
                log_metrics(run.loggers, metrics, step=step)
                if fabric.global_rank == 0:
                    log.info("step %d loss %.4f lr %.2e", step, metrics["train/loss"], lr)
                sums, steps_summed = torch.zeros(2, dtype=torch.float64), 0
            if schedule.val_due(step):
                val = validate(run)
                log_metrics(run.loggers, val, step=step)
                metrics.update(val)
            if checkpoint_or_requeue(run, schedule, requeue, int(tcfg.keep_last)):
                break
    finally:
        batches.close()
        requeue.close()

    if stopped_early(run, schedule.max_steps):
        return {"complete": False, "step": run.progress["step"], **metrics}
    val_metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
    if schedule.validates and not val_metrics:  # resumed a finished run
        val_metrics = validate(run)
    export(run, val_metrics)
    return {"complete": True, "step": run.progress["step"], **metrics, **val_metrics}


def _plain_model(run: Run, state: dict) -> torch.nn.Module:
    """An unsharded policy network holding ``state`` (built on the meta device, then assigned)."""
    from omegaconf import OmegaConf
    from transformers import LlamaModel

    from lapa.policy.build import build_policy_model

    no_files = {"vision": {"siglip": {"weights": None}, "dinov2": {"weights": None}}}
    fcfg = OmegaConf.merge(run.fcfg, no_files) if OmegaConf.is_config(run.fcfg) else run.fcfg
    with torch.device("meta"):
        model = build_policy_model(
            fcfg, run.stats.action_dim, run.stats.num_bins, llm=LlamaModel(run.raw_model.llm.config)
        )
    model.load_state_dict(state, assign=True)
    return model


def export(run: Run, val_metrics: dict) -> None:
    """Gather the weights and write the policy directory at the output path (rank 0)."""
    from lapa.policy.policy import preprocessor_settings, save_policy
    from lapa.vla.parallelize import full_state_dict

    fabric = run.fabric
    if run.sharded:
        state = full_state_dict(run.raw_model, run.plan.strategy)  # collective
        model = _plain_model(run, state) if fabric.global_rank == 0 else None
    else:
        model = run.raw_model
    if fabric.global_rank == 0:
        training = {
            "steps": int(run.progress["step"]),
            "seed": run.seed,
            "val_metrics": val_metrics,
            **run.counts,
        }
        fc = run.cfg.finetune
        target = {"label_sigma": float(fc.label_sigma), "l1_weight": float(fc.l1_weight)}
        training["target"] = target
        extra = {**run.sources, "decoding": str(fc.decoding), "training": training}
        pre = preprocessor_settings(run.fcfg, run.cfg.data.sharding, run.loader_cfg)
        save_policy(model.float(), run.tokenizer, run.fcfg, run.stats, pre, run.out_dir, extra)
        log.info("policy written to %s (%d steps, %s)", run.out_dir, run.progress["step"], val_metrics)
    fabric.barrier()


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
    """The ``lapa finetune`` entry point: plan, launch, setup, fit; returns the last metrics."""
    from lapa.vla.parallelize import make_fabric, plan_run

    tcfg = cfg.finetune.training
    check_init(cfg.finetune.init, foundation_dir, backbones_dir)
    plan = plan_run(tcfg, KEY)
    workdir = Path(workdir) if workdir else default_workdir(out_dir)
    fabric = make_fabric(plan, activation_checkpointing=False)
    fabric.launch()
    if plan.accelerator == "cpu":
        set_cpu_threads(tcfg.cpu_threads, plan.devices)
    run = setup(
        fabric,
        plan,
        cfg,
        foundation_dir=foundation_dir,
        backbones_dir=backbones_dir,
        action_stats_path=action_stats_path,
        shards_dir=shards_dir,
        out_dir=out_dir,
        workdir=workdir,
    )
    result = fit(run)
    finalize_loggers(run.loggers)
    return result
