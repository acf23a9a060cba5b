"""Energy model: Eq. 12, 14 and 16. Pure `jnp`.

Eq. 14 multiplies CPU cycles by f_k², which needs the effective switched capacitance κ
(DESIGN.md §3, κ = 1e−28 by default): E^cmp = κ f_k² · cycles.
"""

from __future__ import annotations

import jax.numpy as jnp


def upload_energy(p_n, tau_up):
    """Eq. 12: E^com_n = p_n τ^up_n."""
    return p_n * tau_up


def device_energy(kappa, f_hz, cycles, p_k, tau_dd, m, scheduled, last):
    """Eq. 14: E^sch_k = m (κ f_k² cycles_k + p_k τ^dd_k), no D2D send for the last device.

    `cycles` are one micro-batch's; m micro-batches pass through each stage per round.
    """
    per_micro = kappa * f_hz**2 * cycles + jnp.where(last, 0.0, p_k * tau_dd)
    return jnp.where(scheduled, m[:, None] * per_micro, 0.0)


def pipeline_energy(e_sch):
    """Eq. 16: E^pipe_n = Σ_k E^sch_k."""
    return jnp.sum(e_sch, axis=1)
