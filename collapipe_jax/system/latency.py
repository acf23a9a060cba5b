"""Latency model: Eq. 10, 11, 13, 15 (33) and 26. Pure `jnp`; jit, vmap and grad friendly.

Axis convention: cluster axis 0, device axis 1, then any number of *trailing* batch axes
(per-device arrays [N, K, ...], per-cluster [N, ...], per-channel [J, ...], scalars [...]). One
configuration has no batch axes; `jax.vmap` adds leading ones as usual, while putting a large
batch in the trailing (minor) axes lets XLA vectorise across configurations (the fast path of
`evaluate` on batch-minor arrays).

Conventions: b̂ = b / m is a real number (as in the paper); a device is *scheduled* when
δ_k > 0; `rank` gives its position in the cluster's pipeline order, S is the number of
scheduled devices and "last" is the scheduled device of rank S − 1 (docs/design.md §3).

Two variants of the system model (docs/design.md §3); τ^cmp_k and τ^dd_k are per micro-batch:

* ``paper``      — the equations as printed. τ^cmp_k = δ_k (b̂ o_l + o'_l) / (ϕ_k f_k),
                    τ^dd_k = (z^s + g^s) / r^dd_k (constant per micro-batch), and Eq. 15

                        τ^pipe = (S + m − 1) · max_k (τ^cmp_k + τ^dd_k) − τ^dd_last,

                    the max over every scheduled device *including* the last one, then the
                    last device's D2D delay subtracted once.
* ``consistent`` — forward and backward both scale with the micro-batch,
                    τ^cmp_k = δ_k b̂ (o_l + o'_l) / (ϕ_k f_k) and τ^dd_k = b̂ (z^s + g^s) / r^dd_k,
                    and τ^pipe is the exact makespan of a heterogeneous GPipe: with stage times
                    t_k = τ^cmp_k + τ^dd_k (no τ^dd for the last device, which sends nothing on)

                        τ^pipe = Σ_k t_k + (m − 1) · max_k t_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.choices import VARIANTS  # noqa: F401 (re-exported)

# Gauss–Laguerre nodes for E_g[log2(1 + a g)], g ~ Exp(1) (Rayleigh fading power around the
# mean gain): a deterministic, differentiable quadrature instead of Monte Carlo.
_LAGUERRE_X, _LAGUERRE_W = (np.asarray(a, np.float32) for a in np.polynomial.laguerre.laggauss(32))


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        from collapipe_jax.errors import ValidationError

        raise ValidationError("variant", f"must be one of {list(VARIANTS)}", variant)


def spectral_efficiency(snr, fading: str = "mean"):
    """log2(1 + SNR), or its expectation over Rayleigh fading of the gain (Eq. 10's E_h)."""
    if fading == "mean":
        return jnp.log2(1.0 + snr)
    snr = jnp.asarray(snr)[..., None]
    return jnp.sum(_LAGUERRE_W * jnp.log2(1.0 + snr * _LAGUERRE_X), axis=-1)


def uplink_rate(p_n, h_n, interference, bandwidth, n0, fading: str = "mean"):
    """Eq. 10: r_n = B_i log2(1 + p_n h_n / (I_i + B_i N0)) bits/s on the assigned channel i."""
    snr = p_n * h_n / (interference + bandwidth * n0)
    return bandwidth * spectral_efficiency(snr, fading)


def uplink_delay(bits, rate, assigned):
    """Eq. 11: τ^up_n = (θ^enc + z^enc) / r_n; zero when the cluster has no channel this round."""
    safe_rate = jnp.where(assigned, rate, 1.0)
    return jnp.where(assigned, bits / safe_rate, 0.0)


def d2d_rate(p_k, h_dd, i_dd, b_dd, n0):
    """Eq. 13's rate: r^dd_k = B^dd log2(1 + p_k h^dd / (I^dd + B^dd N0))."""
    return b_dd * jnp.log2(1.0 + p_k * h_dd / (i_dd + b_dd * n0))


def d2d_delay(z_bits, g_bits, rate, b_hat, variant: str = "paper"):
    """Eq. 13: activation forward plus gradient backward over the D2D link, per micro-batch
    (z^s + g^s under ``paper``, b̂ (z^s + g^s) under ``consistent``)."""
    bits = z_bits + g_bits
    if variant == "consistent":
        bits = b_hat * bits
    return bits / rate


def compute_cycles(delta, b_hat, o_fwd, o_bwd, phi, variant: str = "paper"):
    """CPU cycles of δ_k TEBs for one micro-batch (forward + backward), Eq. 15 / 33."""
    if variant == "consistent":
        flops = delta * b_hat * (o_fwd + o_bwd)
    else:
        flops = delta * (b_hat * o_fwd + o_bwd)
    return flops / phi


def compute_delay(delta, b_hat, o_fwd, o_bwd, phi, f_hz, variant: str = "paper"):
    """Eq. 15 / 33: τ^cmp_k = cycles / f_k."""
    return compute_cycles(delta, b_hat, o_fwd, o_bwd, phi, variant) / f_hz


def pipeline_positions(delta, rank):
    """(scheduled, last) masks [.., K]: δ_k > 0, and the last device in pipeline order."""
    scheduled = delta > 0
    n_stages = jnp.sum(scheduled, axis=1, keepdims=True)
    last = scheduled & (rank == n_stages - 1)
    return scheduled, last


def charged_d2d(tau_dd, scheduled, last, variant: str = "paper"):
    """The D2D delay each device is charged per micro-batch: every scheduled device under
    ``paper`` (Eq. 15's max includes the last one's τ^dd), all but the last under ``consistent``."""
    sends = scheduled if variant == "paper" else scheduled & ~last
    return jnp.where(sends, tau_dd, 0.0)


def stage_times(tau_cmp, tau_dd, scheduled, last, variant: str = "paper"):
    """Per-device time of one micro-batch chunk, 0 for unscheduled devices.

    ``paper``: the argument of Eq. 15's max, τ^cmp_k + τ^dd_k, the last device included;
    ``consistent``: the GPipe stage time t_k = τ^cmp_k + τ^dd_k, without τ^dd for the last.
    """
    return jnp.where(scheduled, tau_cmp + charged_d2d(tau_dd, scheduled, last, variant), 0.0)


def pipeline_latency(stage_s, m, scheduled, last, tau_dd, variant: str = "paper"):
    """τ^pipe per cluster from `stage_times` of the same variant.

    ``paper`` (Eq. 15 as printed): (S + m − 1) max_k u_k − τ^dd_last;
    ``consistent`` (GPipe makespan): Σ_k t_k + (m − 1) max_k t_k.
    """
    top = jnp.max(stage_s, axis=1)
    if variant == "paper":
        n_stages = jnp.sum(scheduled, axis=1).astype(stage_s.dtype)
        return (n_stages + m - 1) * top - jnp.sum(jnp.where(last, tau_dd, 0.0), axis=1)
    return jnp.sum(stage_s, axis=1) + (m - 1) * top


def pipedream_latency(stage_s, m, local_steps, scheduled, last, tau_dd, variant: str = "paper"):
    """The pipeline time of a round of E local steps under the pipedream reading (asynchronous
    1F1B, docs/design.md §3 and §5), per cluster.

    1F1B never flushes inside a round: in steady state a micro-batch leaves the pipeline every
    max_k u_k (the slowest stage's forward + backward + D2D), so a local step of m micro-batches
    takes m · max_k u_k, and the fill and the drain are paid once per round (the upload needs the
    final weights) instead of once per step as GPipe pays them. The round is one pipeline of
    E·m micro-batches:
        ``paper``:      (S + E·m − 1) max_k u_k − τ^dd_last      (Eq. 15 with m → E·m)
        ``consistent``: Σ_k t_k + (E·m − 1) max_k t_k            (the makespan with m → E·m)
    against E times Eq. 15 for GPipe. With E = 1 the two readings take the same time.
    The scheduler keeps charging Eq. 15 (E·τ^pipe) under either reading."""
    return pipeline_latency(stage_s, local_steps * m, scheduled, last, tau_dd, variant)


def pipeline_compute_latency(tau_cmp, m, scheduled, last, variant: str = "paper"):
    """τ^pipe of the variant with every D2D delay zero: the pipeline's on-device computation
    time, (S + m − 1) max_k τ^cmp_k (paper) or Σ_k τ^cmp_k + (m − 1) max_k τ^cmp_k (consistent).
    τ^pipe minus this is what the D2D links add (under ``paper`` it can be negative: Eq. 15
    subtracts τ^dd_last while the max may be set by another device's computation)."""
    zeros = jnp.zeros_like(tau_cmp)
    stage = stage_times(tau_cmp, zeros, scheduled, last, variant)
    return pipeline_latency(stage, m, scheduled, last, zeros, variant)


def round_latency(tau_pipe, tau_up):
    """Eq. 26: τ(t) = max_n (τ^pipe_n + τ^up_n): the server waits for the slowest cluster."""
    return jnp.max(tau_pipe + tau_up, axis=0)


def smooth_round_latency(tau_pipe, tau_up, temperature):
    """T · logsumexp((τ^pipe + τ^up)/T): a smooth upper bound of Eq. 26, exact as T → 0."""
    total = tau_pipe + tau_up
    return temperature * jax.nn.logsumexp(total / temperature, axis=0)
