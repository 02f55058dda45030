"""Pure metric functions of LAQ codes and reconstructions.

Reused by training (logged metrics), the labelling report and the experiment diagnostics.
Images are float tensors in [-1, 1]; codes are int arrays [N, num_tokens].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB over the batch, for images in [-1, 1] (peak = the [0, 1] range)."""
    mse = ((pred.float() - target.float()) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (10 * torch.log10(1.0 / mse)).mean()


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Gaussian window, constants of Wang et al. 2004) for images in [-1, 1]."""
    x = (pred.float() + 1) / 2
    y = (target.float() + 1) / 2
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(window, sigma, c, x.device, x.dtype)
    mu_x = F.conv2d(x, w, groups=c)
    mu_y = F.conv2d(y, w, groups=c)
    sxx = F.conv2d(x * x, w, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).mean()


def code_histograms(codes: np.ndarray | torch.Tensor, vocab_size: int) -> np.ndarray:
    """Counts [num_tokens, vocab_size] of each code at each position."""
    codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes must be [N, num_tokens], got shape {codes.shape}")
    return np.stack([np.bincount(codes[:, t], minlength=vocab_size) for t in range(codes.shape[1])])


def perplexity(histograms: np.ndarray) -> np.ndarray:
    """exp(entropy) of each position's code distribution: vocab_size when uniform, 1 when collapsed."""
    h = np.asarray(histograms, dtype=np.float64)
    p = h / np.clip(h.sum(-1, keepdims=True), 1, None)
    ent = -(p * np.log(np.where(p > 0, p, 1))).sum(-1)
    return np.exp(ent)


def utilisation(histograms: np.ndarray) -> np.ndarray:
    """Fraction of each position's codes used at least once."""
    h = np.asarray(histograms)
    return (h > 0).mean(-1)


def joint_codes(codes: np.ndarray | torch.Tensor, vocab_size: int) -> np.ndarray:
    """Each row's code tuple as one integer (mixed radix ``vocab_size``)."""
    codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64)
    radix = vocab_size ** np.arange(codes.shape[1] - 1, -1, -1, dtype=np.int64)
    return codes @ radix


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two discrete label arrays."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if len(a) != len(b):
        raise ValueError(f"label arrays differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        return 0.0
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    return _entropy(joint.sum(1)) + _entropy(joint.sum(0)) - _entropy(joint.ravel())


def normalized_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) / mean(H(a), H(b)) (the arithmetic normalisation); 0 when either is constant."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    ha = _entropy(np.unique(a, return_counts=True)[1]) if len(a) else 0.0
    hb = _entropy(np.unique(b, return_counts=True)[1]) if len(b) else 0.0
    if ha == 0.0 or hb == 0.0:
        return 0.0
    return float(mutual_information(a, b) / ((ha + hb) / 2))


def bin_actions(actions: np.ndarray, bins: int) -> np.ndarray:
    """Quantile-bin each action dimension into ``bins`` classes [N, A] (robust to lopsided actions)."""
    actions = np.asarray(actions, dtype=np.float64)
    out = np.zeros(actions.shape, dtype=np.int64)
    for d in range(actions.shape[1]):
        edges = np.unique(np.quantile(actions[:, d], np.linspace(0, 1, bins + 1)[1:-1]))
        out[:, d] = np.searchsorted(edges, actions[:, d], side="right")
    return out


def action_code_nmi(codes: np.ndarray, actions: np.ndarray, vocab_size: int, bins: int = 8) -> dict:
    """NMI between the joint code tuple and each binned true-action dimension (rows with NaN dropped)."""
    actions = np.asarray(actions, dtype=np.float64)
    keep = ~np.isnan(actions).any(1)
    if keep.sum() < 2:
        return {}
    joint = joint_codes(np.asarray(codes)[keep], vocab_size)
    binned = bin_actions(actions[keep], bins)
    per_dim = [normalized_mutual_information(joint, binned[:, d]) for d in range(binned.shape[1])]
    all_dims = joint_codes(binned, bins + 1)
    return {
        "nmi_per_dim": per_dim,
        "nmi_mean": float(np.mean(per_dim)),
        "nmi_joint_action": normalized_mutual_information(joint, all_dims),
        "num_pairs": int(keep.sum()),
    }


def code_summary(codes: np.ndarray, vocab_size: int) -> dict:
    """Histograms, perplexity and utilisation per position, as JSON-ready lists."""
    hist = code_histograms(codes, vocab_size)
    ppl = perplexity(hist)
    util = utilisation(hist)
    return {
        "histograms": hist.tolist(),
        "perplexity": ppl.tolist(),
        "utilisation": util.tolist(),
        "utilisation_mean": float(util.mean()),
        "distinct_tuples": int(len(np.unique(joint_codes(codes, vocab_size)))) if len(codes) else 0,
        "max_tuples": int(min(vocab_size ** hist.shape[0], 2**62)),
        "num_pairs": int(hist[0].sum()) if hist.size else 0,
        "log2_vocab": math.log2(vocab_size),
    }
