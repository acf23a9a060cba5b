"""Every field of a scenario (`scenario.Scenario`, a `--scenario FILE.json`): its unit and its
meaning, with the default read from the dataclass (never retyped). `collapipe scenario --fields`
prints it and docs/api.md holds the same table (a test keeps the two equal). No JAX here.

Ranged fields are (low, high) and drawn uniformly each round from a key of (seed, round); the
presets (`paper-bert`, `paper-transformer`) set the model-size inputs from the model config
(docs/design.md §3, "Table II as read by the code").
"""

from __future__ import annotations

import dataclasses

# name → (unit, meaning); the order is the dataclass's
FIELD_DOCS = {
    "name": ("", "a label for the reports"),
    "model": ("", "the model config the size inputs were computed from (paper-bert, paper-transformer)"),
    "N": ("clusters", "number of clusters (one CU each)"),
    "K": ("devices", "devices per cluster"),
    "J": ("channels", "uplink channels"),
    "L": ("TEBs", "Transformer encoder blocks split over a cluster's devices (Σ_k δ_k = L, C1)"),
    "b": ("samples", "batch size per cluster and pipeline iteration (m divides it into micro-batches)"),
    "local_steps": ("iterations", "E: pipeline iterations (local steps) per round before the one upload"),
    "f_hz": ("Hz, range", "device CPU frequency f_k (Eq. 13–16)"),
    "phi_flops_per_cycle": ("FLOPs/cycle, range", "device throughput per cycle ϕ_k"),
    "p_k_w": ("W, range", "device D2D transmit power p_k (Eq. 13)"),
    "h_n": ("linear gain, range", "CU → server channel gain h_n (Eq. 10)"),
    "I_i_w": ("W, range", "interference on uplink channel i (Eq. 10, 25)"),
    "B_U_hz": ("Hz, range", "bandwidth of uplink channel i (Eq. 10)"),
    "h_dd": ("linear gain", "device-to-device channel gain (Eq. 13)"),
    "I_dd_w": ("W", "D2D interference (Eq. 13)"),
    "B_dd_hz": ("Hz", "D2D bandwidth (Eq. 13)"),
    "N0_w_per_hz": ("W/Hz", "noise power spectral density N0"),
    "P_max_n_w": ("W", "CU transmit power limit P_n^max (C8)"),
    "P_max_k_w": ("W", "device transmit power limit P_k^max (bounds p_k_w)"),
    "E_max_n_j": ("J", "CU upload energy budget E_n^max per round (C11')"),
    "E_max_k_j": ("J", "device energy budget E_k^max per round (C9')"),
    "gamma_max_n_bytes": ("bytes", "CU memory γ_n^max"),
    "gamma_max_k_bytes": ("bytes", "device memory γ_k^max (C7: δ_k γ_0 ≤ γ_k^max)"),
    "o_fwd_flops": ("FLOPs", "forward FLOPs of one TEB per sample o_l"),
    "o_bwd_flops": ("FLOPs", "backward FLOPs of one TEB per sample o'_l"),
    "z_bits": ("bits", "activations sent between two devices per sample z^s (Eq. 13)"),
    "g_bits": ("bits", "gradients sent back between two devices per sample g^s"),
    "z_enc_bits": ("bits", "the encoder output a CU uploads per batch z^enc (Eq. 11)"),
    "theta_enc_bits": ("bits", "the encoder's parameters θ^enc (uploaded whole with tunable full, Eq. 11–12)"),
    "gamma0_bytes": ("bytes", "memory one TEB needs on a device while training a batch γ_0 (C7)"),
    "kappa": ("J s²/cycle³", "effective switched capacitance κ (Eq. 14, 16)"),
    "beta": ("", "smoothness constant β of the convergence bound (Eq. 28)"),
    "eta": ("", "learning rate η in the bound (Eq. 28)"),
    "phi_seg": ("", "per-segment gradient-dissimilarity constant ϕ (Eq. 28)"),
    "C_noise": ("W", "C of the upload noise ε(p) = C / (p h + I) (Eq. 25)"),
    "Gamma_max": ("", "the convergence-gap budget Γ^max of the queues (Eq. 29)"),
    "V": ("", "Lyapunov weight V of latency against the queues (Eq. 32)"),
    "fading": ("", "Eq. 10's expectation: mean (the mean gain plugged in) or rayleigh (quadrature)"),
    "tunable": ("", "what a CU uploads: full (the whole encoder) or lora:R (rank-R LoRA adapters)"),
}


def field_rows() -> list[tuple[str, str, str, str]]:
    """(name, unit, default, meaning) of every Scenario field, in the dataclass's order."""
    from collapipe_jax.scenario import Scenario

    rows = []
    for field in dataclasses.fields(Scenario):
        unit, meaning = FIELD_DOCS[field.name]
        default = field.default
        shown = f"[{default[0]:.4g}, {default[1]:.4g}]" if isinstance(default, tuple) else (
            f"{default:.4g}" if isinstance(default, float) else str(default))
        rows.append((field.name, unit, shown, meaning))
    return rows


def fields_markdown() -> str:
    """The table of docs/api.md ("Scenario fields")."""
    lines = ["| field | unit | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {u} | {d} | {m} |" for n, u, d, m in field_rows()]
    return "\n".join(lines)
