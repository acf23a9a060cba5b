"""Plain-Python views of a (scenario, state, decision, metrics) for CLI JSON and tables.

The keys are the stable interface of docs/design.md §6 (`latency`, `sensitivity`, `schedule`).
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.scenario import Decision, Scenario, SystemState, orders_of
from collapipe_jax.system import latency


def _list(x):
    return np.asarray(x, dtype=float).tolist()


def inputs_dict(scenario: Scenario, state: SystemState, decision: Decision) -> dict:
    """Every resolved input in SI units; per-cluster channel quantities are those of the
    assigned channel (null where the cluster has no channel this round)."""
    s = scenario
    channel = np.asarray(decision.channel)
    I = np.asarray(state.I_i_w, float)
    B = np.asarray(state.B_U_hz, float)
    assignment = np.zeros((s.N, s.J), dtype=int)
    for n, j in enumerate(channel):
        if j >= 0:
            assignment[n, j] = 1
    return {
        "scenario": s.name,
        "model": s.model,
        "N": s.N, "K": s.K, "J": s.J, "L": s.L, "b": s.b, "local_steps": _list(state.local_steps),
        "f_hz": _list(state.f_hz),
        "phi_flops_per_cycle": _list(state.phi_flops_per_cycle),
        "p_k_w": _list(state.p_k_w),
        "h_dd": float(state.h_dd), "I_dd_w": float(state.I_dd_w), "B_dd_hz": float(state.B_dd_hz),
        "N0_w_per_hz": float(state.N0_w_per_hz),
        "B_U_hz": [float(B[j]) if j >= 0 else None for j in channel],
        "h_n": _list(state.h_n),
        "I_i_w": [float(I[j]) if j >= 0 else None for j in channel],
        "channel_I_w": I.tolist(), "channel_B_hz": B.tolist(),
        "p_n_w": _list(decision.p_n_w),
        "o_fwd_flops": float(state.o_fwd_flops), "o_bwd_flops": float(state.o_bwd_flops),
        "z_bits": float(state.z_bits), "g_bits": float(state.g_bits),
        "z_enc_bits": float(state.z_enc_bits), "theta_enc_bits": float(state.theta_enc_bits),
        "kappa": float(state.kappa), "gamma0_bytes": float(state.gamma0_bytes),
        "gamma_max_k_bytes": _list(state.gamma_max_k_bytes),
        "E_max_k_j": _list(state.E_max_k_j),
        "E_max_n_j": _list(state.E_max_n_j),
        "P_max_n_w": _list(state.P_max_n_w),
        "delta": np.asarray(decision.delta).astype(int).tolist(),
        "order": orders_of(decision),
        "m": np.asarray(decision.m).astype(int).tolist(),
        "channel": [int(j) if j >= 0 else None for j in channel],
        "assignment": assignment.tolist(),
        "fading": state.fading,
    }


def metrics_dict(metrics) -> dict:
    return {
        "tau_cmp_s": _list(metrics.tau_cmp_s),
        "tau_dd_s": _list(metrics.tau_dd_s),
        "tau_pipe_s": _list(metrics.tau_pipe_s),
        "tau_up_s": _list(metrics.tau_up_s),
        "tau_round_s": float(metrics.tau_round_s),
        "E_com_j": _list(metrics.E_com_j),
        "E_sch_j": _list(metrics.E_sch_j),
        "E_pipe_j": _list(metrics.E_pipe_j),
        "eps": _list(metrics.eps),
        "Gamma": _list(metrics.Gamma),
    }


def time_split(decision: Decision, metrics, variant: str = "paper") -> dict:
    """Each cluster's round time in its parts (Fig. 7/8 compare the computation part):

    tau_pipe_cmp_s [N]  on-device computation: τ^pipe with every D2D delay zero
                        (`latency.pipeline_compute_latency`)
    tau_pipe_dd_s  [N]  what the D2D links add: τ^pipe − tau_pipe_cmp_s
    tau_up_s       [N]  the upload (Eq. 11)
    round_cmp_s, round_dd_s, round_up_s   the round's: the largest over the clusters of each part
                        (each its own max, so they need not sum to τ(t) = max_n (τ^pipe_n + τ^up_n))
    """
    delta = np.asarray(decision.delta)
    scheduled = delta > 0
    last = scheduled & (np.asarray(decision.rank) == scheduled.sum(axis=1, keepdims=True) - 1)
    m = np.asarray(decision.m, np.float32)
    cmp = np.asarray(latency.pipeline_compute_latency(np.asarray(metrics.tau_cmp_s), m, scheduled, last, variant),
                     float)
    dd = np.asarray(metrics.tau_pipe_s, float) - cmp
    up = np.asarray(metrics.tau_up_s, float)
    return {"tau_pipe_cmp_s": cmp.tolist(), "tau_pipe_dd_s": dd.tolist(), "tau_up_s": up.tolist(),
            "round_cmp_s": float(cmp.max()), "round_dd_s": float(dd.max()), "round_up_s": float(up.max())}


def constraint_violations(state: SystemState, decision: Decision, metrics) -> list[dict]:
    """C7 (memory), C9' (device energy), C11' (upload energy) checked on an evaluated decision."""
    out = []
    delta = np.asarray(decision.delta)
    mem = delta * float(state.gamma0_bytes)
    gmax = np.asarray(state.gamma_max_k_bytes)
    esch, emaxk = np.asarray(metrics.E_sch_j), np.asarray(state.E_max_k_j)
    ecom, emaxn = np.asarray(metrics.E_com_j), np.asarray(state.E_max_n_j)
    for n, k in zip(*np.nonzero(mem > gmax)):
        out.append({"constraint": "C7", "cluster": int(n), "device": int(k),
                    "message": f"memory {mem[n, k]:.4g} B > gamma_max_k {gmax[n, k]:.4g} B"})
    for n, k in zip(*np.nonzero(esch > emaxk)):
        out.append({"constraint": "C9'", "cluster": int(n), "device": int(k),
                    "message": f"device energy {esch[n, k]:.4g} J > E_max_k {emaxk[n, k]:.4g} J"})
    for n in np.nonzero(ecom > emaxn)[0]:
        out.append({"constraint": "C11'", "cluster": int(n),
                    "message": f"upload energy {ecom[n]:.4g} J > E_max_n {emaxn[n]:.4g} J"})
    return out
