"""Lyapunov virtual queues (Eq. 29) and the per-round drift-plus-penalty objective (Eq. 30–32).

Y_n(t+1) = max(Y_n(t) + Γ_n^t − Γ^max, 0)                                  (Eq. 29)

The queue Y_n grows while cluster n's convergence gap Γ_n (Eq. 28) exceeds its budget Γ^max,
so minimising V·τ(t) + Σ_n Y_n·(…) each round keeps the long-run mean of Γ_n under Γ^max
(queue stability) while trading latency against the bound with weight V.

Two per-round objectives (docs/design.md §3, "Lyapunov step"):

* ``drift`` (default) — V·τ(t) + Σ_n Y_n·Γ_n^t(S_n, p_n): the true drift-plus-penalty bound;
  more stages raise Γ, more transmit power lowers it.
* ``paper``           — Eq. 32 literally: V·τ(t) + Σ_n Y_n·(S_n + p_n). Its p_n term has the
  opposite sign of Eq. 28's effect (power lowers Γ), so it penalises power instead.
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.choices import LYAPUNOV_VARIANTS  # noqa: F401 (re-exported)
from collapipe_jax.errors import ValidationError


def check_lyapunov(variant: str) -> None:
    if variant not in LYAPUNOV_VARIANTS:
        raise ValidationError("lyapunov", f"must be one of {list(LYAPUNOV_VARIANTS)}", variant)


def update_queues(Y: np.ndarray, Gamma: np.ndarray, Gamma_max: float) -> np.ndarray:
    """Eq. 29: Y_n(t+1) = max(Y_n(t) + Γ_n^t − Γ^max, 0)."""
    Y = np.asarray(Y, dtype=float)
    Gamma = np.asarray(Gamma, dtype=float)
    if Y.shape != Gamma.shape:
        raise ValidationError("Y", f"must have the shape of Gamma {Gamma.shape}", Y.shape)
    if not (np.all(np.isfinite(Y)) and np.all(np.isfinite(Gamma))):
        raise ValidationError("Y", "queues and Gamma must be finite", (Y.tolist(), Gamma.tolist()))
    return np.maximum(Y + Gamma - Gamma_max, 0.0)


def queue_weight(variant: str, Gamma: np.ndarray, S: np.ndarray, p_n: np.ndarray) -> np.ndarray:
    """The per-cluster quantity multiplied by Y_n in the round objective."""
    check_lyapunov(variant)
    if variant == "drift":
        return np.asarray(Gamma, float)
    return np.asarray(S, float) + np.asarray(p_n, float)


def round_objective(variant: str, V: float, tau_round: float, Y: np.ndarray, Gamma: np.ndarray,
                    S: np.ndarray, p_n: np.ndarray) -> float:
    """V·τ(t) + Σ_n Y_n·Γ_n (drift) or V·τ(t) + Σ_n Y_n·(S_n + p_n) (paper, Eq. 32)."""
    return float(V * tau_round + np.dot(np.asarray(Y, float), queue_weight(variant, Gamma, S, p_n)))
