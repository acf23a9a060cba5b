"""Sub-problem 2 (Alg. 3, Eq. 40–43): uplink channel matching and CU transmit power, on the host.

Given each cluster's pipeline latency τ_pipe_n and stage count S_n (from Sub-1), choose the
channel I (C6: a channel serves at most one cluster, a cluster uses at most one channel) and the
powers p_n (C8: 0 ≤ p_n ≤ P_n^max; C11': E^com_n = p_n τ^up_n(p_n) ≤ E_n^max) minimising the
round objective

    V · max_n (τ_pipe_n + τ^up_n(p_n)) + Σ_n Y_n · w_n(p_n)                        (Eq. 32)

with w_n = Γ_n (``drift``: decreasing in p_n through ε_n = C/(p_n h_n + I_i), Eq. 25/28) or
w_n = S_n + p_n (``paper``: increasing in p_n).

Facts used (Eq. 10–12): r(p) = B log2(1 + p h/(I + B N0)) is concave increasing, so τ^up(p) =
(θ + z^enc)/r(p) decreases and E^com(p) = p θ/r(p) (Eq. 12 as printed: the CU's energy for the
encoder parameters θ; z^enc is sent on by the last device, §III-B) increases in p
(p/log(1 + a p) is increasing), from E^com(0+) = θ ln2 (I + B N0)/(B h) ≥ 0.
Hence C8 ∧ C11' ⟺ 0 < p ≤ p_ub = min(P^max, E^com⁻¹(E^max)), found by bisection, and the
pair (n, i) is infeasible when E^com(0+) > E^max.

Channel matching (Hungarian method, `scipy.optimize.linear_sum_assignment`): rows are clusters,
columns the J channels plus N − J *virtual* channels when N > J ("no upload this round"), so
exactly min(N, J) clusters upload. The max over clusters couples the pairs, so the objective
is minimised over the candidate bottlenecks T (a pair's latency above T is forbidden), each with
its least-cost matching, keeping the best V·T + Σ cost; with the drift objective each pair's
best power for any T is p_ub (both terms fall with p), so this enumeration is exact. It is made
to scale without changing its result (`solve_resources`, docs/design.md §4): no T below the
least feasible one (binary search, Hopcroft–Karp test) is solved, and under drift only the T
where the matching changes are (bisection over the steps of the matching as T grows).

Ties (one rule for this module and the device engine's): with some Y_n = 0 many matchings have
the same cost (every matching that meets T when all Y_n are 0), and scipy's pick among them is
arbitrary. Each matching minimises cost + δ ε instead, ε_n = C/(p h_n + I_i) (Eq. 25) at the
pair's power for T and C/mean(I) without a channel, δ = TIE_RTOL · c / (C / min I) with c the
largest pair cost of the solve (drift: at p_ub; paper: Y_n p_ub) and C / min I the largest ε:
among the matchings within N · TIE_RTOL · c of the least cost, the least Σ ε_n (the least Σ Γ_n
for the fixed S); δ = min I / C when every cost is 0. The objective compared across T stays the
cost's alone.

Power control with the ``paper`` objective: for a fixed matching, in the upload delays u_n the
problem  min V·T + Σ_n Y_n p_n(u_n)  s.t.  τ_pipe_n + u_n ≤ T,  u_n ≥ τ^up_n(p_ub)  with
p_n(u) = (2^{θ/(B u)} − 1)(I + B N0)/h  is convex (exp of a positive multiple of 1/u). It is
built once with cvxpy Parameters (DPP) and re-solved each round; this convex reformulation
replaces the Dinkelbach ratio iterations (the only fractional term, θ/r(p), becomes the
variable u) and needs no SCA step. If the conic solve fails, a golden-section search over T
(the objective is convex in T) is used and the result says so (`fallback`).
"""

from __future__ import annotations

import dataclasses
import math

import cvxpy as cp
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.scheduling.lyapunov import check_lyapunov

_LAGUERRE_X, _LAGUERRE_W = np.polynomial.laguerre.laggauss(32)
LN2 = math.log(2.0)


