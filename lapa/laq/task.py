"""The LightningModule of LAQ training (spec 2.1.4); the model itself lives in ``lapa.laq.model``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from lapa.laq import metrics as M
from lapa.laq.model import LAQModel, to_model_range


class LAQTask(L.LightningModule):
    """Losses, metrics, optimisation and reconstruction grids around a ``LAQModel``.

    ``arch`` is the architecture dict (``architecture_from_config``) and ``training`` the plain
    ``laq.training`` section; both are saved as hyper-parameters so ``load_laq`` can rebuild.
    """

    def __init__(self, arch: dict, training: dict, grid_dir: str | None = None):
        super().__init__()
        self.save_hyperparameters({"arch": arch, "training": training})
        self.model = LAQModel(arch)
        self.training_cfg = training
        self.grid_dir = Path(grid_dir) if grid_dir else None
        self.last_grid: Path | None = None
        self._val_rows: dict[str, list] = self._empty_rows()
        self.last_val_metrics: dict = {}

    # -- steps -----------------------------------------------------------------------------------
    def _shared_step(self, batch: dict):
        frame_t = to_model_range(batch["frame_t"])
        frame_t1 = to_model_range(batch["frame_t1"])
        out = self.model(frame_t, frame_t1)
        recon_loss = F.mse_loss(out.reconstruction.float(), frame_t1)
        total = recon_loss + out.vq_loss
        return frame_t, frame_t1, out, recon_loss, total

    def _code_stats(self, indices: torch.Tensor) -> dict:
        hist = M.code_histograms(indices.detach().cpu().numpy(), self.model.vocab_size)
        ppl = M.perplexity(hist)
        stats = {f"perplexity/pos{t}": float(p) for t, p in enumerate(ppl)}
        stats["perplexity_mean"] = float(ppl.mean())
        stats["utilisation"] = float(M.utilisation(hist).mean())
        return stats

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        frame_t, frame_t1, out, recon_loss, total = self._shared_step(batch)
        bs = frame_t.shape[0]
        logs = {
            "train/loss_total": total,
            "train/loss_reconstruction": recon_loss,
            "train/loss_codebook": out.codebook_loss,
            "train/loss_commitment": out.commitment_loss,
        }
        every = max(1, int(self.training_cfg.get("log_every_steps", 10)))
        if self.global_step % every == 0:
            with torch.no_grad():
                logs["train/psnr"] = M.psnr(out.reconstruction, frame_t1)
                logs["train/psnr_copy"] = M.psnr(frame_t, frame_t1)
            logs.update({f"train/{k}": v for k, v in self._code_stats(out.indices).items()})
            logs["train/code_restarts"] = float(self.model.quantizer.restarts)
        self.log_dict(logs, batch_size=bs, prog_bar=False)
        self.log("loss", total, batch_size=bs, prog_bar=True, logger=False)
        return total

    @staticmethod
    def _empty_rows() -> dict[str, list]:
        # codes; true actions; frame t pooled small (the shortcut probe's input); episode ids (the
        # probe's folds hold whole episodes); sample keys (the rows' order once gathered over ranks)
        return {"codes": [], "actions": [], "frames": [], "groups": [], "key": []}

    def on_validation_epoch_start(self) -> None:
        self._val_rows = self._empty_rows()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        frame_t, frame_t1, out, recon_loss, total = self._shared_step(batch)
        bs = frame_t.shape[0]
        self.log_dict(
            {
                "val/loss_total": total,
                "val/loss_reconstruction": recon_loss,
                "val/loss_codebook": out.codebook_loss,
                "val/loss_commitment": out.commitment_loss,
                "val/psnr": M.psnr(out.reconstruction, frame_t1),
                "val/psnr_copy": M.psnr(frame_t, frame_t1),
                "val/ssim": M.ssim(out.reconstruction, frame_t1),
                "val/ssim_copy": M.ssim(frame_t, frame_t1),
            },
            batch_size=bs,
            sync_dist=True,
        )
        rows = self._val_rows
        rows["codes"].extend(out.indices.cpu().numpy())
        rows["frames"].extend(M.frame_features(batch["frame_t"]))
        rows["key"].extend(str(k) for k in batch["key"])
        rows["groups"].extend(str(g) for g in batch.get("video_id", [""] * bs))
        action = batch.get("action")
        if action is not None and torch.as_tensor(action).numel():
            rows["actions"].extend(torch.as_tensor(action).float().cpu().numpy())
        else:  # no actions recorded: NaN rows, which the code-action statistics leave out
            rows["actions"].extend(np.full((bs, 1), np.nan, np.float32))
        if batch_idx == 0:
            self._save_grid(batch["frame_t"], batch["frame_t1"], out.reconstruction)

    def on_validation_epoch_end(self) -> None:
        """Code statistics over every validated sample: the rows of all ranks are gathered first."""
        if self.trainer.sanity_checking:
            return
        local = {k: np.asarray(v) for k, v in self._val_rows.items()}
        rows = M.gather_rows(local)  # collective: every rank calls it, with or without rows
        self._val_rows = self._empty_rows()
        if not len(rows["codes"]):
            return
        logs = M.validation_code_logs(rows, self.model.vocab_size, self.training_cfg["action_bins"])
        # every rank computed the same figures from the same gathered rows: the mean over ranks keeps them
        self.log_dict(logs, sync_dist=True)
        self.last_val_metrics = dict(logs)  # completed in on_validation_end

    def on_validation_end(self) -> None:
        # epoch aggregates of the per-batch logs exist only once the validation loop has ended
        for k, v in self.trainer.callback_metrics.items():
            if k.startswith("val/") and v.numel() == 1:
                self.last_val_metrics.setdefault(k, float(v))

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """The discrete latent actions [B, num_tokens] only (used for labelling)."""
        return self.model.predict_indices(batch["frame_t"], batch["frame_t1"])

    # -- reconstruction grid -----------------------------------------------------------------------
    def _save_grid(self, frame_t: torch.Tensor, frame_t1: torch.Tensor, recon: torch.Tensor) -> None:
        if self.grid_dir is None or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        from torchvision.utils import make_grid, save_image

        from lapa.utils.io import atomic_path

        n = min(int(self.training_cfg.get("num_images_to_log", 8)), frame_t.shape[0])
        rows = [to_model_range(frame_t[:n]), to_model_range(frame_t1[:n]), recon[:n].float()]
        grid = make_grid(torch.cat(rows).detach().cpu().add(1).div(2).clamp(0, 1), nrow=n, padding=2)
        path = self.grid_dir / f"recon-step{self.global_step:07d}.png"
        with atomic_path(path, suffix=".png") as tmp:
            save_image(grid, tmp, format="png")
        self.last_grid = path
        for logger in self.loggers:
            if logger.__class__.__name__ == "WandbLogger":
                logger.log_image("val/reconstruction", [grid], step=self.global_step)

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        from lapa.utils.optim import make_optimizer

        opt, sched = make_optimizer(self.model, self.training_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
