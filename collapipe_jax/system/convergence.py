"""Convergence bound terms: Eq. 25 (upload noise) and Eq. 28 (per-cluster Γ_n). Pure `jnp`.

Γ_n = (β η² ϕ / 2) · S_n + (β / 2) · ε_n(p_n), with ε_n = C / (p_n h_n + I_i) (Eq. 25, Lemma 2):
more stages widen the bound, more transmit power shrinks the aggregation noise.
β, η, ϕ, C are explicit parameters of the scenario (docs/design.md §3).
"""

from __future__ import annotations

import jax.numpy as jnp


def upload_noise_variance(c_noise, p_n, h_n, interference):
    """Eq. 25: ε_n = C / (p_n h_n + I_i)."""
    return c_noise / (p_n * h_n + interference)


def convergence_gap(beta, eta, phi_seg, n_stages, eps):
    """Eq. 28: Γ_n = (β η² ϕ / 2) S_n + (β / 2) ε_n."""
    return 0.5 * beta * eta**2 * phi_seg * n_stages + 0.5 * beta * eps