def spectral_efficiency(snr, fading: str = "mean"):
    """log2(1 + SNR), or its mean over Rayleigh fading (Gauss–Laguerre, as the system model)."""
    snr = np.asarray(snr, float)
    if fading == "mean":
        return np.log2(1.0 + snr)
    return np.sum(_LAGUERRE_W * np.log2(1.0 + snr[..., None] * _LAGUERRE_X), axis=-1)


@dataclasses.dataclass(frozen=True)
class Uplink:
    """Uplink side of one round (float64 host copy): per cluster h, P_max, E_max; per channel I, B."""

    h_n: np.ndarray  # [N]
    I_i_w: np.ndarray  # [J]
    B_U_hz: np.ndarray  # [J]
    P_max_n_w: np.ndarray  # [N]
    E_max_n_j: np.ndarray  # [N]
    N0_w_per_hz: float
    bits: float  # θ^enc + z^enc: what τ^up carries (Eq. 11)
    theta_bits: float  # θ^enc: what E^com charges the CU for (Eq. 12)
    C_noise: float
    beta: float
    eta: float
    phi_seg: float
    fading: str = "mean"

    @property
    def N(self) -> int:
        return int(self.h_n.shape[0])

    @property
    def J(self) -> int:
        return int(self.I_i_w.shape[0])

    def noise(self) -> np.ndarray:
        """I_i + B_i N0 per channel [J]."""
        return self.I_i_w + self.B_U_hz * self.N0_w_per_hz


def upload_delay(up: Uplink, p, n, j):
    """Eq. 10: τ^up = (θ^enc + z^enc)/r(p) on channel j (inf for p ≤ 0)."""
    p = np.asarray(p, float)
    snr = p * up.h_n[n] / up.noise()[j]
    rate = up.B_U_hz[j] * spectral_efficiency(snr, up.fading)
    with np.errstate(divide="ignore"):
        return np.where(p > 0, up.bits / np.where(rate > 0, rate, 1.0), np.inf)


def upload_energy(up: Uplink, p, n, j):
    """Eq. 12: E^com = p θ^enc / r(p) (the CU's transmission of the encoder parameters)."""
    p = np.asarray(p, float)
    safe = np.where(p > 0, p, 1.0)
    rate = up.B_U_hz[j] * spectral_efficiency(safe * up.h_n[n] / up.noise()[j], up.fading)
    return np.where(p > 0, safe * (up.theta_bits / rate), min_upload_energy(up, n, j))


def min_upload_energy(up: Uplink, n, j):
    """lim_{p→0} p θ/r(p) = θ ln2 (I + B N0)/(B h): the least energy any power can upload with."""
    return up.theta_bits * LN2 * up.noise()[j] / (up.B_U_hz[j] * up.h_n[n])


# p_ub keeps E^com ≤ (1 − margin) E^max so that the float32 system model agrees that C11' holds
ENERGY_MARGIN = 1e-5


def power_upper_bounds(up: Uplink, iters: int = 60, margin: float = ENERGY_MARGIN) -> np.ndarray:
    """p_ub[n, j] = largest p ≤ P_n^max with E^com ≤ (1 − margin) E_n^max (C8, C11'); NaN if no
    p > 0 meets it."""
    n = np.arange(up.N)[:, None] * np.ones((1, up.J), int)
    j = np.ones((up.N, 1), int) * np.arange(up.J)[None, :]
    p_max = up.P_max_n_w[:, None] * np.ones((1, up.J))
    e_max = (1.0 - margin) * up.E_max_n_j[:, None] * np.ones((1, up.J))
    feasible = min_upload_energy(up, n, j) < e_max
    at_max = upload_energy(up, p_max, n, j) <= e_max
    # bisection: E^com is increasing in p, lo stays feasible. E^com(p) = p θ / (B se(p g))
    # inlined (same expression as upload_energy) because this loop dominates a round's Sub-2
    h, noise, B = up.h_n[:, None], up.noise()[None, :], up.B_U_hz[None, :]
    lo, hi = np.zeros_like(p_max), p_max.copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        with np.errstate(divide="ignore"):  # mid → 0 on infeasible pairs: infinite energy, not ok
            ok = mid * (up.theta_bits / (B * spectral_efficiency(mid * h / noise, up.fading))) <= e_max
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    p_ub = np.where(at_max, p_max, lo)
    return np.where(feasible & (p_ub > 0), p_ub, np.nan)


