"""Reference implementations of the system model for the benchmark's ratios.

* `numpy_evaluate`: the same equations vectorised with NumPy over a batch (float32).
* `python_evaluate`: one configuration at a time in plain Python (`math`), as a per-config
  loop in a hand-written simulator would do it.
Both are checked against `collapipe_jax.system.evaluate` in tests/test_bench_references.py.
"""

from __future__ import annotations

import math

import numpy as np


def numpy_evaluate(st: dict, dc: dict, variant: str = "paper") -> dict:
    """Batched arrays: st[...] with leading batch axis (as in a stacked SystemState)."""
    delta = dc["delta"].astype(np.float32)
    m = dc["m"].astype(np.float32)
    b_hat = (st["b"][:, None] / m)[:, :, None]
    scheduled = dc["delta"] > 0
    n_stages = scheduled.sum(-1, keepdims=True)
    last = scheduled & (dc["rank"] == n_stages - 1)
    o_f, o_b = st["o_fwd_flops"][:, None, None], st["o_bwd_flops"][:, None, None]
    if variant == "consistent":
        cycles = delta * b_hat * (o_f + o_b) / st["phi_flops_per_cycle"]
    else:
        cycles = delta * (b_hat * o_f + o_b) / st["phi_flops_per_cycle"]
    tau_cmp = cycles / st["f_hz"]
    n0 = st["N0_w_per_hz"][:, None, None]
    bdd = st["B_dd_hz"][:, None, None]
    r_dd = bdd * np.log2(1 + st["p_k_w"] * st["h_dd"][:, None, None] / (st["I_dd_w"][:, None, None] + bdd * n0))
    bits = (st["z_bits"] + st["g_bits"])[:, None, None]
    tau_dd = (b_hat * bits if variant == "consistent" else bits) / r_dd
    if variant == "paper":  # Eq. 15: (S + m − 1) max_k (τ^cmp + τ^dd), the last included, − τ^dd_last
        sends = scheduled
        stage = np.where(scheduled, tau_cmp + tau_dd, 0)
        tau_pipe = (n_stages[..., 0] + m - 1) * stage.max(-1) - np.where(last, tau_dd, 0).sum(-1)
    else:  # the GPipe makespan, the last device sends nothing
        sends = scheduled & ~last
        stage = np.where(scheduled, tau_cmp + np.where(last, 0, tau_dd), 0)
        tau_pipe = stage.sum(-1) + (m - 1) * stage.max(-1)
    iterations = st["local_steps"]  # [B, N]: E_n pipeline iterations per round
    tau_pipe = iterations * tau_pipe
    ch = dc["channel"]
    assigned = ch >= 0
    idx = np.clip(ch, 0, None)
    interference = np.where(assigned, np.take_along_axis(st["I_i_w"], idx, 1), st["I_i_w"].mean(1, keepdims=True))
    bandwidth = np.where(assigned, np.take_along_axis(st["B_U_hz"], idx, 1), st["B_U_hz"].mean(1, keepdims=True))
    p = dc["p_n_w"]
    rate = bandwidth * np.log2(1 + p * st["h_n"] / (interference + bandwidth * st["N0_w_per_hz"][:, None]))
    up_bits = (st["theta_enc_bits"] + st["z_enc_bits"])[:, None]
    tau_up = np.where(assigned, up_bits / np.where(assigned, rate, 1), 0)
    factor = 2 * m if variant == "paper" else m  # Eq. 16 as printed: 2m
    e_sch = np.where(scheduled, (iterations * factor)[:, :, None] * (st["kappa"][:, None, None] * st["f_hz"] ** 2 * cycles
                                                      + np.where(sends, st["p_k_w"] * tau_dd, 0)), 0)
    eps = st["C_noise"][:, None] / (np.where(assigned, p, 0) * st["h_n"] + interference)
    gamma = (0.5 * st["beta"] * st["eta"] ** 2 * st["phi_seg"])[:, None] * n_stages[..., 0] \
        + 0.5 * st["beta"][:, None] * eps
    e_com = np.where(assigned, p * st["theta_enc_bits"][:, None] / np.where(assigned, rate, 1), 0)  # Eq. 12: θ only
    return {"tau_pipe_s": tau_pipe, "tau_up_s": tau_up, "tau_round_s": (tau_pipe + tau_up).max(-1),
            "E_com_j": e_com, "E_sch_j": e_sch, "E_pipe_j": e_sch.sum(-1), "Gamma": gamma}


def python_evaluate(st: dict, dc: dict, variant: str = "paper") -> tuple[float, list, list]:
    """One configuration (lists and floats): (τ, E^pipe per cluster, Γ per cluster)."""
    n0 = st["N0_w_per_hz"]
    paper = variant == "paper"
    tau_tot, e_pipe, gammas = [], [], []
    for n in range(len(dc["m"])):
        m = dc["m"][n]
        b_hat = st["b"] / m
        delta, rank = dc["delta"][n], dc["rank"][n]
        n_stages = sum(1 for d in delta if d > 0)
        stages, energy, dd_last = [], 0.0, 0.0
        for k, d in enumerate(delta):
            if d == 0:
                continue
            if paper:
                cycles = d * (b_hat * st["o_fwd_flops"] + st["o_bwd_flops"]) / st["phi_flops_per_cycle"][n][k]
                bits = st["z_bits"] + st["g_bits"]
            else:
                cycles = d * b_hat * (st["o_fwd_flops"] + st["o_bwd_flops"]) / st["phi_flops_per_cycle"][n][k]
                bits = b_hat * (st["z_bits"] + st["g_bits"])
            t_cmp = cycles / st["f_hz"][n][k]
            r_dd = st["B_dd_hz"] * math.log2(1 + st["p_k_w"][n][k] * st["h_dd"] / (st["I_dd_w"] + st["B_dd_hz"] * n0))
            is_last = rank[k] == n_stages - 1
            t_dd = 0.0 if (is_last and not paper) else bits / r_dd
            if is_last:
                dd_last = bits / r_dd
            stages.append(t_cmp + t_dd)
            energy += (2 * m if paper else m) * (st["kappa"] * st["f_hz"][n][k] ** 2 * cycles + st["p_k_w"][n][k] * t_dd)
        if paper:
            tau_pipe = (n_stages + m - 1) * max(stages) - dd_last
        else:
            tau_pipe = sum(stages) + (m - 1) * max(stages)
        tau_pipe *= st["local_steps"][n]
        energy *= st["local_steps"][n]
        j = dc["channel"][n]
        p = dc["p_n_w"][n]
        if j >= 0:
            interference, bw = st["I_i_w"][j], st["B_U_hz"][j]
            rate = bw * math.log2(1 + p * st["h_n"][n] / (interference + bw * n0))
            tau_up = (st["theta_enc_bits"] + st["z_enc_bits"]) / rate
        else:
            interference, tau_up, p = sum(st["I_i_w"]) / len(st["I_i_w"]), 0.0, 0.0
        tau_tot.append(tau_pipe + tau_up)
        e_pipe.append(energy)
        eps = st["C_noise"] / (p * st["h_n"][n] + interference)
        gammas.append(0.5 * st["beta"] * st["eta"] ** 2 * st["phi_seg"] * n_stages + 0.5 * st["beta"] * eps)
    return max(tau_tot), e_pipe, gammas
