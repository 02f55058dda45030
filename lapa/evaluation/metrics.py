"""Action metrics shared by training validation and offline evaluation.

MSE is measured on actions normalised by the statistics range to [-1, 1], so dimensions with
different units weigh alike and figures are comparable across datasets (spec: MSE < 0.05).
"""

from __future__ import annotations

import numpy as np

from lapa.data.action_codec import ActionStats


class ActionMetrics:
    """Accumulates predictions (bins, and optionally decoded actions) against true actions over batches.

    ``compute`` gives the MSE of normalised actions and the bin accuracy per dimension and averaged,
    with the bin accuracy's chance level: the rate of each dimension's commonest true bin (what
    always predicting that bin would score).
    """

    def __init__(self, stats: ActionStats) -> None:
        self.stats = stats
        self.sq_err = np.zeros(stats.action_dim, dtype=np.float64)
        self.correct = np.zeros(stats.action_dim, dtype=np.int64)
        self.true_bins = np.zeros((stats.action_dim, stats.num_bins), dtype=np.int64)  # chance level
        self.count = 0

    def update(
        self, pred_bins: np.ndarray, true_actions: np.ndarray, pred_actions: np.ndarray | None = None
    ) -> None:
        """Add a batch: predicted bins int [B, A] (bin accuracy), true actions [B, A].

        The MSE uses ``pred_actions`` [B, A] (continuous, the policy's decoding) when given, else
        the centres of ``pred_bins``. Raises ValueError when the counts disagree.
        """
        pred_bins = np.asarray(pred_bins).reshape(-1, self.stats.action_dim)
        true_actions = np.asarray(true_actions, dtype=np.float64).reshape(-1, self.stats.action_dim)
        if len(pred_bins) != len(true_actions):
            raise ValueError(f"{len(pred_bins)} predictions for {len(true_actions)} actions")
        if pred_actions is None:
            pred_actions = self.stats.dequantize(pred_bins)
        pred_actions = np.asarray(pred_actions, dtype=np.float64).reshape(-1, self.stats.action_dim)
        if len(pred_actions) != len(true_actions):
            raise ValueError(f"{len(pred_actions)} predicted actions for {len(true_actions)} actions")
        pred = self.stats.normalize(pred_actions).astype(np.float64)
        true = self.stats.normalize(true_actions).astype(np.float64)
        self.sq_err += ((pred - true) ** 2).sum(axis=0)
        true_bins = self.stats.quantize(true_actions)
        self.correct += (pred_bins == true_bins).sum(axis=0)
        for d in range(self.stats.action_dim):
            self.true_bins[d] += np.bincount(true_bins[:, d], minlength=self.stats.num_bins)
        self.count += len(pred_bins)

    def compute(self) -> dict:
        if self.count == 0:
            raise ValueError("no samples were evaluated")
        mse = self.sq_err / self.count
        acc = self.correct / self.count
        chance = self.true_bins.max(axis=1) / self.count
        return {
            "num_samples": int(self.count),
            "mse_per_dim": mse.tolist(),
            "mse": float(mse.mean()),
            "bin_accuracy_per_dim": acc.tolist(),
            "bin_accuracy": float(acc.mean()),
            "bin_accuracy_chance_per_dim": chance.tolist(),
            "bin_accuracy_chance": float(chance.mean()),
        }
