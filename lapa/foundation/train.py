"""Foundation training with Lightning Fabric (spec 2.2.4), litgpt-style: ``setup`` builds, ``fit`` loops.

One optimizer step = ``accumulation`` micro-batches per rank; ``effective_batch_size`` =
batch_size_per_device x world size x accumulation. The data stream is step-based: loader epoch
``e`` is ``checkpoint_every_steps x accumulation`` micro-batches drawn with seed (seed, rank, e),
so a checkpoint at an epoch boundary resumes without reading data twice, and one elsewhere
(``stop_after_steps``, the final step, a Slurm requeue) fast-forwards the same stream. Model,
optimizer, scheduler, step, data position and RNG are restored, so a resumed CPU run reaches
exactly the weights of an uninterrupted one. The run folder, its identity (inputs by content,
config) and the checkpoint format come from ``lapa.utils.run`` and ``lapa.utils.checkpoint``.

Launch: under Slurm ``srun lapa train-foundation ...`` with ``foundation.training.devices`` =
tasks per node and ``num_nodes`` = nodes (Fabric reads ranks from the Slurm environment);
locally ``lapa train-foundation ... foundation.training.devices=2 foundation.training.accelerator=cpu``
starts the extra process itself (gloo).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lapa.config.training import not_in_identity
from lapa.data.pipeline import broadcast_validation_set
from lapa.data.stream import train_stream, validation_batches, validation_shards
from lapa.foundation.data import LabelSpec, check_batch, label_spec, preflight_shards
from lapa.foundation.metrics import LatentAccuracy
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
from lapa.vla.parallelize import RunPlan, full_state_dict, local_parameter_count, make_fabric, plan_run

log = logging.getLogger(__name__)

KEY = "foundation.training"


@dataclass
class Run(FabricRun):
    """Everything ``fit`` needs, built by ``setup`` (``model``: the VLAModel)."""

    processor: Any
    tokenizer: Any
    spec: LabelSpec
    train_shards: list[str]
    val_shards: list[str]
    val_set: Any  # lapa.data.pipeline.ValidationSet, None without validation
    loader_cfg: Any
    accumulation: int
    micro_per_epoch: int
    seed: int
    out_dir: Path


def accumulation_steps(tcfg: Any, world_size: int) -> int:
    per_step = int(tcfg.batch_size_per_device) * world_size
    if int(tcfg.effective_batch_size) % per_step:
        raise ValueError(
            f"foundation.training.effective_batch_size={tcfg.effective_batch_size} is not a multiple of "
            f"batch_size_per_device x world size = {per_step}"
        )
    return int(tcfg.effective_batch_size) // per_step


def identity(cfg: Any, backbones_dir, shards_dir, cache_dir=None) -> RunIdentity:
    """What decides the foundation weights: backbones and labelled shards by content, the config."""
    config = config_values(cfg, ["seed", "foundation", "data.loader"], not_in_identity(KEY))
    inputs = {"backbones": backbones_dir, "shards": shards_dir}
    return run_identity("foundation", inputs, config, cache_dir=cache_dir)


def setup(fabric: Any, plan: RunPlan, cfg: Any, backbones_dir, shards_dir, out_dir, workdir=None) -> Run:
    """Build model, optimizer, processor and data description; resume this run's latest checkpoint."""
    from omegaconf import OmegaConf

    from lapa.data.pipeline import list_shards
    from lapa.utils.optim import make_optimizer
    from lapa.vla.backbones import check_vision_matches, load_backbones
    from lapa.vla.heads import LatentActionHead
    from lapa.vla.meta import setup_meta_module, sharded_source
    from lapa.vla.model import VLAModel
    from lapa.vla.processor import VLAProcessor

    fcfg, tcfg = cfg.foundation, cfg.foundation.training
    workdir = Path(workdir) if workdir else default_workdir(out_dir)
    spec = label_spec(shards_dir, fcfg.head)
    train_shards = list_shards(shards_dir, "train")
    val_shards = validation_shards(shards_dir, tcfg.val_samples, tcfg.val_every_steps)
    problem = None
    if fabric.global_rank == 0:  # one reader; every rank raises the same error (none waits in a collective)
        try:
            preflight_shards(train_shards + val_shards, spec)
        except ValueError as exc:
            problem = str(exc)
    problem = fabric.broadcast(problem)
    if problem:
        raise ValueError(problem)
    accumulation = accumulation_steps(tcfg, fabric.world_size)
    seed = int(tcfg.seed if tcfg.seed is not None else cfg.seed)
    val_set = broadcast_validation_set(fabric, val_shards, tcfg.val_samples, seed, KEY, shards_dir)
    run_dir = open_fabric_run_dir(fabric, lambda: identity(cfg, backbones_dir, shards_dir, workdir), workdir)

    # Under FSDP2 the Llama is built on the meta device and each rank later reads only its own
    # rows of the backbone weights (lapa.vla.meta): no rank ever holds the whole model.
    sharded = plan.strategy == "fsdp2"
    backbones = load_backbones(backbones_dir, meta_llm=sharded)
    check_vision_matches(fcfg.vision, backbones.info, backbones_dir)
    fabric.seed_everything(seed)  # identical initial weights on every rank (FSDP2 shards one model)
    head = LatentActionHead(backbones.llm.config.hidden_size, spec.num_tokens, spec.vocab_size)
    raw = VLAModel(fcfg, num_queries=spec.num_tokens, head=head, llm=backbones.llm, vocab_size=None)
    try:
        raw.vision.load_state_dict(backbones.vision_state)
    except RuntimeError as exc:
        raise ValueError(f"{backbones_dir}/vision.safetensors does not fit foundation.vision: {exc}") from exc
    if tcfg.activation_checkpointing:
        raw.enable_activation_checkpointing()
    total_params = sum(p.numel() for p in raw.parameters())
    llm_total = sum(p.numel() for p in raw.llm.parameters())

    if sharded:
        source = sharded_source(raw, Path(backbones_dir) / "llm")
        model = setup_meta_module(fabric, raw, source)
    else:
        model = fabric.setup_module(raw)
    optimizer, scheduler = make_optimizer(raw, tcfg)
    optimizer = fabric.setup_optimizers(optimizer)
    _write_rank_layout(run_dir.path, fabric, plan, raw, total_params, llm_total)

    loader_cfg = OmegaConf.merge(cfg.data.loader, {"batch_size": int(tcfg.batch_size_per_device)})
    every = int(tcfg.checkpoint_every_steps) or int(tcfg.max_steps)
    run = Run(
        fabric=fabric,
        plan=plan,
        cfg=cfg,
        model=model,
        raw_model=raw,
        optimizer=optimizer,
        scheduler=scheduler,
        processor=VLAProcessor(backbones.tokenizer, int(fcfg.vision.image_size), int(fcfg.max_text_tokens)),
        tokenizer=backbones.tokenizer,
        spec=spec,
        train_shards=train_shards,
        val_shards=val_shards,
        val_set=val_set,
        loader_cfg=loader_cfg,
        accumulation=accumulation,
        micro_per_epoch=max(1, every) * accumulation,
        seed=seed,
        out_dir=Path(out_dir),
        run_dir=run_dir,
        loggers=make_loggers(cfg, run_dir.logs, "foundation", fabric=True) if fabric.global_rank == 0 else [],
    )
    _resume(run)
    return run


