"""Small statistics shared by the benchmark metrics."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean; 0 if any value is 0 (TOFU model utility collapses with any component)."""
    vals = np.asarray(values, dtype=np.float64)
    if len(vals) == 0:
        raise ValueError("harmonic mean of nothing")
    if np.any(vals <= 0):
        return 0.0
    return float(len(vals) / np.sum(1.0 / vals))


def ks_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided two-sample Kolmogorov-Smirnov p-value (scipy's ``ks_2samp``, exact mode auto)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(a), np.asarray(b)).pvalue)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """``P(score(pos) > score(neg)) + 0.5 P(tie)`` (the Mann-Whitney form of ROC AUC)."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUC needs both classes")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
