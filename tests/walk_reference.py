"""The walks over every candidate bottleneck that the scheduler used before its scalable forms,
kept verbatim as the references those are tested against (docs/design.md §4):

* `solve_resources_walk` — Sub-2 (resources.solve_resources) before the threshold search: every
  candidate bottleneck T in ascending order with one exact matching (scipy's Hungarian method)
  per T, stopping once V·T + a lower bound of the costs cannot beat the best;
* `choose_stage_counts_walk` — Sub-1's choice of S given Sub-2 (dssra.choose_stage_counts)
  before its prefix form: one N × K pass per bound."""

import numpy as np

from collapipe_jax.scheduling import resources as rs
from collapipe_jax.scheduling.lyapunov import check_lyapunov


def solve_resources_walk(up: rs.Uplink, tau_pipe: np.ndarray, S: np.ndarray, Y: np.ndarray, V: float,
                         lyapunov: str = "drift", p_ub: np.ndarray | None = None,
                         weights: np.ndarray | None = None, use_cvxpy: bool = True,
                         paper_grid: int = 64) -> rs.ResourceDecision:
    """Alg. 3: channel matching + power for fixed Sub-1 decisions (τ_pipe, S).

    `weights` (default Y) multiply the per-cluster term; `p_ub` may be passed when precomputed.
    Raises InfeasibleError naming C11' when fewer than min(N, J) clusters can upload.
    """
    check_lyapunov(lyapunov)
    tau_pipe = np.asarray(tau_pipe, float)
    Y = np.asarray(Y, float) if weights is None else np.asarray(weights, float)
    p_ub = rs.power_upper_bounds(up) if p_ub is None else p_ub
    n_idx = np.arange(up.N)[:, None]
    j_idx = np.arange(up.J)[None, :]
    ok = ~np.isnan(p_ub)
    p_safe = np.where(ok, p_ub, 1.0)
    delay_ub = rs.upload_delay(up, p_safe, n_idx, j_idx)
    lat = np.where(ok, tau_pipe[:, None] + delay_ub, np.inf)
    candidates = np.unique(np.concatenate([lat[np.isfinite(lat)], tau_pipe]))
    half_beta = 0.5 * up.beta
    # ties (module docstring): δ ε_n added to every pair; no ε_n exceeds C / min I (p = 0)
    noise_max = up.C_noise / float(np.min(up.I_i_w))
    if lyapunov == "drift":
        cost_pair = np.where(ok, Y[:, None] * half_beta * up.C_noise / (p_safe * up.h_n[:, None] + up.I_i_w[None, :]),
                             np.inf)
        cost_none = Y * half_beta * up.C_noise / np.mean(up.I_i_w)
        floor = float(np.sum(np.minimum(np.min(cost_pair, axis=1), cost_none)))
        costs = np.concatenate([cost_pair.ravel(), cost_none if up.N > up.J else []])
    else:
        cost_none = np.zeros(up.N)
        floor = 0.0
        costs = (Y[:, None] * p_safe)[ok]  # a pair's power never exceeds p_ub
    delta = rs.tie_break_weight(float(np.max(np.abs(costs[np.isfinite(costs)]), initial=0.0)), noise_max)
    delta_C = delta * up.C_noise
    tie_none = np.full(up.N, delta_C / np.mean(up.I_i_w))
    if lyapunov == "drift":
        tie_pair = delta_C / (p_safe * up.h_n[:, None] + up.I_i_w[None, :])
    if lyapunov == "paper":
        # the least power meeting T changes continuously with T, so the best matching may win
        # only between the candidate bounds: search a dense grid of bounds as well
        T_lo = float(candidates[0])
        span = max(float(candidates[-1]) - T_lo, T_lo, 1e-9)
        candidates = np.unique(np.concatenate([candidates, T_lo + span * np.geomspace(1e-4, 4.0, paper_grid)]))
    best = None
    for T in candidates:
        if best is not None and V * T + floor >= best[0]:
            break  # later bounds only add latency
        allowed = lat <= T
        if lyapunov == "drift":
            cost = np.where(allowed, cost_pair, np.inf)
            p_pair, delay_pair = p_ub, delay_ub
        else:
            p_pair = rs.power_for_delay(up, T - tau_pipe[:, None], n_idx, j_idx, p_cap=np.where(ok, p_ub, 0.0))
            p_pair = np.where(allowed & np.isfinite(p_pair), p_pair, np.nan)
            p_zero = np.nan_to_num(p_pair)
            cost = np.where(np.isnan(p_pair), np.inf, Y[:, None] * p_zero)
            delay_pair = rs.upload_delay(up, np.nan_to_num(p_pair, nan=1.0), n_idx, j_idx)
            tie_pair = delta_C / (p_zero * up.h_n[:, None] + up.I_i_w[None, :])
        none_cost = np.where(tau_pipe <= T, cost_none, np.inf)
        matched = rs.match_channels(cost, none_cost, tie_pair, tie_none)
        if matched is None:
            continue
        channel, total = matched
        rows, cols = np.arange(up.N), np.clip(channel, 0, None)
        uploads = channel >= 0
        p = np.where(uploads, p_pair[rows, cols], 0.0)
        tau_up = np.where(uploads, delay_pair[rows, cols], 0.0)
        obj = V * float(np.max(tau_pipe + tau_up)) + total
        if best is None or obj < best[0]:
            best = (obj, channel, p, tau_up)
    if best is None:
        raise rs.infeasible_c11(up, p_ub)
    obj, channel, p, tau_up = best
    fallback = False
    if lyapunov == "paper":
        refined = rs.power_control_paper(up, tau_pipe, channel, Y, V, p_ub, use_cvxpy=use_cvxpy)
        if refined.objective < obj:
            return refined
        fallback = refined.fallback
    return rs.ResourceDecision(channel, p, tau_up, obj, fallback)


def choose_stage_counts_walk(fronts, tau_up, weights, V, coef) -> list[int]:
    """Exact min over S-vectors of V max_n (F_n[S_n] + τ^up_n) + Σ_n w_n coef S_n: for each
    bound T every cluster takes, among its plans under T, the least w coef S (ties: the faster
    plan); the first best T wins."""
    N = len(fronts)
    K = len(fronts[0].plans)
    lat = np.full((N, K), np.inf)
    for n, front in enumerate(fronts):
        for i, p in enumerate(front.plans):
            if p is not None:
                lat[n, i] = p.tau_pipe_s + tau_up[n]
    S = np.arange(1, K + 1)
    cost = np.asarray(weights, float)[:, None] * coef * S[None, :]
    best, choice = np.inf, None
    for T in np.unique(lat[np.isfinite(lat)]):
        fits = lat <= T
        if not fits.any(axis=1).all():
            continue  # some cluster has no plan this fast
        c = np.where(fits, cost, np.inf)
        cmin = c.min(axis=1, keepdims=True)
        # among the cheapest plans under T, the fastest
        pick = np.argmin(np.where(c == cmin, lat, np.inf), axis=1)
        rows = np.arange(N)
        total = V * float(np.max(lat[rows, pick])) + float(np.sum(c[rows, pick]))
        if total < best:
            best, choice = total, pick
    return [int(i) for i in choice]