def _write_rank_layout(workdir: Path, fabric, plan: RunPlan, raw, total: int, llm_total: int) -> None:
    """Per-rank parameter counts (what each rank holds after sharding), for inspection."""
    layout = {
        "rank": fabric.global_rank,
        "world_size": fabric.world_size,
        "strategy": plan.strategy,
        "params_total": total,
        "params_local": local_parameter_count(raw),
        "llm_params_total": llm_total,
        "llm_params_local": local_parameter_count(raw.llm),
    }
    from lapa.utils.io import atomic_write_json

    atomic_write_json(workdir / "ranks" / f"rank-{fabric.global_rank}.json", layout)


def _resume(run: Run) -> None:
    max_steps = int(run.cfg.foundation.training.max_steps)
    resume_latest(run, max_steps, f"{KEY}.max_steps")


# -- data -------------------------------------------------------------------------------------


def _train_batches(run: Run):
    """Micro-batches forever, from the saved data position on (epochs of ``micro_per_epoch``)."""
    fabric = run.fabric
    stream = train_stream(
        run.train_shards,
        "foundation",
        run.loader_cfg,
        run.progress,
        run.micro_per_epoch,
        seed=run.seed,
        rank=fabric.global_rank,
        world_size=fabric.world_size,
    )
    for batch in stream:
        check_batch(batch, run.spec, run.train_shards)
        yield batch


