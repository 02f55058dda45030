"""Pure metric functions of LAQ codes and reconstructions.

Reused by training (logged metrics), the labelling report and the experiment diagnostics.
Images are float tensors in [-1, 1]; codes are int arrays [N, num_tokens].
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from scipy.special import gammaln


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


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts int64 [R, C] of the distinct values of ``a`` (rows) against those of ``b`` (columns)."""
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if len(a) != len(b):
        raise ValueError(f"label arrays differ in length: {len(a)} vs {len(b)}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    return _table(ai, bi, int(ai.max(initial=-1)) + 1, int(bi.max(initial=-1)) + 1)


def _table(ai: np.ndarray, bi: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return np.bincount(ai * cols + bi, minlength=rows * cols).reshape(rows, cols)


def _mi_of_table(table: np.ndarray) -> float:
    return _entropy(table.sum(1)) + _entropy(table.sum(0)) - _entropy(table.ravel())


def expected_mutual_information(table: np.ndarray, chunk_terms: int = 2_000_000) -> float:
    """E[I(a; b)] in nats over all label pairings with the margins of ``table`` [R, C].

    The expectation under the permutation (hypergeometric) model of Vinh, Epps and Bailey (2010):
    what the plug-in mutual information of two *independent* labellings with these margins is on
    average. Summed in chunks of at most ``chunk_terms`` cell values, so memory stays bounded.
    """
    table = np.asarray(table, dtype=np.int64)
    n = int(table.sum())
    a = table.sum(1)
    b = table.sum(0)
    a, b = a[a > 0], b[b > 0]
    if n == 0 or len(a) <= 1 or len(b) <= 1:
        return 0.0
    if len(a) > len(b):  # loop over the shorter margin
        a, b = b, a
    gln_a, gln_na = gammaln(a + 1), gammaln(n - a + 1)
    gln_b, gln_nb = gammaln(b + 1), gammaln(n - b + 1)
    gln_n = gammaln(n + 1)
    total = 0.0
    step = max(1, chunk_terms // max(int(b.max()) * len(b), 1))
    for i0 in range(0, len(a), step):
        ai = a[i0 : i0 + step, None]  # [r, 1]
        lo = np.maximum(1, ai + b[None, :] - n)  # [r, C]
        hi = np.minimum(ai, b[None, :])
        counts = np.maximum(hi - lo + 1, 0).ravel()
        if counts.sum() == 0:
            continue
        pair = np.repeat(np.arange(counts.size), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        nij = lo.ravel()[pair] + offsets
        r = pair // len(b)
        c = pair % len(b)
        av = a[i0:][r]
        bv = b[c]
        log_p = (
            gln_a[i0:][r]
            + gln_b[c]
            + gln_na[i0:][r]
            + gln_nb[c]
            - gln_n
            - gammaln(nij + 1)
            - gammaln(av - nij + 1)
            - gammaln(bv - nij + 1)
            - gammaln(n - av - bv + nij + 1)
        )
        total += float(np.sum(nij / n * (np.log(n * nij) - np.log(av) - np.log(bv)) * np.exp(log_p)))
    return total


_AVERAGES = {
    "arithmetic": lambda ha, hb: (ha + hb) / 2,
    "geometric": lambda ha, hb: math.sqrt(ha * hb),
    "min": min,
    "max": max,
}


def _ami(mi: float, emi: float, ha: float, hb: float, average: str = "arithmetic") -> float:
    if ha == 0.0 or hb == 0.0:
        return 0.0
    denom = _AVERAGES[average](ha, hb) - emi
    return float((mi - emi) / max(denom, np.finfo(np.float64).eps))


def adjusted_mutual_information(a: np.ndarray, b: np.ndarray, average: str = "arithmetic") -> float:
    """AMI of two discrete label arrays: (I - E[I]) / (avg(H(a), H(b)) - E[I]).

    About 0 (either sign) for labellings independent of each other whatever their number of
    values and samples; 0 when either is constant. E[I] is ``expected_mutual_information``.
    ``average`` is the normalisation of Vinh et al. (2010): ``arithmetic`` (1 when each labelling
    determines the other), ``min`` (1 when one determines the other), ``geometric`` or ``max``.
    """
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {sorted(_AVERAGES)}, got {average!r}")
    table = contingency(a, b)
    if table.size == 0:
        return 0.0
    return _ami(
        _mi_of_table(table),
        expected_mutual_information(table),
        _entropy(table.sum(1)),
        _entropy(table.sum(0)),
        average,
    )


def bin_actions(actions: np.ndarray, bins: int) -> np.ndarray:
    """Quantile-bin each action dimension into ``bins`` classes [N, A] (robust to lopsided actions)."""
    actions = np.asarray(actions, dtype=np.float64)
    out = np.zeros(actions.shape, dtype=np.int64)
    for d in range(actions.shape[1]):
        edges = np.unique(np.quantile(actions[:, d], np.linspace(0, 1, bins + 1)[1:-1]))
        out[:, d] = np.searchsorted(edges, actions[:, d], side="right")
    return out


def _finite_rows(codes, actions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64)
    actions = np.asarray(actions, dtype=np.float64)
    if codes.ndim != 2 or actions.ndim != 2 or len(codes) != len(actions):
        raise ValueError(f"codes [N, tokens] and actions [N, A] disagree: {codes.shape} vs {actions.shape}")
    keep = np.isfinite(actions).all(1)
    return codes[keep], actions[keep], keep


class _AMIStat:
    """Mean over action dimensions of AMI(joint code, binned dimension), reusable on row subsets."""

    def __init__(self, joint: np.ndarray, binned: np.ndarray):
        _, self.ci = np.unique(joint, return_inverse=True)
        self.rows = int(self.ci.max(initial=-1)) + 1
        self.binned = binned
        self.dims = [d for d in range(binned.shape[1]) if len(np.unique(binned[:, d])) > 1]
        self.cols = [int(binned[:, d].max()) + 1 for d in range(binned.shape[1])]

    def per_dim(self, idx: np.ndarray | None = None) -> list[float]:
        ci = self.ci if idx is None else self.ci[idx]
        out = []
        for d in self.dims:
            bd = self.binned[:, d] if idx is None else self.binned[idx, d]
            t = _table(ci, bd, self.rows, self.cols[d])
            emi, ha, hb = expected_mutual_information(t), _entropy(t.sum(1)), _entropy(t.sum(0))
            out.append(_ami(_mi_of_table(t), emi, ha, hb))
        return out

    def null(self, permutations: int, rng: np.random.Generator) -> np.ndarray:
        """The statistic when the codes are shuffled over the rows (margins and E[I] unchanged)."""
        tables = [_table(self.ci, self.binned[:, d], self.rows, self.cols[d]) for d in self.dims]
        fixed = [(expected_mutual_information(t), _entropy(t.sum(1)), _entropy(t.sum(0))) for t in tables]
        out = np.empty(permutations)
        for k in range(permutations):
            ci = rng.permutation(self.ci)
            vals = []
            for d, (emi, ha, hb) in zip(self.dims, fixed):
                t = _table(ci, self.binned[:, d], self.rows, self.cols[d])
                vals.append(_ami(_mi_of_table(t), emi, ha, hb))
            out[k] = np.mean(vals)
        return out


def code_action_ami(
    codes: np.ndarray | torch.Tensor,
    actions: np.ndarray,
    vocab_size: int,
    bins: int = 8,
    *,
    seed: int = 0,
    permutations: int = 200,
    subsamples: int = 40,
    confidence: float = 0.95,
) -> dict:
    """Chance-corrected association between the latent actions and the true actions.

    ``codes`` int [N, num_tokens] and ``actions`` float [N, A] (rows with NaN are dropped). Each
    action dimension is quantile-binned into ``bins`` classes; ``ami`` is the mean over the
    dimensions that vary of AMI(joint code tuple, binned dimension) (arithmetic normalisation), so
    codes drawn independently of the actions score about 0 however many codes or pairs there are,
    and codes carrying the actions score above it (1 only where the code tuple and the binned
    dimension determine each other: a code carrying all A dimensions scores less on each one).
    Returned beside it:

    - ``ami_ci_low``/``ami_ci_high``: a ``confidence`` normal interval whose spread is that of
      the statistic on ``subsamples`` seeded half-samples drawn without replacement (conservative
      near 0, where the statistic's spread shrinks as 1/N rather than 1/sqrt(N));
    - ``ami_p``: one-sided p-value against ``permutations`` seeded shuffles of the codes over the
      rows, with ``ami_perm_mean``/``ami_perm_sd`` the shuffled statistic's mean and spread;
    - ``ami_per_dim`` (None for a dimension with one bin) and ``ami_joint_action`` (against the
      tuple of all binned dimensions), ``nmi_plugin`` (the uncorrected figure, for reference).

    Figures that cannot be computed (no dimension varies, no shuffles) are None. Returns ``{}``
    with fewer than 4 usable rows.
    """
    codes, actions, _ = _finite_rows(codes, actions)
    n = len(codes)
    if n < 4:
        return {}
    joint = joint_codes(codes, vocab_size)
    binned = bin_actions(actions, bins)
    stat = _AMIStat(joint, binned)
    per_dim = stat.per_dim()
    dims_out: list[float | None] = [None] * binned.shape[1]
    for d, v in zip(stat.dims, per_dim):
        dims_out[d] = v
    ami = float(np.mean(per_dim)) if per_dim else 0.0
    rng = np.random.default_rng(seed)
    null = stat.null(permutations, rng) if per_dim and permutations > 0 else np.zeros(0)
    halves = []
    if per_dim and subsamples > 1:
        for _ in range(subsamples):
            idx = rng.choice(n, n // 2, replace=False)
            halves.append(float(np.mean(stat.per_dim(idx))))
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    spread = float(np.std(halves, ddof=1)) if len(halves) > 1 else None
    joint_action = joint_codes(binned, bins)
    return {
        "ami": ami,
        "ami_ci_low": None if spread is None else ami - z * spread,
        "ami_ci_high": None if spread is None else ami + z * spread,
        "ami_p": float((1 + np.sum(null >= ami - 1e-12)) / (1 + len(null))) if len(null) else None,
        "ami_perm_mean": float(null.mean()) if len(null) else None,
        "ami_perm_sd": float(null.std(ddof=1)) if len(null) > 1 else None,
        "ami_per_dim": dims_out,
        "ami_joint_action": adjusted_mutual_information(joint, joint_action),
        "nmi_plugin": normalized_mutual_information(joint, joint_action),
        "confidence": confidence,
        "num_pairs": n,
        "bins": bins,
    }


def frame_features(frames: torch.Tensor | np.ndarray, size: int = 8) -> np.ndarray:
    """A small fixed description of frame t: float32 [B, 3 * size * size], the image average-pooled
    to ``size`` x ``size``. ``frames`` [B, 3, H, W], uint8 or float (the scale does not matter to the
    probe, which standardises its features)."""
    x = torch.as_tensor(frames)
    if x.ndim != 4:
        raise ValueError(f"frames must be [B, C, H, W], got shape {tuple(x.shape)}")
    return F.adaptive_avg_pool2d(x.float(), size).flatten(1).cpu().numpy().astype(np.float32)


def _fit_softmax(x: np.ndarray, y: np.ndarray, classes: int, l2: float, iters: int) -> np.ndarray:
    """Multinomial logistic regression, one head per target column of ``y`` [N, D]: weights
    [F + 1, D * classes] minimising mean cross-entropy + ``l2`` * |W|^2 (scipy L-BFGS-B, float64)."""
    n, dims = len(x), y.shape[1]
    xb = np.column_stack([x, np.ones(n)])
    onehot = np.zeros((n, dims, classes))
    onehot[np.arange(n)[:, None], np.arange(dims), y] = 1.0
    shape = (xb.shape[1], dims * classes)

    def loss_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w = flat.reshape(shape)
        logits = (xb @ w).reshape(n, dims, classes)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        loss = -(onehot * logp).sum() / (n * dims) + l2 * (w[:-1] ** 2).sum()
        grad = xb.T @ ((np.exp(logp) - onehot).reshape(n, -1) / (n * dims))
        grad[:-1] += 2 * l2 * w[:-1]
        return float(loss), grad.ravel()

    res = minimize(
        loss_grad, np.zeros(shape).ravel(), jac=True, method="L-BFGS-B", options={"maxiter": iters}
    )
    return res.x.reshape(shape)


def _predict_softmax(w: np.ndarray, x: np.ndarray, dims: int, classes: int) -> np.ndarray:
    return (np.column_stack([x, np.ones(len(x))]) @ w).reshape(len(x), dims, classes).argmax(-1)


def _folds(n: int, groups, folds: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group ids for {n} pairs")
        uniq, gi = np.unique(groups, return_inverse=True)
        if len(uniq) >= 2:
            k = min(folds, len(uniq))
            order = rng.permutation(len(uniq))
            fold_of_group = np.empty(len(uniq), dtype=np.int64)
            fold_of_group[order] = np.arange(len(uniq)) % k
            return fold_of_group[gi], "group"
    return rng.permutation(n) % min(folds, n), "row"


def shortcut_probe(
    codes: np.ndarray | torch.Tensor,
    actions: np.ndarray,
    frame_feats: np.ndarray,
    vocab_size: int,
    bins: int = 8,
    *,
    groups=None,
    folds: int = 5,
    seed: int = 0,
    l2: float = 1e-3,
    iters: int = 100,
    boot: int = 1000,
    confidence: float = 0.95,
) -> dict:
    """How well the binned true action is predicted from the codes, against from frame t alone, and
    what the codes add to frame t.

    A latent action that carries the motion predicts the action better than frame t does; codes
    that only encode the scene (the task, the arm's pose) predict it no better. For each action
    dimension with more than one of its ``bins`` quantile bins, a linear softmax classifier (L2
    ``l2``, scipy L-BFGS-B, float64, deterministic) is fit on one-hot codes [N, tokens * vocab], on the
    standardised ``frame_feats`` [N, F] (``frame_features``) and on their concatenation
    [N, tokens * vocab + F], under ``folds``-fold cross-validation; every column is standardised
    with its training fold's mean and spread. Folds hold whole ``groups`` (episode ids) when given,
    else random rows (which flatters the frame probe: neighbouring frames look alike).

    Codes losing to frame t does not by itself say they carry no motion: an expert's action is
    largely a function of the state visible in frame t, so frame t alone can predict it well. The
    incremental probe answers the narrower question: the held-out accuracy the codes add to what
    frame t already gives: about 0 for codes independent of the action, or that restate what a
    linear read of frame t's features already gives; above 0 for codes that carry motion frame t
    does not show, but also for codes that encode the scene in a form the linear probe cannot read
    from the pooled pixels (evidence of information beyond frame t, not proof of motion).

    Returns held-out accuracies averaged over dimensions: ``probe_acc_codes``, ``probe_acc_frame``,
    ``probe_acc_codes_and_frame``, ``probe_chance`` (the majority class's rate: what always
    guessing the commonest bin scores); ``probe_gain`` (codes minus frame) and
    ``probe_gain_over_frame`` (codes and frame minus frame), each with a percentile bootstrap
    interval at ``confidence`` (``*_ci_low``, ``*_ci_high``; ``boot`` resamples of groups, or of
    rows, the same resamples for both); ``probe_dims`` (the dimensions probed),
    ``probe_folds_by`` ("group" or "row") and ``num_pairs``. ``{}`` when fewer than 10 usable rows
    or no dimension varies. Raises ``ValueError`` when ``frame_feats`` is not [N, F] or ``groups``
    does not have N entries.
    """
    codes, actions, keep = _finite_rows(codes, actions)
    feats = np.asarray(frame_feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) != len(keep):
        raise ValueError(f"frame features must be [N, F] with N = {len(keep)}, got shape {feats.shape}")
    feats = feats[keep]
    groups = None if groups is None else np.asarray(groups)[keep]
    n = len(codes)
    binned = bin_actions(actions, bins)
    dims = [d for d in range(binned.shape[1]) if len(np.unique(binned[:, d])) > 1]
    if n < 10 or not dims:
        return {}
    y_all = binned[:, dims]
    classes = int(binned.max()) + 1
    onehot = np.zeros((n, codes.shape[1] * vocab_size))
    onehot[np.arange(n)[:, None], np.arange(codes.shape[1]) * vocab_size + codes] = 1.0
    rng = np.random.default_rng(seed)
    fold, folds_by = _folds(n, groups, folds, rng)
    correct = {name: np.zeros((n, len(dims))) for name in ("codes", "frame", "codes_and_frame")}
    both = np.column_stack([onehot, feats])
    for k in np.unique(fold):
        test, train = fold == k, fold != k
        if not train.any():
            continue
        ytr = y_all[train]
        for name, x in (("codes", onehot), ("frame", feats), ("codes_and_frame", both)):
            mu, sd = x[train].mean(0), x[train].std(0)
            sd = np.where(sd > 1e-8, sd, 1.0)
            w = _fit_softmax((x[train] - mu) / sd, ytr, classes, l2, iters)
            pred = _predict_softmax(w, (x[test] - mu) / sd, len(dims), classes)
            correct[name][test] = pred == binned[test][:, dims]
    gain = correct["codes"].mean(1) - correct["frame"].mean(1)
    unit = groups if folds_by == "group" else np.arange(n)
    _, ui = np.unique(unit, return_inverse=True)
    sums, sizes = np.bincount(ui, weights=gain), np.bincount(ui)
    draws = rng.integers(0, len(sums), size=(boot, len(sums)))
    boots = sums[draws].sum(1) / sizes[draws].sum(1)
    gain_over = correct["codes_and_frame"].mean(1) - correct["frame"].mean(1)
    boots_over = np.bincount(ui, weights=gain_over)[draws].sum(1) / sizes[draws].sum(1)
    alpha = (1 - confidence) / 2
    return {
        "probe_acc_codes": float(correct["codes"].mean()),
        "probe_acc_frame": float(correct["frame"].mean()),
        "probe_chance": float(np.mean([np.bincount(binned[:, d]).max() / n for d in dims])),
        "probe_gain": float(gain.mean()),
        "probe_gain_ci_low": float(np.quantile(boots, alpha)),
        "probe_gain_ci_high": float(np.quantile(boots, 1 - alpha)),
        "probe_acc_codes_and_frame": float(correct["codes_and_frame"].mean()),
        "probe_gain_over_frame": float(gain_over.mean()),
        "probe_gain_over_frame_ci_low": float(np.quantile(boots_over, alpha)),
        "probe_gain_over_frame_ci_high": float(np.quantile(boots_over, 1 - alpha)),
        "probe_dims": dims,
        "probe_folds_by": folds_by,
        "num_pairs": n,
    }


def code_action_diagnostics(
    codes: np.ndarray | torch.Tensor,
    actions: np.ndarray,
    vocab_size: int,
    bins: int = 8,
    *,
    frame_feats: np.ndarray | None = None,
    groups=None,
    seed: int = 0,
    probe_max_pairs: int = 20_000,
) -> dict:
    """``code_action_ami`` and, when ``frame_feats`` are given, ``shortcut_probe`` in one dict.

    The probe sees at most ``probe_max_pairs`` rows (a seeded sample) to stay cheap on whole splits.
    """
    out = code_action_ami(codes, actions, vocab_size, bins, seed=seed)
    if out and frame_feats is not None:
        idx = np.arange(len(actions))
        if len(idx) > probe_max_pairs:
            idx = np.sort(np.random.default_rng(seed).choice(len(idx), probe_max_pairs, replace=False))
        probe = shortcut_probe(
            np.asarray(codes)[idx],
            np.asarray(actions)[idx],
            np.asarray(frame_feats)[idx],
            vocab_size,
            bins,
            groups=None if groups is None else np.asarray(groups)[idx],
            seed=seed,
        )
        probe.pop("num_pairs", None)
        out.update(probe)
    return out


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


# The logged names of ``code_action_diagnostics`` entries (without the split prefix).
_LOG_NAMES = {
    "ami": "code_action_ami",
    "ami_ci_low": "code_action_ami_ci_low",
    "ami_ci_high": "code_action_ami_ci_high",
    "ami_p": "code_action_ami_p",
    "ami_perm_mean": "code_action_ami_perm_mean",
    "ami_perm_sd": "code_action_ami_perm_sd",
    "ami_joint_action": "code_action_ami_joint",
    "nmi_plugin": "code_action_nmi_uncorrected",
    "num_pairs": "code_action_pairs",
    "probe_acc_codes": "probe_acc_codes",
    "probe_acc_frame": "probe_acc_frame",
    "probe_chance": "probe_chance",
    "probe_gain": "probe_gain",
    "probe_gain_ci_low": "probe_gain_ci_low",
    "probe_gain_ci_high": "probe_gain_ci_high",
    "probe_acc_codes_and_frame": "probe_acc_codes_and_frame",
    "probe_gain_over_frame": "probe_gain_over_frame",
    "probe_gain_over_frame_ci_low": "probe_gain_over_frame_ci_low",
    "probe_gain_over_frame_ci_high": "probe_gain_over_frame_ci_high",
}


def diagnostics_logs(diag: dict, prefix: str = "val/") -> dict[str, float]:
    """Flat scalar logs of ``code_action_diagnostics``: ``{prefix}code_action_ami``, its interval
    and p-value, ``{prefix}code_action_ami/dim{d}``, ``{prefix}probe_acc_codes``, ...frame,
    ...codes_and_frame, ...chance, ``{prefix}probe_gain`` and ``{prefix}probe_gain_over_frame`` with
    their intervals."""
    logs = {prefix + name: float(diag[key]) for key, name in _LOG_NAMES.items() if diag.get(key) is not None}
    for d, v in enumerate(diag.get("ami_per_dim") or []):
        if v is not None:
            logs[f"{prefix}code_action_ami/dim{d}"] = float(v)
    return logs


def gather_rows(rows: dict, order_by: str = "key") -> dict[str, np.ndarray]:
    """Per-sample columns held by each rank, gathered onto every rank in one canonical order.

    ``rows`` maps names to equal-length columns (arrays [N, ...] or lists, e.g. strings such as
    sample keys and episode ids); each rank may hold a different N. Under an initialised process
    group of several ranks the columns are exchanged with ``all_gather_object``; then every column
    is concatenated and all are sorted by ``order_by`` (unique sample keys), so the result is the
    same whether the rows were read by one process or split over any number of ranks.
    """
    import torch.distributed as dist

    lengths = {k: len(v) for k, v in rows.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns differ in length: {lengths}")
    if order_by not in rows:
        raise ValueError(f"no column {order_by!r} to order the rows by")
    parts = [rows]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, rows)
    merged = {}
    for name in rows:
        columns = [np.asarray(p[name]) for p in parts]
        nonempty = [c for c in columns if len(c)]
        merged[name] = np.concatenate(nonempty) if nonempty else columns[0]
    order = np.argsort(merged[order_by], kind="stable")
    return {name: column[order] for name, column in merged.items()}


def validation_code_logs(rows: dict, vocab_size: int, bins: int, prefix: str = "val/") -> dict[str, float]:
    """The code statistics of a validation over all its samples, as flat scalar logs.

    ``rows`` (``gather_rows`` output): ``codes`` int [N, tokens] and optionally ``actions`` float
    [N, A] (NaN rows ignored), ``frames`` [N, F] (``frame_features``) and ``groups`` [N] (episode
    ids). Returns ``{prefix}samples``, per-position perplexity, mean utilisation (the fraction of
    codes used at least once, over the whole set), distinct tuples, and ``diagnostics_logs`` of the
    code-action AMI and shortcut probe (with its majority-bin chance) when actions are given.
    """
    codes = np.asarray(rows["codes"], dtype=np.int64)
    if len(codes) == 0:
        return {}
    summary = code_summary(codes, vocab_size)
    logs = {f"{prefix}perplexity/pos{t}": float(p) for t, p in enumerate(summary["perplexity"])}
    logs[f"{prefix}perplexity_max"] = float(vocab_size)  # a uniform code distribution
    logs[f"{prefix}utilisation"] = float(summary["utilisation_mean"])
    logs[f"{prefix}distinct_tuples"] = float(summary["distinct_tuples"])
    logs[f"{prefix}samples"] = float(len(codes))
    actions = rows.get("actions")
    if actions is not None and len(actions) == len(codes):
        groups = rows.get("groups")
        frames = rows.get("frames")
        diag = code_action_diagnostics(
            codes,
            np.asarray(actions, dtype=np.float64),
            vocab_size,
            bins,
            frame_feats=None if frames is None else np.asarray(frames),
            groups=None if groups is None or len(groups) != len(codes) else list(groups),
        )
        logs.update(diagnostics_logs(diag, prefix))
    return logs
