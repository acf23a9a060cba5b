"""One round's scheduling problem on the device: the batched mirror of `scheduling/dssra.RoundProblem`.

`round_problem(state, config)` builds, from a `SystemState` (one round's draw, float32 as
`scenario.draw_state` makes it), the per-cluster device arrays of Sub-1 (`segments.Cluster`,
leaves with a leading cluster axis N) and the uplink of Sub-2 (`resources.Uplink`), in the
engine's working dtype. It is the host's `round_problem` term for term: the D2D rate of Eq. 13,
the upload carrying θ^enc + z^enc (Eq. 11) of which the CU is charged θ^enc (Eq. 12).

What stays fixed over a run and decides shapes or code paths is `EngineConfig` (static); what
may vary per seed or per setting (V, Γ^max) is data, so one compiled program serves a grid of V.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from collapipe_jax.scenario import Scenario, SystemState
from collapipe_jax.scheduling.device import resources, segments


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """The static part of a device run: sizes, variants and solver options (hashable, so it can
    key a jit cache)."""

    N: int
    K: int
    J: int
    L: int
    b: int
    variant: str = "paper"  # system model: Eq. 15 as printed, or the GPipe makespan
    lyapunov: str = "drift"  # round objective: V τ + Σ Y Γ, or Eq. 32's V τ + Σ Y (S + p)
    m_rule: str = "stationary"
    max_iter: int = 10  # Alg. 4's alternations per start (the host's bound)
    fading: str = "mean"
    uploads_model: bool = True  # False: PipeLine (no FL aggregation) uploads only z^enc (run.py zeroes θ^enc)
    stages: int | None = None  # the `default` rule's S and m (None: all K devices, m = 4)
    micro_batches: int | None = None

    @classmethod
    def of(cls, scenario: Scenario, **options) -> "EngineConfig":
        return cls(N=scenario.N, K=scenario.K, J=scenario.J, L=scenario.L, b=scenario.b,
                   fading=scenario.fading, **options)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RoundProblem:
    clusters: segments.Cluster  # leaves [N, K] and [N]
    uplink: resources.Uplink


def d2d_rate(p_k, h_dd, i_dd, b_dd, n0):
    """Eq. 13: r^dd_k = B^dd log2(1 + p_k h^dd / (I^dd + B^dd N0))."""
    return b_dd * jnp.log2(1.0 + p_k * h_dd / (i_dd + b_dd * n0))


def working_dtype():
    """float64 under `jax.enable_x64` (the host's precision), float32 otherwise."""
    return jnp.zeros(()).dtype if jax.config.jax_enable_x64 else jnp.float32


def round_problem(state: SystemState, config: EngineConfig, local_steps=None) -> RoundProblem:
    """The round's problem from its draw (jittable, vmappable over draws).

    local_steps: E_n per cluster [N] (None: the state's)."""
    dt = working_dtype()
    a = lambda x: jnp.asarray(x, dt)  # noqa: E731
    N, K = config.N, config.K
    r_dd = d2d_rate(a(state.p_k_w), a(state.h_dd), a(state.I_dd_w), a(state.B_dd_hz), a(state.N0_w_per_hz))
    theta = a(state.theta_enc_bits)
    steps = a(state.local_steps) if local_steps is None else jnp.broadcast_to(a(local_steps), (N,))
    per_cluster = lambda x: jnp.broadcast_to(a(x), (N,))  # noqa: E731
    clusters = segments.Cluster(
        f_hz=a(state.f_hz), phi=a(state.phi_flops_per_cycle), p_k_w=a(state.p_k_w), r_dd_bps=r_dd,
        gamma_max_bytes=a(state.gamma_max_k_bytes), E_max_j=a(state.E_max_k_j),
        o_fwd=per_cluster(state.o_fwd_flops), o_bwd=per_cluster(state.o_bwd_flops),
        z_bits=per_cluster(state.z_bits), g_bits=per_cluster(state.g_bits),
        gamma0_bytes=per_cluster(state.gamma0_bytes), kappa=per_cluster(state.kappa), iterations=steps)
    assert clusters.f_hz.shape == (N, K)
    uplink = resources.Uplink(
        h_n=a(state.h_n), I_i_w=a(state.I_i_w), B_U_hz=a(state.B_U_hz), P_max_n_w=a(state.P_max_n_w),
        E_max_n_j=a(state.E_max_n_j), N0_w_per_hz=a(state.N0_w_per_hz),
        bits=theta + a(state.z_enc_bits), theta_bits=theta, C_noise=a(state.C_noise), beta=a(state.beta),
        eta=a(state.eta), phi_seg=a(state.phi_seg), fading=state.fading)
    return RoundProblem(clusters, uplink)


def cluster(problem: RoundProblem, n: int) -> segments.Cluster:
    """Cluster n's devices (for per-cluster calls outside a vmap)."""
    return jax.tree.map(lambda x: x[n], problem.clusters)