def _inputs(run: Run, batch: dict) -> tuple[dict, torch.Tensor]:
    inputs = run.processor(batch["image"], batch["text"])
    device = run.fabric.device
    return {k: v.to(device) for k, v in inputs.items()}, batch["latent"].to(device)


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


# -- loop -------------------------------------------------------------------------------------


@torch.no_grad()
def validate(run: Run) -> dict[str, float]:
    """Loss and top-1/top-3 latent accuracy over the validation set, beside chance.

    The set (``run.val_set``) is the whole val split or its seeded sample stratified by task
    (``foundation.training.val_samples``); each rank reads its own contiguous part, ranks step in
    lockstep (``validation_batches``) and sum their counts before the figures are computed. Chance:
    ``top{k}_uniform`` (k / vocab) and ``top{k}_majority`` (always the k commonest codes of each
    position of the validated targets); ``samples`` is the number of samples validated.
    """
    fabric = run.fabric
    acc = LatentAccuracy(run.spec.num_tokens, run.spec.vocab_size)
    run.model.eval()
    for batch, counted in validation_batches(run.val_set, "foundation", run.loader_cfg, fabric):
        if counted:
            check_batch(batch, run.spec, run.val_shards)
        inputs, targets = _inputs(run, batch)
        logits = run.model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
        if counted:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            acc.update(logits, targets, float(loss.view(targets.shape).mean(1).sum()))
    run.model.train()
    counts = acc.counts.to(fabric.device)
    if fabric.world_size > 1:
        counts = fabric.all_reduce(counts, reduce_op="sum")
    return acc.compute(counts)


