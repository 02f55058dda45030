"""Per-dimension action statistics and the 256-bin discretisation of continuous actions.

The low and high quantiles (not min/max) bound each dimension so that a few outliers do not
stretch the bins; values outside are clipped. Three kinds of dimension need care:

- constant (one value, e.g. a gripper the expert never moves): every value maps to bin 0 and
  back to the constant, with no division by zero;
- binary (exactly two values, e.g. an open/close gripper): the two values map to the first and
  last bin and back exactly, even when one of them is rarer than the quantile (so a gripper
  that closes in under 1% of the frames is not lost);
- rare commands: a value repeated in at least 0.1% of the frames (an "atom": a saturated
  command, a gripper state reached through a short ramp) widens the bounds to include it, and a
  dimension whose quantiles coincide while it takes several values is bounded by its min and max,
  so a gripper that is -1 except for a short closing ramp to +1 still decodes +1 near +1.

What the bounds still clip (a continuous tail beyond the quantiles) is counted: each dimension's
``clipped_fraction`` (values more than one bin beyond a bound) is in the JSON, and a warning names
every dimension that clips any.

The statistics are a human-readable JSON artifact; everything else derives from it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np

from lapa.utils.io import atomic_write_json, read_json_object

log = logging.getLogger(__name__)

FORMAT = "lapa.action_stats"
VERSION = 1
KINDS = ("continuous", "binary", "constant")
ATOM_FRACTION = 0.001  # a value repeated in this fraction of the frames (and at least twice) is kept


@dataclass
class ActionStats:
    """Bounds and kind per action dimension, plus the number of bins."""

    low: np.ndarray  # float64 [A]
    high: np.ndarray  # float64 [A]
    kinds: list[str]
    num_bins: int = 256
    low_quantile: float = 0.01
    high_quantile: float = 0.99
    num_samples: int = 0
    summary: list[dict] = field(default_factory=list)  # min/max/mean/std per dimension (diagnostics)

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        self.high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if self.low.shape != self.high.shape or len(self.kinds) != len(self.low):
            raise ValueError(
                f"action stats: low {self.low.shape}, high {self.high.shape} and "
                f"{len(self.kinds)} kinds disagree"
            )
        if self.num_bins < 2:
            raise ValueError(f"action stats: num_bins must be at least 2, got {self.num_bins}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ValueError(f"action stats: unknown dimension kind(s) {bad}; expected one of {KINDS}")
        if not (np.all(np.isfinite(self.low)) and np.all(np.isfinite(self.high))):
            raise ValueError("action stats: bounds must be finite")
        if np.any(self.high < self.low):
            raise ValueError("action stats: a high bound lies below its low bound")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_actions(
        cls, actions: np.ndarray, low_q: float = 0.01, high_q: float = 0.99, num_bins: int = 256
    ) -> ActionStats:
        """Statistics of ``actions`` [N, A] (the training demonstrations).

        Bounds are the ``low_q``/``high_q`` quantiles, widened to every repeated value (see the
        module notes); a dimension that still clips values logs a warning naming it and the
        fraction clipped. Raises ValueError for an empty, non-2-D or non-finite array.
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] == 0:
            raise ValueError(f"action stats need a non-empty [N, A] array, got shape {actions.shape}")
        if not np.all(np.isfinite(actions)):
            rows = np.unique(np.nonzero(~np.isfinite(actions))[0])[:5].tolist()
            raise ValueError(f"actions contain NaN or infinite values (rows {rows} ...)")
        if not (0.0 <= low_q < high_q <= 1.0):
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {low_q}, {high_q}")
        low = np.quantile(actions, low_q, axis=0)
        high = np.quantile(actions, high_q, axis=0)
        n = actions.shape[0]
        min_atom = max(2, math.ceil(ATOM_FRACTION * n))
        kinds: list[str] = []
        summary: list[dict] = []
        for d in range(actions.shape[1]):
            column = actions[:, d]
            values, counts = np.unique(column, return_counts=True)
            if len(values) == 1:
                kinds.append("constant")
                low[d] = high[d] = values[0]
            elif len(values) == 2:
                kinds.append("binary")
                low[d], high[d] = values[0], values[1]
            else:
                kinds.append("continuous")
                atoms = values[counts >= min_atom]  # repeated commands are kept, never clipped
                if atoms.size:
                    low[d], high[d] = min(low[d], atoms[0]), max(high[d], atoms[-1])
                if high[d] <= low[d]:  # the quantiles coincide: bound by the extremes instead
                    low[d], high[d] = values[0], values[-1]
            width = (high[d] - low[d]) / num_bins
            clipped = (column < low[d] - width) | (column > high[d] + width)
            summary.append(
                {
                    "min": float(column.min()),
                    "max": float(column.max()),
                    "mean": float(column.mean()),
                    "std": float(column.std()),
                    "unique_values": int(min(len(values), 1_000_000)),
                    "clipped_fraction": float(clipped.mean()),
                }
            )
            if clipped.any():
                beyond = max(low[d] - column.min(), column.max() - high[d])
                log.warning(
                    "action dimension %d: %.2f%% of %d values lie more than one bin outside the binned "
                    "range [%.4g, %.4g] (up to %.4g beyond) and decode to its edge; widen the "
                    "quantiles (finetune.stats.low_quantile/high_quantile) to keep them",
                    d,
                    100 * clipped.mean(),
                    n,
                    low[d],
                    high[d],
                    beyond,
                )
        return cls(low, high, kinds, num_bins, low_q, high_q, int(actions.shape[0]), summary)

    # ------------------------------------------------------------------ properties
    @property
    def action_dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def bin_width(self) -> np.ndarray:
        """Width of one bin per dimension (0 for constant dimensions)."""
        width = (self.high - self.low) / self.num_bins
        constant = np.array([k == "constant" for k in self.kinds])
        return np.where(constant, 0.0, width)

    @property
    def range(self) -> np.ndarray:
        return self.high - self.low

    # ------------------------------------------------------------------ transforms
    def _check_last_dim(self, x: np.ndarray, what: str) -> None:
        if x.ndim == 0 or x.shape[-1] != self.action_dim:
            raise ValueError(
                f"{what}: last dimension must be action_dim={self.action_dim}, got shape {x.shape}"
            )

    def quantize(self, actions: np.ndarray) -> np.ndarray:
        """Continuous actions [..., A] -> int64 bins in [0, num_bins), clipped to the bounds."""
        a = np.asarray(actions, dtype=np.float64)
        self._check_last_dim(a, "quantize")
        span = np.where(self.range > 0, self.range, 1.0)
        scaled = np.floor((a - self.low) / span * self.num_bins)
        bins = np.clip(scaled, 0, self.num_bins - 1)
        binary = np.array([k == "binary" for k in self.kinds])
        constant = np.array([k == "constant" for k in self.kinds])
        midpoint = (self.low + self.high) / 2
        bins = np.where(binary, np.where(a >= midpoint, self.num_bins - 1, 0), bins)
        bins = np.where(constant, 0, bins)
        return bins.astype(np.int64)

    def dequantize(self, bins: np.ndarray) -> np.ndarray:
        """Bins [..., A] -> float32 actions at the bin centres (binary: the two values exactly)."""
        b = np.asarray(bins)
        self._check_last_dim(b, "dequantize")
        if not np.issubdtype(b.dtype, np.integer):
            raise ValueError(f"dequantize expects integer bins, got {b.dtype}")
        b = np.clip(b.astype(np.int64), 0, self.num_bins - 1)
        centres = self.low + (b + 0.5) * (self.range / self.num_bins)
        binary = np.array([k == "binary" for k in self.kinds])
        constant = np.array([k == "constant" for k in self.kinds])
        values = np.where(binary, np.where(b >= self.num_bins // 2, self.high, self.low), centres)
        values = np.where(constant, self.low, values)
        return values.astype(np.float32)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """Map the [low, high] range of each dimension to [-1, 1] (0 for constant dimensions)."""
        a = np.asarray(actions, dtype=np.float64)
        self._check_last_dim(a, "normalize")
        span = np.where(self.range > 0, self.range, 1.0)
        out = 2.0 * (a - self.low) / span - 1.0
        return np.where(self.range > 0, out, 0.0).astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        dims = []
        for d in range(self.action_dim):
            entry = {
                "index": d,
                "kind": self.kinds[d],
                "low": float(self.low[d]),
                "high": float(self.high[d]),
                "bin_width": float(self.bin_width[d]),
            }
            if d < len(self.summary):
                entry.update(self.summary[d])
            dims.append(entry)
        return {
            "format": FORMAT,
            "version": VERSION,
            "action_dim": self.action_dim,
            "num_bins": self.num_bins,
            "low_quantile": self.low_quantile,
            "high_quantile": self.high_quantile,
            "num_samples": self.num_samples,
            "dimensions": dims,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "action stats") -> ActionStats:
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"not an action statistics file (format={data.get('format')!r})")
            dims = data["dimensions"]
            if len(dims) != data["action_dim"]:
                raise ValueError(f"{len(dims)} dimensions listed for action_dim={data['action_dim']}")
            summary_keys = ("min", "max", "mean", "std", "unique_values", "clipped_fraction")
            return cls(
                low=np.array([float(d["low"]) for d in dims]),
                high=np.array([float(d["high"]) for d in dims]),
                kinds=[str(d["kind"]) for d in dims],
                num_bins=int(data["num_bins"]),
                low_quantile=float(data["low_quantile"]),
                high_quantile=float(data["high_quantile"]),
                num_samples=int(data.get("num_samples", 0)),
                summary=[{k: d[k] for k in summary_keys if k in d} for d in dims],
            )
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{source}: invalid action statistics: {detail}") from exc

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ActionStats:
        data = read_json_object(path, missing=f"action statistics file not found: {path}")
        return cls.from_dict(data, source=str(path))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ActionStats):
            return NotImplemented
        return (
            np.array_equal(self.low, other.low)
            and np.array_equal(self.high, other.high)
            and self.kinds == other.kinds
            and self.num_bins == other.num_bins
        )

    def __repr__(self) -> str:
        dims = ", ".join(
            f"{k}[{lo:.4g}, {hi:.4g}]" for k, lo, hi in zip(self.kinds, self.low.tolist(), self.high.tolist())
        )
        return f"ActionStats(num_bins={self.num_bins}, dims=[{dims}])"