def power_for_delay(up: Uplink, budget, n, j, p_cap=None, iters: int = 80):
    """Least p with τ^up(p) ≤ budget (Eq. 10 inverted): closed form for the mean gain,
    bisection under Rayleigh fading; inf where budget ≤ 0 or p would exceed p_cap."""
    budget = np.asarray(budget, float)
    n, j = np.broadcast_arrays(np.asarray(n), np.asarray(j))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        if up.fading == "mean":
            p = (np.exp2(up.bits / (up.B_U_hz[j] * budget)) - 1.0) * up.noise()[j] / up.h_n[n]
        else:
            cap = np.full(np.shape(budget), 1e3) if p_cap is None else np.asarray(p_cap, float) * np.ones(np.shape(budget))
            lo, hi = np.zeros(np.shape(budget)), cap
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                ok = upload_delay(up, mid, n, j) <= budget
                lo, hi = np.where(ok, lo, mid), np.where(ok, mid, hi)
            p = np.where(upload_delay(up, hi, n, j) <= budget, hi, np.inf)
        p = np.where(budget > 0, p, np.inf)
    if p_cap is not None:
        p = np.where(p <= np.asarray(p_cap) * (1 + 1e-12), np.minimum(p, p_cap), np.inf)
    return p


def noise_variance(up: Uplink, p, n, channel):
    """Eq. 25: ε_n = C/(p h_n + I); no channel: p = 0 and the mean interference (system model)."""
    channel = np.asarray(channel)
    I = np.where(channel >= 0, up.I_i_w[np.clip(channel, 0, None)], np.mean(up.I_i_w))
    p_eff = np.where(channel >= 0, p, 0.0)
    return up.C_noise / (p_eff * up.h_n[n] + I)


def convergence_gap(up: Uplink, S, p, channel):
    """Eq. 28: Γ_n = (β η² ϕ/2) S_n + (β/2) ε_n."""
    n = np.arange(up.N)
    return 0.5 * up.beta * up.eta**2 * up.phi_seg * np.asarray(S, float) + 0.5 * up.beta * noise_variance(up, p, n, channel)


# --------------------------------------------------------------------------- matching


# ties: a relative tolerance far above float64 rounding (~1e-16 per cost) and far below the
# tolerances the objective is compared at (1e-7 and looser)
TIE_RTOL = 1e-9


def tie_break_weight(cost_scale: float, noise_max: float, rtol: float = TIE_RTOL) -> float:
    """δ of the tie-break term δ Σ_n ε_n: rtol · cost_scale / noise_max, where cost_scale bounds
    every finite pair cost of the solve and noise_max every ε_n, so that δ Σ ε_n ≤
    N · rtol · cost_scale never outweighs a real difference of the costs; 1 / noise_max when
    every cost is 0 (Y = 0: every matching that fits is a tie)."""
    return rtol * cost_scale / noise_max if cost_scale > 0 else 1.0 / noise_max


