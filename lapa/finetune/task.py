"""The Lightning module of stage 3: per-dimension cross-entropy on binned actions.

The model (``PolicyModel``) knows nothing of training; this module holds the loss, the
optimiser, the schedule and the validation metrics.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from lapa.config.finetune import FinetuneConfig
from lapa.data.action_codec import ActionStats
from lapa.evaluation.metrics import ActionMetrics
from lapa.policy.build import PolicyModel
from lapa.utils.schedule import warmup_cosine_scheduler
from lapa.vla.heads import binned_cross_entropy


class FinetuneTask(L.LightningModule):
    def __init__(self, model: PolicyModel, processor, stats: ActionStats, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model = model
        self.processor = processor  # VLAProcessor: the preprocessing the deployed policy uses too
        self.stats = stats
        self.cfg = cfg
        self._val_metrics: ActionMetrics | None = None
        self._val_losses: list[float] = []

    def _bins(self, actions: torch.Tensor) -> torch.Tensor:
        bins = self.stats.quantize(actions.detach().float().cpu().numpy())
        return torch.from_numpy(bins).to(actions.device)

    def _forward(self, batch: dict) -> torch.Tensor:
        inputs = self.processor(batch["image"], batch["text"])
        return self.model(*(inputs[k].to(self.device) for k in ("images", "input_ids", "attention_mask")))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self._forward(batch)
        loss = binned_cross_entropy(logits, self._bins(batch["action"]))
        with torch.no_grad():
            acc = (logits.argmax(-1) == self._bins(batch["action"])).float().mean()
        bs = len(batch["text"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/bin_accuracy", acc, batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_metrics = ActionMetrics(self.stats)
        self._val_losses = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self._forward(batch)
        bins = self._bins(batch["action"])
        self._val_losses.append(float(binned_cross_entropy(logits, bins)))
        self._val_metrics.update(logits.argmax(-1).cpu().numpy(), batch["action"].float().cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        if self._val_metrics is None or self._val_metrics.count == 0:
            return
        m = self._val_metrics.compute()
        self.log("val/loss", float(np.mean(self._val_losses)), sync_dist=True)
        self.log("val/action_mse", m["mse"], sync_dist=True)
        self.log("val/bin_accuracy", m["bin_accuracy"], sync_dist=True)
        for d, v in enumerate(m["mse_per_dim"]):
            self.log(f"val/action_mse_dim{d}", v, sync_dist=True)

    def configure_optimizers(self):
        cfg = self.cfg
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        body = [p for p in self.model.parameters() if p.requires_grad and id(p) not in head_ids]
        groups = [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr or cfg.lr}]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        sched = warmup_cosine_scheduler(
            opt, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, lr=cfg.lr, min_lr=cfg.min_lr
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
