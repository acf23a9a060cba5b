"""Energy model: Eq. 12, 14 and 16. Pure `jnp`.

Eq. 12 charges the CU's upload of θ^enc only (as printed; τ^up of Eq. 11 carries z^enc + θ^enc).

Eq. 16 multiplies CPU cycles by f_k², which needs the effective switched capacitance κ
(docs/design.md §3, κ = 1e−28 by default): the compute energy of `cycles` is κ f_k² · cycles.

Per device and round (the device's term of Eq. 16, what C9 bounds by E_k^max):

* ``paper``      — Eq. 14/16 as printed: E_k = 2m (κ f_k² cycles_k + E^sch_k), E^sch_k = p_k τ^dd_k
                    for *every* scheduled device, the last one included (Eq. 14 and C9' make no
                    exception for it, and Eq. 15 charges its τ^dd in the max too).
* ``consistent`` — m micro-batches, each one forward and one backward pass (already in cycles_k)
                    and one D2D exchange of b̂ (z^s + g^s) (already in τ^dd_k), none for the last
                    device: E_k = m (κ f_k² cycles_k + p_k τ^dd_k [k not last]).
"""

from __future__ import annotations

import jax.numpy as jnp

from collapipe_jax.system.latency import charged_d2d


def upload_energy(p_n, tau_theta):
    """Eq. 12 as printed: E^com_n = p_n θ^enc / r_n, with `tau_theta` = θ^enc / r_n the airtime of
    the encoder parameters alone. The CU pays for θ^enc; z^enc, which τ^up (Eq. 11) carries as
    well, is the last device's activation upload (§III-B step 3), which no energy term charges."""
    return p_n * tau_theta


def micro_batch_factor(m, variant: str = "paper"):
    """How many times one micro-batch's energy is spent per round: 2m (Eq. 16) or m."""
    return 2 * m if variant == "paper" else m


def device_energy(kappa, f_hz, cycles, p_k, tau_dd, m, scheduled, last, variant: str = "paper"):
    """Eq. 14/16 per device: factor(m) · (κ f_k² cycles_k + p_k τ^dd_k), with the D2D term as
    charged by the variant (`latency.charged_d2d`); `cycles` are one micro-batch's."""
    per_micro = kappa * f_hz**2 * cycles + p_k * charged_d2d(tau_dd, scheduled, last, variant)
    return jnp.where(scheduled, micro_batch_factor(m, variant)[:, None] * per_micro, 0.0)


def pipeline_energy(e_sch):
    """Eq. 16: E^pipe_n = Σ_k E_k."""
    return jnp.sum(e_sch, axis=1)