def fit(run: Run) -> dict:
    """Train to ``max_steps`` (or ``stop_after_steps`` more, or until Slurm asks to requeue), then export.

    Returns ``{"complete", "step", <last train/val metrics>}``; the checkpoint is written only when
    complete. An incomplete run leaves a checkpoint that the same command resumes.
    """
    fabric, tcfg = run.fabric, run.cfg.foundation.training
    schedule = StepSchedule.of(
        tcfg, run.cfg.logging.log_every_steps, run.progress["step"], validation=run.val_set is not None
    )
    clip = float(tcfg.gradient_clip or 0.0)
    multi = fabric.world_size > 1
    samples_per_step = int(tcfg.batch_size_per_device) * fabric.world_size * run.accumulation

    metrics: dict[str, float] = {}
    if schedule.validates and run.progress["step"] == 0:
        metrics = {f"val/{k}": v for k, v in validate(run).items()}
        log_metrics(run.loggers, metrics, step=0)
    requeue = RequeueSignal()
    batches = _train_batches(run)
    run.model.train()
    loss_sum, loss_count, t0, steps_timed = 0.0, 0, time.perf_counter(), 0
    try:
        while run.progress["step"] < schedule.stop_at:
            for micro in range(run.accumulation):
                batch = next(batches)
                inputs, targets = _inputs(run, batch)
                last = micro == run.accumulation - 1
                with fabric.no_backward_sync(run.model, enabled=multi and not last):
                    logits = run.model(inputs["images"], inputs["input_ids"], inputs["attention_mask"])
                    loss = _loss(logits, targets)
                    fabric.backward(loss / run.accumulation)
                loss_sum += float(loss.detach())
                loss_count += 1
            grad_norm = fabric.clip_gradients(run.model, run.optimizer, max_norm=clip) if clip > 0 else None
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.scheduler.step()
            run.progress["step"] += 1
            step = run.progress["step"]
            steps_timed += 1

            if schedule.log_due(step):
                stats = torch.tensor([loss_sum, float(loss_count)], device=fabric.device)
                if multi:
                    stats = fabric.all_reduce(stats, reduce_op="sum")
                elapsed = time.perf_counter() - t0
                metrics = {
                    "train/loss": float(stats[0] / stats[1]),
                    "train/lr": run.scheduler.get_last_lr()[0],
                    "train/grad_norm": norm_value(grad_norm),
                    "train/samples_per_s": samples_per_step * steps_timed / max(elapsed, 1e-9),
                }
                log_metrics(run.loggers, metrics, step=step)
                if fabric.global_rank == 0:
                    log.info("step %d loss %.4f lr %.2e", step, metrics["train/loss"], metrics["train/lr"])
                loss_sum, loss_count, t0, steps_timed = 0.0, 0, time.perf_counter(), 0
            if schedule.val_due(step):
                val = {f"val/{k}": v for k, v in validate(run).items()}
                log_metrics(run.loggers, val, step=step)
                metrics.update(val)
                if fabric.global_rank == 0:
                    log.info(
                        "step %d val top1 %.3f (majority %.3f, uniform %.3f) top3 %.3f (majority %.3f) on %d",
                        step,
                        val["val/top1_acc"],
                        val["val/top1_majority"],
                        val["val/top1_uniform"],
                        val["val/top3_acc"],
                        val["val/top3_majority"],
                        val["val/samples"],
                    )
            if checkpoint_or_requeue(run, schedule, requeue, int(tcfg.keep_last)):
                break
    finally:
        batches.close()
        requeue.close()

    if stopped_early(run, schedule.max_steps):
        return {"complete": False, "step": run.progress["step"], **metrics}
    if schedule.validates and not any(k.startswith("val/") for k in metrics):  # resumed a finished run
        metrics.update({f"val/{k}": v for k, v in validate(run).items()})
    export(run, metrics)
    return {"complete": True, "step": run.progress["step"], **metrics}


def export(run: Run, metrics: dict) -> None:
    """Gather the weights and write the consolidated checkpoint at the output path (rank 0)."""
    from lapa.vla.checkpoint import save_foundation

    state = full_state_dict(run.raw_model, run.plan.strategy)
    if run.fabric.global_rank == 0:
        extra = {
            "step": run.progress["step"],
            "metrics": {k: float(v) for k, v in metrics.items()},
            "run_identity": run.run_dir.identity.digest,
        }
        save_foundation(
            run.raw_model, run.tokenizer, run.cfg.foundation, run.out_dir, extra, state_dict=state
        )
        log.info("foundation checkpoint written to %s", run.out_dir)
    run.fabric.barrier()


def train_foundation(cfg: Any, backbones_dir, shards_dir, out_dir, workdir=None) -> dict:
    """The ``lapa train-foundation`` entry point: plan, launch, setup, fit."""
    for label, path in (("backbones", backbones_dir), ("shards", shards_dir)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"--{label} directory not found: {path}")
    plan = plan_run(cfg.foundation.training, KEY)
    workdir = Path(workdir) if workdir else default_workdir(out_dir)
    fabric = make_fabric(plan, activation_checkpointing=False)
    fabric.launch()
    if plan.accelerator == "cpu":
        set_cpu_threads(cfg.foundation.training.cpu_threads, plan.devices)
    run = setup(fabric, plan, cfg, backbones_dir, shards_dir, out_dir, workdir)
    result = fit(run)
    finalize_loggers(run.loggers)
    return result
