"""The whole system model for one (state, decision) pair: `evaluate`.

Composes Eq. 10–16, 25, 26, 28 and 33 over all clusters. Pure `jnp`: `jax.jit`, `jax.vmap`
over any batch of states and decisions, and `jax.grad` w.r.t. the continuous inputs
(p_n, p_k, bandwidths, f_k, gains). Integer decisions are inputs, not differentiated.

`variant` picks the reading (latency.py, energy.py): ``paper`` computes Eq. 13–16 as printed,
τ^pipe = (S + m − 1) max_k (τ^cmp_k + τ^dd_k) − τ^dd_last and E_k = 2m (κ f_k² cycles_k + p_k τ^dd_k);
``consistent`` scales compute and D2D with b̂ and takes the heterogeneous GPipe makespan
τ^pipe = Σ_k t_k + (m − 1) max_k t_k with E_k = m (κ f_k² cycles_k + p_k τ^dd_k [not last]).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct

from collapipe_jax.scenario import Decision, SystemState
from collapipe_jax.system import convergence, energy, latency


@struct.dataclass
class Metrics:
    tau_cmp_s: jax.Array  # [N, K] per micro-batch
    tau_dd_s: jax.Array  # [N, K] charged D2D delay per micro-batch (0 unscheduled; last: consistent 0)
    stage_s: jax.Array  # [N, K] τ^cmp_k + charged τ^dd_k (paper: Eq. 15's max argument; consistent: t_k)
    tau_pipe_s: jax.Array  # [N]
    tau_up_s: jax.Array  # [N]
    tau_round_s: jax.Array  # []
    E_com_j: jax.Array  # [N]
    E_sch_j: jax.Array  # [N, K] device k's term of Eq. 16 (compute + D2D), bounded by C9
    E_pipe_j: jax.Array  # [N]
    eps: jax.Array  # [N]
    Gamma: jax.Array  # [N]
    n_stages: jax.Array  # [N] S_n


def channel_view(state: SystemState, channel):
    """Per-cluster (assigned, I, B) of the assigned channel; unassigned: mean I, B of channels."""
    assigned = channel >= 0
    n_channels = state.I_i_w.shape[0]
    # a one-hot product instead of a gather: vectorises far better on CPUs and GPUs
    channels = jnp.arange(n_channels).reshape((n_channels,) + (1,) * (channel.ndim - 1))
    onehot = (channel[:, None] == channels).astype(state.I_i_w.dtype)  # [N, J, ...]
    interference = jnp.where(assigned, jnp.sum(onehot * state.I_i_w, axis=1), jnp.mean(state.I_i_w, axis=0))
    bandwidth = jnp.where(assigned, jnp.sum(onehot * state.B_U_hz, axis=1), jnp.mean(state.B_U_hz, axis=0))
    return assigned, interference, bandwidth


def _evaluate(state: SystemState, decision: Decision, variant: str = "paper") -> Metrics:
    """Latency, energy and convergence gap of one decision in one round's state (docs/design.md §3).

    `state`: the round's draw (`scenario.draw_state`); `decision`: X(t) = [m, S, δ, order, I, p]
    (`scenario.Decision`); `variant`: "paper" (Eq. 15 as printed) or "consistent" (b̂-scaled,
    the exact GPipe makespan). Returns `Metrics`, float32, per cluster [N] unless said:
    tau_cmp_s, tau_dd_s [N, K] (Eq. 13, 15/33 per micro-batch), tau_pipe_s (Eq. 15/33),
    tau_up_s (Eq. 10–11), tau_round_s τ(t) = max_n (τ^pipe_n + τ^up_n) (Eq. 26, a scalar),
    E_com_j (Eq. 12), E_sch_j [N, K] and E_pipe_j (Eq. 14/16), eps ε_n (Eq. 25), Gamma Γ_n
    (Eq. 28), n_stages S_n. Jitted; differentiable in the continuous inputs (p_n, p_k, f_k, ...).
    """
    latency.check_variant(variant)
    delta = decision.delta.astype(jnp.float32)
    m = decision.m.astype(jnp.float32)
    b_hat = (state.b / m)[:, None]  # [N, 1, ...]
    scheduled, last = latency.pipeline_positions(decision.delta, decision.rank)

    cycles = latency.compute_cycles(delta, b_hat, state.o_fwd_flops, state.o_bwd_flops,
                                    state.phi_flops_per_cycle, variant)
    tau_cmp = cycles / state.f_hz
    r_dd = latency.d2d_rate(state.p_k_w, state.h_dd, state.I_dd_w, state.B_dd_hz, state.N0_w_per_hz)
    tau_dd = latency.d2d_delay(state.z_bits, state.g_bits, r_dd, b_hat, variant)
    stage = latency.stage_times(tau_cmp, tau_dd, scheduled, last, variant)
    # E_n local steps: E_n pipeline iterations per round, then one upload
    iterations = state.local_steps
    tau_pipe = iterations * latency.pipeline_latency(stage, m, scheduled, last, tau_dd, variant)

    assigned, interference, bandwidth = channel_view(state, decision.channel)
    rate = latency.uplink_rate(decision.p_n_w, state.h_n, interference, bandwidth, state.N0_w_per_hz,
                               state.fading)
    tau_up = latency.uplink_delay(state.theta_enc_bits + state.z_enc_bits, rate, assigned)

    e_com = energy.upload_energy(decision.p_n_w, latency.uplink_delay(state.theta_enc_bits, rate, assigned))
    e_sch = iterations[:, None] * energy.device_energy(state.kappa, state.f_hz, cycles, state.p_k_w, tau_dd, m,
                                                      scheduled, last, variant)

    n_stages = jnp.sum(scheduled, axis=1).astype(jnp.float32)
    p_eff = jnp.where(assigned, decision.p_n_w, 0.0)
    eps = convergence.upload_noise_variance(state.C_noise, p_eff, state.h_n, interference)
    gamma = convergence.convergence_gap(state.beta, state.eta, state.phi_seg, n_stages, eps)

    return Metrics(
        tau_cmp_s=jnp.where(scheduled, tau_cmp, 0.0),
        tau_dd_s=latency.charged_d2d(tau_dd, scheduled, last, variant),
        stage_s=stage,
        tau_pipe_s=tau_pipe,
        tau_up_s=tau_up,
        tau_round_s=latency.round_latency(tau_pipe, tau_up),
        E_com_j=e_com,
        E_sch_j=e_sch,
        E_pipe_j=energy.pipeline_energy(e_sch),
        eps=eps,
        Gamma=gamma,
        n_stages=n_stages,
    )


evaluate = jax.jit(_evaluate, static_argnames=("variant",))
evaluate.__doc__ = _evaluate.__doc__

# `evaluate` also takes a batch held in trailing axes (per-device leaves [N, K, B], per-cluster
# [N, B], per-channel [J, B], scalars [B] or unbatched): no vmap, batch in the minor axis.


def to_batch_minor(tree):
    """Move the leading batch axis of a stacked (state, decision) pytree to the end."""
    return jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), tree)


def round_latency_of_power(p_n_w, state: SystemState, decision: Decision, variant: str = "paper",
                           temperature: float | None = None):
    """τ(t) (Eq. 26) as a function of the CUs' transmit powers p_n [N], for `jax.grad`
    (∂τ/∂p_n, nonzero only for the slowest cluster); with `temperature` T the smooth upper bound
    T · logsumexp((τ^pipe + τ^up)/T) instead of the max (exact as T → 0)."""
    metrics = evaluate(state, decision.replace(p_n_w=p_n_w), variant)
    if temperature is None:
        return metrics.tau_round_s
    return latency.smooth_round_latency(metrics.tau_pipe_s, metrics.tau_up_s, temperature)