def match_channels(cost: np.ndarray, cost_none: np.ndarray, tie: np.ndarray | None = None,
                   tie_none: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """Hungarian matching with N − J virtual channels when N > J.

    cost[n, j]: cluster n on real channel j (inf = forbidden); cost_none[n]: cluster n on a
    virtual channel (no upload). Exactly min(N, J) clusters get a real channel. Returns
    (channel[N] with −1 for virtual, total cost), or None when no finite matching exists.

    `tie` [N, J] and `tie_none` [N] (finite), when given, are added to the costs to decide their
    ties and are small against their real differences (Sub-2's rule: δ ε_n, see
    `solve_resources`); the total returned is the costs' alone. Without them, ties fall to
    scipy's order.
    """
    N, J = cost.shape
    n_virtual = max(0, N - J)
    matrix = np.concatenate([cost, np.repeat(np.asarray(cost_none, float)[:, None], n_virtual, axis=1)], axis=1)
    finite = np.isfinite(matrix)
    if not finite.any():
        return None
    solved = matrix
    if tie is not None:  # inf + a finite tie term stays inf: forbidden pairs stay forbidden
        solved = matrix + (np.concatenate([tie, np.repeat(np.asarray(tie_none, float)[:, None], n_virtual, axis=1)], axis=1)
                           if n_virtual else tie)
    # scipy rejects all-inf rows/infeasible matrices; use a large finite stand-in and check after
    big = (np.abs(solved[finite]).max() + 1.0) * (N + 1) * 10.0
    rows, cols = linear_sum_assignment(np.where(finite, solved, big))
    if not np.all(finite[rows, cols]):
        return None
    channel = np.where(cols < J, cols, -1)
    out = np.full(N, -1)
    out[rows] = channel
    return out, float(matrix[rows, cols].sum())


# --------------------------------------------------------------------------- Sub-2


@dataclasses.dataclass(frozen=True)
class ResourceDecision:
    channel: np.ndarray  # [N] int, −1 = none
    p_n_w: np.ndarray  # [N]
    tau_up_s: np.ndarray  # [N]
    objective: float  # V τ + Σ Y w of this Sub-2 solution
    fallback: bool = False  # a convex solve failed and the bracketing search was used


def infeasible_c11(up: Uplink, p_ub: np.ndarray) -> InfeasibleError:
    bad = [int(n) for n in range(up.N) if np.all(np.isnan(p_ub[n]))]
    need = min(up.N, up.J)
    e_min = [float(np.min(min_upload_energy(up, n, np.arange(up.J)))) for n in range(up.N)]
    clusters = bad or list(range(up.N))
    return InfeasibleError({
        "constraint": "C11'",
        "cluster": clusters[0],
        "clusters": clusters,
        "message": (f"no power meets the upload energy budget E_max_n (C11') for {need} of N={up.N} clusters: "
                    f"cluster(s) {clusters} need at least "
                    + ", ".join(f"{e_min[n]:.4g} J" for n in clusters)
                    + f" (E_max_n = {', '.join(f'{up.E_max_n_j[n]:.4g}' for n in clusters)} J) to upload "
                      f"{up.theta_bits:.4g} bits of parameters"),
    })


def can_all_finish(lat: np.ndarray, tau_pipe: np.ndarray, T: float) -> bool:
    """Whether some matching meets the bound T: every cluster done by T and min(N, J) of them
    on a channel with τ_pipe + τ^up(p_ub) ≤ T (C6), i.e. the bipartite graph of the pairs with
    lat ≤ T has a matching of size min(N, J) (Hopcroft–Karp, scipy.sparse.csgraph)."""
    N, J = lat.shape
    if N > J and float(np.max(tau_pipe)) > T:
        return False
    allowed = lat <= T
    if int(np.sum(np.any(allowed, axis=0))) < min(N, J) or int(np.sum(np.any(allowed, axis=1))) < min(N, J):
        return False  # a cheap necessary count first
    rows_matched = maximum_bipartite_matching(csr_matrix(allowed.astype(np.int8)), perm_type="column")
    return int(np.sum(rows_matched >= 0)) >= min(N, J)


def least_feasible_bound(candidates: np.ndarray, lat: np.ndarray, tau_pipe: np.ndarray) -> int | None:
    """Index of the least candidate T (sorted ascending) at which a matching meets T
    (`can_all_finish` is monotone in T: binary search), None when none does."""
    lo, hi = 0, len(candidates)  # invariant: candidates[hi] feasible (hi = len: unknown), below lo not
    if hi == 0 or not can_all_finish(lat, tau_pipe, float(candidates[-1])):
        return None
    hi -= 1
    while lo < hi:
        mid = (lo + hi) // 2
        if can_all_finish(lat, tau_pipe, float(candidates[mid])):
            hi = mid
        else:
            lo = mid + 1
    return lo


def solve_resources(up: Uplink, tau_pipe: np.ndarray, S: np.ndarray, Y: np.ndarray, V: float,
                    lyapunov: str = "drift", p_ub: np.ndarray | None = None,
                    weights: np.ndarray | None = None, use_cvxpy: bool = True,
                    paper_grid: int = 64) -> ResourceDecision:
    """Alg. 3: channel matching + power for fixed Sub-1 decisions (τ_pipe, S).

    Minimises V max_n (τ_pipe_n + τ^up_n) + Σ_n Y_n w_n over the candidate bottlenecks T (the
    pairs' latencies at p_ub and the τ_pipe_n), each with the best matching under T
    (module docstring). How the candidates are visited (docs/design.md §4):

    * below the least T at which the uploading CUs have a matching (binary search over the sorted
      candidates with a Hopcroft–Karp feasibility test) no T is solved;
    * ``drift``: the pair costs do not depend on T, so the best matching under T (with the
      tie-break, unique) changes only where a newly allowed pair enters it, and once it equals
      the one under a later T' it is the one under every T between. From the least feasible T
      each next change is found by bisection over the candidates (one min-cost matching per
      probe), and the walk stops at the first T with V T + (the least cost of any matching) ≥
      the best objective (no later matching can beat it);
    * ``paper``: the powers and with them the costs follow T, so every candidate from the least
      feasible one is solved, with the same stop rule.

    Same decision as the walk over every candidate with one matching each (tested against it).
    `weights` (default Y) multiply the per-cluster term; `p_ub` may be passed when precomputed.
    Raises InfeasibleError naming C11' when fewer than min(N, J) clusters can upload.
    """
    check_lyapunov(lyapunov)
    tau_pipe = np.asarray(tau_pipe, float)
    Y = np.asarray(Y, float) if weights is None else np.asarray(weights, float)
    p_ub = power_upper_bounds(up) if p_ub is None else p_ub
    n_idx = np.arange(up.N)[:, None]
    j_idx = np.arange(up.J)[None, :]
    ok = ~np.isnan(p_ub)
    p_safe = np.where(ok, p_ub, 1.0)
    delay_ub = upload_delay(up, p_safe, n_idx, j_idx)
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
    delta = tie_break_weight(float(np.max(np.abs(costs[np.isfinite(costs)]), initial=0.0)), noise_max)
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
    first = least_feasible_bound(candidates, lat, tau_pipe)
    if first is None:
        raise infeasible_c11(up, p_ub)

    def at_bound(T):
        """The best matching with every latency ≤ T: (objective, channel, p, τ^up), or None."""
        allowed = lat <= T
        if lyapunov == "drift":
            cost = np.where(allowed, cost_pair, np.inf)
            p_pair, delay_pair, ties = p_ub, delay_ub, tie_pair
        else:
            p_pair = power_for_delay(up, T - tau_pipe[:, None], n_idx, j_idx, p_cap=np.where(ok, p_ub, 0.0))
            p_pair = np.where(allowed & np.isfinite(p_pair), p_pair, np.nan)
            p_zero = np.nan_to_num(p_pair)
            cost = np.where(np.isnan(p_pair), np.inf, Y[:, None] * p_zero)
            delay_pair = upload_delay(up, np.nan_to_num(p_pair, nan=1.0), n_idx, j_idx)
            ties = delta_C / (p_zero * up.h_n[:, None] + up.I_i_w[None, :])
        none_cost = np.where(tau_pipe <= T, cost_none, np.inf)
        matched = match_channels(cost, none_cost, ties, tie_none)
        if matched is None:
            return None
        channel, total = matched
        rows, cols = np.arange(up.N), np.clip(channel, 0, None)
        uploads = channel >= 0
        p = np.where(uploads, p_pair[rows, cols], 0.0)
        tau_up = np.where(uploads, delay_pair[rows, cols], 0.0)
        return V * float(np.max(tau_pipe + tau_up)) + total, channel, p, tau_up

    if lyapunov == "drift":
        # a tighter floor than the per-cluster one: the least cost of any matching (ties off)
        unbounded = match_channels(cost_pair, cost_none)
        floor = max(floor, unbounded[1] if unbounded is not None else floor)
        best = _walk_runs(candidates, first, at_bound, V, floor)
    else:
        best = None
        for T in candidates[first:]:
            if best is not None and V * T + floor >= best[0]:
                break  # later bounds only add latency
            found = at_bound(T)
            if found is not None and (best is None or found[0] < best[0]):
                best = found
    if best is None:  # pragma: no cover - the least feasible bound has a matching
        raise infeasible_c11(up, p_ub)
    obj, channel, p, tau_up = best
    fallback = False
    if lyapunov == "paper":
        refined = power_control_paper(up, tau_pipe, channel, Y, V, p_ub, use_cvxpy=use_cvxpy)
        if refined.objective < obj:
            return refined
        fallback = refined.fallback
    return ResourceDecision(channel, p, tau_up, obj, fallback)


def _walk_runs(candidates: np.ndarray, first: int, at_bound, V: float, floor: float):
    """The walk over the sorted bounds from `first` with the T-independent costs of ``drift``:
    the matching under T is a step function of T (monotone: once it changes it never comes
    back), so only the first bound of each step is scored, each found by bisection between the
    last step's start and the stop bound (the first with V T + floor ≥ the best so far).
    Returns the first best (objective, channel, p, τ^up) in ascending T, as the full walk."""
    stop_values = V * candidates + floor  # what the walk's stop test compares, per bound
    solved: dict[int, tuple] = {}

    def solve(k):
        if k not in solved:
            solved[k] = at_bound(float(candidates[k]))
        return solved[k]

    i = first
    best = solve(i)
    while True:
        stop = max(i + 1, int(np.searchsorted(stop_values, best[0], side="left")))
        if stop >= len(candidates) + 1:
            stop = len(candidates)
        run = solve(i)[1]
        lo, hi = i, stop  # solve(lo) has the run's matching; from hi on nothing is scored
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if np.array_equal(solve(mid)[1], run):
                lo = mid
            else:
                hi = mid
        if hi >= stop:
            return best
        i = hi
        found = solve(i)
        if found[0] < best[0]:
            best = found


# --------------------------------------------------------------------------- power control


_POWER_CACHE: dict[int, tuple] = {}


def _power_problem(N: int):
    """min V T + Σ_n w_n exp(1/v_n) s.t. τ_pipe_n + a_n v_n ≤ T, v_lo_n ≤ v_n ≤ v_hi_n: the
    ``paper``-objective power control with the upload delay written u_n = a_n v_n
    (a_n = ln2 θ/B, so p_n = (e^{1/v_n} − 1)(I + B N0)/h), built once per N (DPP)."""
    if N in _POWER_CACHE:
        return _POWER_CACHE[N]
    T = cp.Variable()
    v = cp.Variable(N)
    V = cp.Parameter(nonneg=True)
    w = cp.Parameter(N, nonneg=True)  # Y_n (I + B N0)/h for uploading clusters, 0 otherwise
    a = cp.Parameter(N, nonneg=True)  # ln2 θ / B for uploading clusters, 0 otherwise
    tau_pipe = cp.Parameter(N, nonneg=True)
    v_lo = cp.Parameter(N, pos=True)
    v_hi = cp.Parameter(N, pos=True)
    objective = V * T + w @ cp.exp(cp.inv_pos(v))
    constraints = [tau_pipe + cp.multiply(a, v) <= T, v >= v_lo, v <= v_hi]
    problem = cp.Problem(cp.Minimize(objective), constraints)
    assert problem.is_dpp()
    _POWER_CACHE[N] = (problem, dict(V=V, w=w, a=a, tau_pipe=tau_pipe, v_lo=v_lo, v_hi=v_hi), T, v)
    return _POWER_CACHE[N]


def paper_power_objective(up: Uplink, tau_pipe, channel, Y, V, T):
    """V T + Σ_assigned Y_n p_req,n(T) with p_req the least power meeting τ_pipe + τ^up ≤ T."""
    total = V * T
    for n in range(up.N):
        if channel[n] >= 0:
            total += Y[n] * float(power_for_delay(up, T - tau_pipe[n], n, channel[n]))
        elif tau_pipe[n] > T:
            return math.inf
    return total


def power_control_paper(up: Uplink, tau_pipe, channel, Y, V, p_ub, use_cvxpy: bool = True) -> ResourceDecision:
    """Powers for a fixed matching under the ``paper`` objective (V τ + Σ Y (S + p))."""
    tau_pipe = np.asarray(tau_pipe, float)
    assigned = np.asarray(channel) >= 0
    u_lo = np.array([float(upload_delay(up, p_ub[n, channel[n]], n, channel[n])) if assigned[n] else 1.0
                     for n in range(up.N)])
    T_lo = float(np.max(tau_pipe + np.where(assigned, u_lo, 0.0)))
    f_lo = paper_power_objective(up, tau_pipe, channel, Y, V, T_lo)
    # beyond T_lo + f_lo/V the latency term alone exceeds f(T_lo); cap the bracket if V ≈ 0
    T_hi = T_lo + (f_lo / V if V > 0 else 0.0) + 1e-9 if V > 0 else T_lo * 1e3 + 1.0
    fallback = False
    T_opt = None
    if use_cvxpy and up.fading == "mean":
        try:
            T_opt = _power_cvxpy(up, tau_pipe, channel, Y, V, u_lo, T_hi)
        except Exception:  # noqa: BLE001 - any solver failure falls back to the bracketing search
            T_opt = None
        fallback = T_opt is None
    if T_opt is None:
        T_opt = _golden_section(lambda T: paper_power_objective(up, tau_pipe, channel, Y, V, T), T_lo, T_hi)
    T_opt = max(T_opt, T_lo)
    p = np.zeros(up.N)
    for n in range(up.N):
        if assigned[n]:
            p[n] = min(float(power_for_delay(up, T_opt - tau_pipe[n], n, channel[n])), p_ub[n, channel[n]])
    tau_up = np.array([float(upload_delay(up, p[n], n, channel[n])) if assigned[n] else 0.0 for n in range(up.N)])
    obj = V * float(np.max(tau_pipe + tau_up)) + float(np.dot(Y, p))
    return ResourceDecision(np.asarray(channel), p, tau_up, obj, fallback)


def _power_cvxpy(up: Uplink, tau_pipe, channel, Y, V, u_lo, T_hi) -> float | None:
    problem, par, T, v = _power_problem(up.N)
    channel = np.asarray(channel)
    assigned = channel >= 0
    j = np.clip(channel, 0, None)
    scale = max(float(np.max(tau_pipe + np.where(assigned, u_lo, 0.0))), 1e-12)  # seconds → O(1)
    a = np.where(assigned, LN2 * up.bits / up.B_U_hz[j], 0.0) / scale
    a_safe = np.where(assigned, a, 1.0)
    par["V"].value = float(V) * scale
    par["w"].value = np.where(assigned, Y * up.noise()[j] / up.h_n, 0.0)
    par["a"].value = a
    par["tau_pipe"].value = tau_pipe / scale
    par["v_lo"].value = np.where(assigned, u_lo / scale / a_safe, 1.0)
    par["v_hi"].value = np.where(assigned, max(T_hi, 1e-12) / scale / a_safe, 1.0) + np.where(assigned, 0.0, 1.0)
    problem.solve(solver=cp.CLARABEL)
    if problem.status not in ("optimal", "optimal_inaccurate") or T.value is None:
        return None
    return float(T.value) * scale


def _golden_section(f, lo: float, hi: float, iters: int = 200) -> float:
    """Minimiser of a convex (unimodal) f on [lo, hi]."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if b - a <= 1e-12 * max(1.0, abs(b)):
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    candidates = [(f(lo), lo), (fc, c), (fd, d), (f(hi), hi)]
    return min(candidates)[1]
