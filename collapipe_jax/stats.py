"""Summaries of repeated measurements (seeds): the mean with its 95% confidence interval."""

from __future__ import annotations

import numpy as np

from collapipe_jax.errors import ValidationError


def mean_ci95(values) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t 95% confidence interval of the mean of per-seed values
    (lo = hi = the value for a single seed, where no interval exists)."""
    x = np.asarray(values, float).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValidationError("values", "must be a non-empty list of finite numbers", x.tolist())
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    from scipy import stats  # on use: the CLI's help is built without it

    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, mean - half, mean + half
