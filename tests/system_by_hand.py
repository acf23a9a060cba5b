"""The pipeline part of the system model in plain Python, from the printed equations, for tests.

`inp` has the keys of `latency --json`'s "inputs" (f_hz, phi_flops_per_cycle, p_k_w [N][K]; h_dd,
I_dd_w, B_dd_hz, N0_w_per_hz, o_fwd_flops, o_bwd_flops, z_bits, g_bits, kappa, b; delta [N][K]);
`orders[n]` lists cluster n's scheduled devices in pipeline order and `m[n]` its micro-batches.
"""

import math


def pipeline_by_hand(inp, orders, m, variant):
    """Per cluster: (τ^pipe, [E_k for every device k]).

    paper (Eq. 13, 15, 16 as printed): u_k = δ_k (b̂ o_l + o'_l)/(ϕ_k f_k) + (z + g)/r^dd_k for
    every scheduled device, τ^pipe = (S + m − 1) max_k u_k − τ^dd_last and
    E_k = 2m (κ f_k² cycles_k + p_k τ^dd_k), the last device included.
    consistent: b̂ (o_l + o'_l) and b̂ (z + g); t_k without τ^dd for the last device;
    τ^pipe = Σ t_k + (m − 1) max t_k; E_k = m (κ f_k² cycles_k + p_k τ^dd_k [k not last]).
    """
    n0 = inp["N0_w_per_hz"]
    out = []
    for n, order in enumerate(orders):
        mn = m[n]
        b_hat = inp["b"] / mn
        K = len(inp["delta"][n])
        times, energy, dd_last = [], [0.0] * K, None
        for pos, k in enumerate(order):
            delta = inp["delta"][n][k]
            f, phi, p_k = inp["f_hz"][n][k], inp["phi_flops_per_cycle"][n][k], inp["p_k_w"][n][k]
            r_dd = inp["B_dd_hz"] * math.log2(1 + p_k * inp["h_dd"] / (inp["I_dd_w"] + inp["B_dd_hz"] * n0))
            last = pos == len(order) - 1
            if variant == "paper":
                cycles = delta * (b_hat * inp["o_fwd_flops"] + inp["o_bwd_flops"]) / phi
                t_dd = (inp["z_bits"] + inp["g_bits"]) / r_dd
                times.append(cycles / f + t_dd)
                energy[k] = 2 * mn * (inp["kappa"] * f**2 * cycles + p_k * t_dd)
                if last:
                    dd_last = t_dd
            else:
                cycles = delta * b_hat * (inp["o_fwd_flops"] + inp["o_bwd_flops"]) / phi
                t_dd = 0.0 if last else b_hat * (inp["z_bits"] + inp["g_bits"]) / r_dd
                times.append(cycles / f + t_dd)
                energy[k] = mn * (inp["kappa"] * f**2 * cycles + p_k * t_dd)
        S = len(order)
        if variant == "paper":
            tau = (S + mn - 1) * max(times) - dd_last
        else:
            tau = sum(times) + (mn - 1) * max(times)
        out.append((tau, energy))
    return out
