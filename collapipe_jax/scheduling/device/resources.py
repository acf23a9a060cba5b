"""Sub-problem 2 (Alg. 3, Eq. 40–43) on the device: channel matching, power bounds and power
control as pure JAX functions with static shapes (mirror of `scheduling/resources.py`, the
reference; see its docstring for the facts used).

Everything is jittable and vmappable: `lyapunov`, `method`, grid sizes and iteration counts are
static Python arguments, everything else arrays, computed in the dtype of the inputs (float64
under `jax.enable_x64` equals the host; float32 runs too).

How the host's loops become static shapes:

* p_ub (C8 ∧ C11'): the same 60-step bisection, as a `lax.fori_loop`.
* Channel matching with N − J virtual channels (exactly min(N, J) clusters upload, C6):
  ``"dp"`` — a dynamic programme over channel subsets (clusters in order, state = the set of
  used channels, 2^J states; exact, for J ≤ `DP_MAX_CHANNELS`), or ``"hungarian"`` —
  `optax.assignment.hungarian_algorithm` on the N × max(N, J) matrix with forbidden pairs as a
  large finite stand-in, checked after (as the host does with scipy). Both break ties by the
  host's rule (cost + δ ε: the least Σ ε_n among the matchings of least cost, `match_channels`),
  so that the engines agree where Y_n = 0 leaves many matchings optimal.
* The bottleneck enumeration (host `solve_resources`): the least feasible bound by the same
  binary search, its test Kuhn's augmenting paths in fixed-shape loops (`max_matching`, each
  probe growing the matching of the last infeasible one); under ``drift`` the host's bisection
  over the steps of the matching in one `lax.while_loop` (`_walk_runs`); under ``paper`` the
  candidates from the least feasible one cut into chunks of `chunk`, every candidate of a chunk
  solved at once (vmap, masked), a `lax.while_loop` over chunks stopping with the host's test
  (`_walk_chunks`). Same optimum as the host.
* The ``paper`` power refinement: the host solves the convex reformulation with cvxpy (golden
  section as fallback); here a golden-section search over T of `paper_power_objective` (convex
  in T), run to the host's tolerance (1e-12 relative) in a `lax.while_loop`. As on the host the
  refined solution replaces the grid's only if its objective is lower.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax
from optax.assignment import hungarian_algorithm

from collapipe_jax.scheduling import resources as rs

LN2 = math.log(2.0)
ENERGY_MARGIN = rs.ENERGY_MARGIN
_LAGUERRE_X, _LAGUERRE_W = np.polynomial.laguerre.laggauss(32)
DP_MAX_CHANNELS = 12  # the subset DP keeps 2^J states per cluster
MATCHING_METHODS = ("dp", "hungarian")
DEFAULT_CHUNK = 16


# --------------------------------------------------------------------------- the uplink


@struct.dataclass
class Uplink:
    """Uplink side of one round (device copy of `rs.Uplink`): per cluster h, P_max, E_max [N];
    per channel I, B [J]; scalars. `fading` is static ("mean" | "rayleigh")."""

    h_n: jax.Array  # [N]
    P_max_n_w: jax.Array  # [N]
    E_max_n_j: jax.Array  # [N]
    I_i_w: jax.Array  # [J]
    B_U_hz: jax.Array  # [J]
    N0_w_per_hz: jax.Array
    bits: jax.Array  # θ^enc + z^enc: what τ^up carries (Eq. 11)
    theta_bits: jax.Array  # θ^enc: what E^com charges the CU for (Eq. 12)
    C_noise: jax.Array
    beta: jax.Array
    eta: jax.Array
    phi_seg: jax.Array
    fading: str = struct.field(pytree_node=False, default="mean")

    @property
    def N(self) -> int:
        return int(self.h_n.shape[-1])

    @property
    def J(self) -> int:
        return int(self.I_i_w.shape[-1])

    def noise(self) -> jax.Array:
        """I_i + B_i N0 per channel [J]."""
        return self.I_i_w + self.B_U_hz * self.N0_w_per_hz


def uplink_from_host(up: rs.Uplink, dtype=None) -> Uplink:
    """The device copy of a host `rs.Uplink` (dtype: JAX's default float unless given)."""
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    a = lambda x: jnp.asarray(np.asarray(x, np.float64), dtype=dtype)  # noqa: E731
    return Uplink(h_n=a(up.h_n), P_max_n_w=a(up.P_max_n_w), E_max_n_j=a(up.E_max_n_j), I_i_w=a(up.I_i_w),
                  B_U_hz=a(up.B_U_hz), N0_w_per_hz=a(up.N0_w_per_hz), bits=a(up.bits),
                  theta_bits=a(up.theta_bits), C_noise=a(up.C_noise), beta=a(up.beta), eta=a(up.eta),
                  phi_seg=a(up.phi_seg), fading=up.fading)


def spectral_efficiency(snr, fading: str = "mean"):
    """log2(1 + SNR), or its mean over Rayleigh fading (32-point Gauss–Laguerre, as the host)."""
    if fading == "mean":
        return jnp.log2(1.0 + snr)
    x = jnp.asarray(_LAGUERRE_X, snr.dtype)
    w = jnp.asarray(_LAGUERRE_W, snr.dtype)
    return jnp.sum(w * jnp.log2(1.0 + snr[..., None] * x), axis=-1)


def _rate(up: Uplink, p, n, j):
    """r(p) = B log2(1 + p h/(I + B N0)) on channel j (Eq. 10)."""
    return up.B_U_hz[j] * spectral_efficiency(p * up.h_n[n] / up.noise()[j], up.fading)


def upload_delay(up: Uplink, p, n, j):
    """Eq. 10: τ^up = (θ^enc + z^enc)/r(p) on channel j (inf for p ≤ 0)."""
    p = jnp.asarray(p, up.h_n.dtype)
    rate = _rate(up, p, n, j)
    return jnp.where(p > 0, up.bits / jnp.where(rate > 0, rate, 1.0), jnp.inf)


def min_upload_energy(up: Uplink, n, j):
    """lim_{p→0} p θ/r(p) = θ ln2 (I + B N0)/(B h): the least energy any power can upload with."""
    return up.theta_bits * LN2 * up.noise()[j] / (up.B_U_hz[j] * up.h_n[n])


def upload_energy(up: Uplink, p, n, j):
    """Eq. 12: E^com = p θ^enc / r(p) (the CU's transmission of the encoder parameters)."""
    p = jnp.asarray(p, up.h_n.dtype)
    safe = jnp.where(p > 0, p, 1.0)
    return jnp.where(p > 0, safe * (up.theta_bits / _rate(up, safe, n, j)), min_upload_energy(up, n, j))


def _pair_index(up: Uplink):
    return jnp.arange(up.N)[:, None], jnp.arange(up.J)[None, :]


def power_upper_bounds(up: Uplink, iters: int = 60, margin: float = ENERGY_MARGIN) -> jax.Array:
    """p_ub[n, j] = largest p ≤ P_n^max with E^com ≤ (1 − margin) E_n^max (C8, C11'), by the
    host's bisection; NaN where no p > 0 meets it. [N, J]"""
    n, j = _pair_index(up)
    p_max = jnp.broadcast_to(up.P_max_n_w[:, None], (up.N, up.J))
    e_max = jnp.broadcast_to((1.0 - margin) * up.E_max_n_j[:, None], (up.N, up.J))
    feasible = min_upload_energy(up, n, j) < e_max
    at_max = upload_energy(up, p_max, n, j) <= e_max
    h, noise, B = up.h_n[:, None], up.noise()[None, :], up.B_U_hz[None, :]

    def step(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = mid * (up.theta_bits / (B * spectral_efficiency(mid * h / noise, up.fading))) <= e_max
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, iters, step, (jnp.zeros_like(p_max), p_max))
    p_ub = jnp.where(at_max, p_max, lo)
    return jnp.where(feasible & (p_ub > 0), p_ub, jnp.nan)


def power_for_delay(up: Uplink, budget, n, j, p_cap=None, iters: int = 80):
    """Least p with τ^up(p) ≤ budget (Eq. 10 inverted): closed form for the mean gain, bisection
    under Rayleigh fading; inf where budget ≤ 0 or p would exceed p_cap."""
    budget = jnp.asarray(budget, up.h_n.dtype)
    n, j = jnp.asarray(n), jnp.asarray(j)
    shape = jnp.broadcast_shapes(budget.shape, n.shape, j.shape)
    budget, n, j = jnp.broadcast_to(budget, shape), jnp.broadcast_to(n, shape), jnp.broadcast_to(j, shape)
    if up.fading == "mean":
        p = (jnp.exp2(up.bits / (up.B_U_hz[j] * budget)) - 1.0) * up.noise()[j] / up.h_n[n]
    else:
        cap = jnp.full(shape, 1e3, budget.dtype) if p_cap is None else jnp.broadcast_to(
            jnp.asarray(p_cap, budget.dtype), shape)

        def step(_, bounds):
            lo, hi, moved = bounds
            mid = 0.5 * (lo + hi)
            ok = upload_delay(up, mid, n, j) <= budget
            return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi), moved | ok

        init = (jnp.zeros(shape, budget.dtype), cap, jnp.zeros(shape, bool))
        _, hi, moved = jax.lax.fori_loop(0, iters, step, init)
        # hi meets the budget once a tested mid did (re-testing it outside the loop may round
        # differently in another fusion)
        # otherwise only if the cap itself does; at T = τ_pipe + τ^up(p_ub) (a candidate bound)
        # that test is a tie decided by rounding: a relative 1e-12 settles it the host's way
        p = jnp.where(moved | (upload_delay(up, cap, n, j) <= budget * (1 + 1e-12)), hi, jnp.inf)
    p = jnp.where(budget > 0, p, jnp.inf)
    p = jnp.where(jnp.isnan(p), jnp.inf, p)  # 0/0 at budget = 0 → no power meets it (host: inf)
    if p_cap is not None:
        p_cap = jnp.asarray(p_cap, budget.dtype)
        p = jnp.where(p <= p_cap * (1 + 1e-12), jnp.minimum(p, p_cap), jnp.inf)
    return p


def noise_variance(up: Uplink, p, n, channel):
    """Eq. 25: ε_n = C/(p h_n + I); no channel: p = 0 and the mean interference (system model)."""
    I = jnp.where(channel >= 0, up.I_i_w[jnp.clip(channel, 0, None)], jnp.mean(up.I_i_w))
    p_eff = jnp.where(channel >= 0, p, 0.0)
    return up.C_noise / (p_eff * up.h_n[n] + I)


def convergence_gap(up: Uplink, S, p, channel):
    """Eq. 28: Γ_n = (β η² ϕ/2) S_n + (β/2) ε_n. [N]"""
    n = jnp.arange(up.N)
    S = jnp.asarray(S, up.h_n.dtype)
    return 0.5 * up.beta * up.eta**2 * up.phi_seg * S + 0.5 * up.beta * noise_variance(up, p, n, channel)


# --------------------------------------------------------------------------- matching


def check_method(method: str, J: int) -> None:
    if method not in MATCHING_METHODS:
        raise ValueError(f"method must be one of {list(MATCHING_METHODS)}, got {method!r}")
    if method == "dp" and J > DP_MAX_CHANNELS:
        raise ValueError(f"method 'dp' keeps 2^J states: J={J} > {DP_MAX_CHANNELS}, use 'hungarian'")


DP_FASTER_UP_TO = 6


def default_method(J: int) -> str:
    """The subset DP for few channels, else the Hungarian method. Measured on a 2-core CPU
    (benchmarks/bench_matching.py, batch 4,096): the DP is 2–8× faster at J = 4 (N = 3, 6), the
    Hungarian method 2.4× faster at (N, J) = (16, 8); the cut at J ≤ 6 lies between."""
    return "dp" if J <= DP_FASTER_UP_TO else "hungarian"


def _matching_total(cost, cost_none, channel):
    N = cost.shape[0]
    on = cost[jnp.arange(N), jnp.clip(channel, 0, None)]
    return jnp.sum(jnp.where(channel >= 0, on, cost_none))


def _match_dp(cost, cost_none):
    """Exact min-cost matching by a DP over the set of used channels (channel j ↔ axis j of a
    (2,)*J array): clusters in order, each takes a free channel or none (only when N > J);
    exactly min(N, J) channels end up used."""
    N, J = cost.shape
    shape = (2,) * J
    has = [np.arange(2).reshape([2 if a == j else 1 for a in range(J)]) == 1 for j in range(J)]
    allow_none = N > J
    inf = jnp.asarray(jnp.inf, cost.dtype)
    dp0 = jnp.full(shape, inf).at[(0,) * J].set(0.0)

    def forward(dp, row):
        c, c_none = row
        options = [dp + c_none if allow_none else jnp.full(shape, inf)]
        for j in range(J):
            options.append(jnp.where(has[j], jnp.flip(dp, axis=j) + c[j], inf))
        # min and first argmin elementwise (a variadic argmin reduce is slow on XLA's CPU)
        best = functools.reduce(jnp.minimum, options)
        choice = jnp.full(shape, J, jnp.int32)
        for k in range(J, -1, -1):
            choice = jnp.where(options[k] == best, k - 1, choice)  # −1 = none
        return best, choice

    dp, choices = jax.lax.scan(forward, dp0, (cost, cost_none))
    flat = dp.reshape(-1)
    if allow_none:
        final = jnp.asarray(2**J - 1, jnp.int32)  # every channel used
    else:
        final = jnp.argmin(flat).astype(jnp.int32)  # every cluster on a channel: N bits set
    weights = jnp.asarray(2 ** np.arange(J - 1, -1, -1), jnp.int32)  # axis j ↔ bit J−1−j

    def backward(state, choice):
        c = choice.reshape(-1)[state]
        bit = jnp.where(c >= 0, weights[jnp.clip(c, 0, None)], 0)
        return state - bit, c

    _, channel = jax.lax.scan(backward, final, choices, reverse=True)
    return channel, jnp.isfinite(flat[final])


def _match_hungarian(cost, cost_none):
    N, J = cost.shape
    n_virtual = max(0, N - J)
    matrix = jnp.concatenate([cost, jnp.repeat(cost_none[:, None], n_virtual, axis=1)], axis=1)
    finite = jnp.isfinite(matrix)
    scale = jnp.max(jnp.where(finite, jnp.abs(matrix), 0.0))
    big = (scale + 1.0) * (N + 1) * 10.0
    rows, cols = hungarian_algorithm(jnp.where(finite, matrix, big))
    channel = jnp.full(N, -1, jnp.int32).at[rows].set(jnp.where(cols < J, cols, -1).astype(jnp.int32))
    return channel, jnp.all(finite[rows, cols])


def max_matching(allowed, match_col=None, match_row=None):
    """A maximum matching of the bipartite graph `allowed` [N, J] (bool), grown from a given
    matching of a subgraph (default: empty): Kuhn's augmenting paths in fixed shapes — for each
    unmatched row in turn a breadth-first search over the alternating paths (one level per
    `lax.while_loop` step, a [J, J] gather each), then the path found is flipped. O(N · depth ·
    J²) from scratch; the host uses scipy's Hopcroft–Karp. Returns (match_col [J], match_row [N]),
    −1 = unmatched."""
    N, J = allowed.shape
    match_col = jnp.full(J, -1, jnp.int32) if match_col is None else match_col
    match_row = jnp.full(N, -1, jnp.int32) if match_row is None else match_row

    def augment(r, state):
        match_col, match_row = state  # match_col[c]: the row on column c (−1 free); match_row[r]
        start = allowed[r] & (match_row[r] < 0)  # a matched row stays matched: nothing to search

        def bfs_cond(s):
            reached, _, frontier = s
            return jnp.any(frontier) & ~jnp.any(reached & (match_col < 0))

        def bfs_body(s):
            reached, parent, frontier = s
            rows = jnp.where(frontier, match_col, -1)  # the rows holding the frontier's columns
            step = allowed[jnp.clip(rows, 0, None)] & (rows >= 0)[:, None]  # [J (from), J (to)]
            new = jnp.any(step, axis=0) & ~reached
            parent = jnp.where(new, rows[jnp.argmax(step, axis=0)], parent)
            return reached | new, parent, new

        init = (start, jnp.where(start, r, -1).astype(jnp.int32), start)
        reached, parent, _ = lax.while_loop(bfs_cond, bfs_body, init)
        free = reached & (match_col < 0)
        c0 = jnp.where(jnp.any(free), jnp.argmax(free), -1).astype(jnp.int32)

        def flip_cond(s):
            return s[0] >= 0

        def flip_body(s):
            c, match_col, match_row = s
            row = parent[c]
            prev = match_row[row]
            return prev, match_col.at[c].set(row), match_row.at[row].set(c)

        _, match_col, match_row = lax.while_loop(flip_cond, flip_body, (c0, match_col, match_row))
        return match_col, match_row

    return lax.fori_loop(0, N, augment, (match_col, match_row))


def max_matching_size(allowed):
    """Size of a maximum matching of the bipartite graph `allowed` [N, J] (bool)."""
    return jnp.sum(max_matching(allowed)[0] >= 0)


def can_all_finish(lat, tau_pipe, T, warm=None):
    """Whether some matching meets the bound T (host `rs.can_all_finish`): every cluster done
    by T and min(N, J) of them on a channel with lat ≤ T (C6). `warm`: a matching of the pairs
    under a smaller bound to grow from. Returns (feasible, the maximum matching under T)."""
    N, J = lat.shape
    done = jnp.max(tau_pipe) <= T if N > J else jnp.bool_(True)
    warm = (None, None) if warm is None else warm
    matching = max_matching((lat <= T) & jnp.isfinite(lat), *warm)  # inf: forbidden
    return done & (jnp.sum(matching[0] >= 0) >= min(N, J)), matching


def least_feasible_bound(candidates, lat, tau_pipe):
    """Index of the least of the sorted `candidates` at which `can_all_finish` holds (binary
    search: it is monotone in T), and whether any does (host `rs.least_feasible_bound`). Each
    probe grows the matching of the largest bound found infeasible so far (its pairs fit under
    every later probe), so the augmenting paths over the whole search add up to few."""
    C = candidates.shape[0]
    N, J = lat.shape
    any_ok, _ = can_all_finish(lat, tau_pipe, candidates[C - 1])

    def step(_, state):
        lo, hi, warm = state  # candidates[hi] feasible (when any is), none below lo
        mid = (lo + hi) // 2
        ok, matching = can_all_finish(lat, tau_pipe, candidates[mid], warm)
        open_ = lo < hi
        warm = jax.tree.map(lambda a, b: jnp.where(open_ & ~ok, a, b), matching, warm)
        return jnp.where(open_ & ~ok, mid + 1, lo), jnp.where(open_ & ok, mid, hi), warm

    empty = (jnp.full(J, -1, jnp.int32), jnp.full(N, -1, jnp.int32))
    lo, _, _ = lax.fori_loop(0, max(1, math.ceil(math.log2(C + 1))), step, (jnp.int32(0), jnp.int32(C - 1), empty))
    return lo, any_ok


TIE_RTOL = rs.TIE_RTOL


def tie_break_weight(cost_scale, noise_max, rtol: float = TIE_RTOL):
    """δ of the tie-break term δ Σ_n ε_n (host `rs.tie_break_weight`): rtol · cost_scale /
    noise_max; 1 / noise_max when every cost is 0."""
    return jnp.where(cost_scale > 0, rtol * cost_scale / noise_max, 1.0 / noise_max)


def match_channels(cost, cost_none, method: str = "dp", tie=None, tie_none=None):
    """Min-cost matching of N clusters to J channels plus N − J virtual ones ("no upload") when
    N > J: exactly min(N, J) clusters get a real channel (C6). cost [N, J] (inf = forbidden),
    cost_none [N]. Returns (channel [N] int32, −1 = none; total; ok = a finite matching exists).

    `tie` [N, J] and `tie_none` [N] (finite), when given, are added to the costs to decide their
    ties, as on the host (`rs.match_channels`; Sub-2's rule: δ ε_n, see the host's
    `solve_resources`), by either method; the total returned is the costs' alone. In float32
    δ ε_n is below the costs' resolution unless every cost is 0."""
    N, J = cost.shape
    check_method(method, J)
    # no virtual channels when N ≤ J: every cluster must upload
    cost_none = jnp.asarray(cost_none, cost.dtype) if N > J else jnp.full(N, jnp.inf, cost.dtype)
    solved, solved_none = cost, cost_none
    if tie is not None:  # inf + a finite tie term stays inf: forbidden pairs stay forbidden
        solved, solved_none = cost + tie, cost_none + tie_none
    channel, ok = _match_dp(solved, solved_none) if method == "dp" else _match_hungarian(solved, solved_none)
    total = jnp.where(ok, _matching_total(cost, cost_none, channel), jnp.inf)
    return channel, total, ok


# --------------------------------------------------------------------------- Sub-2


@struct.dataclass
class Resources:
    """Sub-2's decision: channel [N] int32 (−1 none), p_n_w [N], tau_up_s [N], the objective
    V τ + Σ w (…) of this solution, and ok (False: no matching meets C11', where the host
    raises InfeasibleError naming C11')."""

    channel: jax.Array
    p_n_w: jax.Array
    tau_up_s: jax.Array
    objective: jax.Array
    ok: jax.Array


def _pick(pair, channel):
    N = pair.shape[0]
    return pair[jnp.arange(N), jnp.clip(channel, 0, None)]


def solve_resources(up: Uplink, tau_pipe, S, w, V, lyapunov: str = "drift", p_ub=None,
                    method: str | None = None, chunk: int = DEFAULT_CHUNK, paper_grid: int = 64) -> Resources:
    """Alg. 3: channel matching + power for fixed Sub-1 decisions (τ_pipe, S), minimising
    V max_n (τ_pipe_n + τ^up_n) + Σ_n w_n Γ_n (``drift``) or + Σ_n w_n p_n (``paper``, Eq. 32).

    Same optimum as the host's `resources.solve_resources` (see the module docstring)."""
    if lyapunov not in ("drift", "paper"):
        raise ValueError(f"lyapunov must be 'drift' or 'paper', got {lyapunov!r}")
    method = default_method(up.J) if method is None else method
    dtype = up.h_n.dtype
    tau_pipe = jnp.asarray(tau_pipe, dtype)
    w = jnp.asarray(w, dtype)
    V = jnp.asarray(V, dtype)
    p_ub = power_upper_bounds(up) if p_ub is None else p_ub
    N, J = up.N, up.J
    n_idx, j_idx = _pair_index(up)
    ok = ~jnp.isnan(p_ub)
    p_safe = jnp.where(ok, p_ub, 1.0)
    delay_ub = upload_delay(up, p_safe, n_idx, j_idx)
    lat = jnp.where(ok, tau_pipe[:, None] + delay_ub, jnp.inf)
    candidates = jnp.concatenate([lat.reshape(-1), tau_pipe])
    half_beta = 0.5 * up.beta
    if lyapunov == "drift":
        cost_pair = jnp.where(ok, w[:, None] * half_beta * up.C_noise / (p_safe * up.h_n[:, None] + up.I_i_w[None, :]),
                              jnp.inf)
        cost_none = w * half_beta * up.C_noise / jnp.mean(up.I_i_w)
        costs = jnp.concatenate([cost_pair.reshape(-1), cost_none if N > J else jnp.zeros(0, dtype)])
    else:
        costs = jnp.where(ok, w[:, None] * p_safe, 0.0).reshape(-1)  # a pair's power never exceeds p_ub
    # ties (the host's rule): δ ε_n added to every pair; no ε_n exceeds C / min I (p = 0)
    cost_scale = jnp.max(jnp.where(jnp.isfinite(costs), jnp.abs(costs), 0.0))
    delta = tie_break_weight(cost_scale, up.C_noise / jnp.min(up.I_i_w))
    tie_none = jnp.full(N, delta * up.C_noise / jnp.mean(up.I_i_w))
    if lyapunov == "drift":
        tie_pair = delta * up.C_noise / (p_safe * up.h_n[:, None] + up.I_i_w[None, :])
        # the pair costs do not depend on T: the best matching with every latency allowed bounds
        # the cost part of every bound's objective from below (tighter than the host's
        # per-cluster floor, so the walk over bounds stops sooner at the same optimum)
        floor = match_channels(cost_pair, cost_none, method)[1]
    else:
        cost_none = jnp.zeros(N, dtype)
        floor = jnp.zeros((), dtype)
        # the least power meeting T changes continuously with T: a dense grid of bounds as well
        finite = jnp.isfinite(candidates)
        T_lo = jnp.min(candidates)
        T_top = jnp.max(jnp.where(finite, candidates, -jnp.inf))
        span = jnp.maximum(jnp.maximum(T_top - T_lo, T_lo), 1e-9)
        grid = T_lo + span * jnp.asarray(np.geomspace(1e-4, 4.0, paper_grid), dtype)
        candidates = jnp.concatenate([candidates, grid])
    # the least bound at which a matching fits (binary search with an augmenting-path test):
    # below it no bound has a matching, so none is solved
    candidates = jnp.sort(candidates)
    first, any_ok = least_feasible_bound(candidates, lat, tau_pipe)
    T_first = jnp.where(any_ok, candidates[first], jnp.inf)

    def at_bound(T):
        """The best matching with every latency ≤ T, its powers, delays and objective."""
        allowed = lat <= T
        if lyapunov == "drift":
            cost = jnp.where(allowed, cost_pair, jnp.inf)
            p_pair, delay_pair = p_ub, delay_ub
            ties = tie_pair
        else:
            p_pair = power_for_delay(up, T - tau_pipe[:, None], n_idx, j_idx, p_cap=jnp.where(ok, p_ub, 0.0))
            p_pair = jnp.where(allowed & jnp.isfinite(p_pair), p_pair, jnp.nan)
            cost = jnp.where(jnp.isnan(p_pair), jnp.inf, w[:, None] * jnp.nan_to_num(p_pair))
            delay_pair = upload_delay(up, jnp.where(jnp.isnan(p_pair), 1.0, p_pair), n_idx, j_idx)
            ties = delta * up.C_noise / (jnp.nan_to_num(p_pair) * up.h_n[:, None] + up.I_i_w[None, :])
        none_cost = jnp.where(tau_pipe <= T, cost_none, jnp.inf)
        channel, total, found = match_channels(cost, none_cost, method, ties, tie_none)
        uploads = channel >= 0
        p = jnp.where(uploads, _pick(p_pair, channel), 0.0)
        tau_up = jnp.where(uploads, _pick(delay_pair, channel), 0.0)
        obj = V * jnp.max(tau_pipe + tau_up) + total
        found = found & jnp.isfinite(T) & jnp.isfinite(obj)
        return channel, p, tau_up, jnp.where(found, obj, jnp.inf)

    if lyapunov == "drift":
        obj, channel, p, tau_up = _walk_runs(candidates, first, any_ok, at_bound, V, floor)
    else:
        obj, channel, p, tau_up = _walk_chunks(jnp.where(candidates >= T_first, candidates, jnp.inf), at_bound,
                                               V, floor, chunk, N, dtype)
    found = jnp.isfinite(obj)
    if lyapunov == "paper":
        refined = power_control_paper(up, tau_pipe, channel, w, V, p_ub)
        better = found & (refined.objective < obj)
        obj = jnp.where(better, refined.objective, obj)
        p = jnp.where(better, refined.p_n_w, p)
        tau_up = jnp.where(better, refined.tau_up_s, tau_up)
    return Resources(channel, p, tau_up, obj, found)


def _walk_runs(candidates, first, any_ok, at_bound, V, floor):
    """``drift``: the host's `rs._walk_runs` in a `lax.while_loop`, one matching per step; returns
    (objective, channel, p, τ^up). The matching under T is a step function of T (the costs do
    not depend on T); from the least feasible bound each next step is found by bisection between the current step's start `lo`
    and the stop bound (the first with V T + floor ≥ the best so far), and scored. Under vmap
    the loop runs as long as the batch's longest walk, usually no step at all (the stop bound
    follows the least feasible one)."""
    finite = jnp.isfinite(candidates)
    n_finite = jnp.sum(finite).astype(jnp.int32)
    stop_values = jnp.where(finite, V * candidates + floor, jnp.inf)  # sorted as the candidates (V ≥ 0)

    def stop_after(lo, best_obj):
        k = jnp.searchsorted(stop_values, best_obj, side="left").astype(jnp.int32)
        return jnp.minimum(jnp.maximum(lo + 1, k), n_finite)

    channel, p, tau_up, obj = at_bound(candidates[first])  # the step's matching at its first bound
    best = (jnp.where(any_ok, obj, jnp.inf), channel, p, tau_up)
    lo = first.astype(jnp.int32)
    stop = jnp.where(any_ok, stop_after(lo, best[0]), lo)
    # state: lo (solved, the step's matching `run`), hi (first bound known to differ, or stop)
    init = (lo, stop, stop, best[1], best, best)

    def cond(s):
        lo, hi = s[0], s[1]
        return hi - lo > 1

    def body(s):
        lo, hi, stop, run, found_hi, best = s
        mid = (lo + hi) // 2
        ch, p, tau, obj = at_bound(candidates[mid])
        at_mid = (obj, ch, p, tau)
        same = jnp.all(at_mid[1] == run)
        lo = jnp.where(same, mid, lo)
        hi = jnp.where(same, hi, mid)
        found_hi = jax.tree.map(lambda a, b: jnp.where(same, b, a), at_mid, found_hi)
        # the bracket closed on a new step before the stop: score it, start the next bracket
        new_step = (hi - lo <= 1) & (hi < stop)
        better = new_step & (found_hi[0] < best[0])
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), found_hi, best)
        lo = jnp.where(new_step, hi, lo)
        run = jnp.where(new_step, found_hi[1], run)
        stop = jnp.where(new_step, stop_after(lo, best[0]), stop)
        hi = jnp.where(new_step, stop, hi)
        return lo, hi, stop, run, found_hi, best

    return lax.while_loop(cond, body, init)[5]


def _walk_chunks(candidates, at_bound, V, floor, chunk: int, N: int, dtype):
    """``paper``: every bound from the least feasible one, `chunk` at a time (vmap, masked) in a
    `lax.while_loop` that stops with the host's test (V T + floor ≥ the best)."""
    candidates = jnp.sort(candidates)
    n_chunks = -(-candidates.shape[0] // chunk)
    candidates = jnp.concatenate([candidates, jnp.full(n_chunks * chunk - candidates.shape[0], jnp.inf, dtype)])
    candidates = candidates.reshape(n_chunks, chunk)

    def cond(state):
        i, best = state[0], state[1]
        return (i < n_chunks) & ~(V * candidates[jnp.minimum(i, n_chunks - 1), 0] + floor >= best)

    def body(state):
        i, best_obj, best_ch, best_p, best_tau = state
        Ts = candidates[i]
        # the host stops at the first bound with V T + floor ≥ best: skip those inside the chunk
        live = ~(V * Ts + floor >= best_obj)
        ch, p, tau, obj = jax.vmap(at_bound)(Ts)
        obj = jnp.where(live, obj, jnp.inf)
        k = jnp.argmin(obj)
        better = obj[k] < best_obj
        return (i + 1, jnp.where(better, obj[k], best_obj), jnp.where(better, ch[k], best_ch),
                jnp.where(better, p[k], best_p), jnp.where(better, tau[k], best_tau))

    init = (jnp.asarray(0), jnp.asarray(jnp.inf, dtype), jnp.full(N, -1, jnp.int32), jnp.zeros(N, dtype),
            jnp.zeros(N, dtype))
    _, obj, channel, p, tau_up = lax.while_loop(cond, body, init)
    return obj, channel, p, tau_up


# --------------------------------------------------------------------------- power control


def paper_power_objective(up: Uplink, tau_pipe, channel, w, V, T):
    """V T + Σ_assigned w_n p_req,n(T), p_req the least power meeting τ_pipe + τ^up ≤ T; inf
    when a cluster without a channel finishes after T."""
    assigned = channel >= 0
    j = jnp.clip(channel, 0, None)
    p_req = power_for_delay(up, T - tau_pipe, jnp.arange(up.N), j)
    total = V * T + jnp.sum(jnp.where(assigned, w * p_req, 0.0))
    return jnp.where(jnp.any(~assigned & (tau_pipe > T)), jnp.inf, total)


def golden_section(f, lo, hi, iters: int = 200, rtol: float = 1e-12):
    """Minimiser of a convex (unimodal) f on [lo, hi]: the host's search (same steps, same stop
    rule b − a ≤ rtol · max(1, |b|), the best of lo, c, d, hi)."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - g * (hi - lo), lo + g * (hi - lo)

    def cond(state):
        i, a, b = state[0], state[1], state[2]
        return (i < iters) & ~(b - a <= rtol * jnp.maximum(1.0, jnp.abs(b)))

    def body(state):
        i, a, b, c, d, fc, fd = state
        left = fc <= fd
        b2, d2, fd2 = jnp.where(left, d, b), jnp.where(left, c, d), jnp.where(left, fc, fd)
        a2, c2, fc2 = jnp.where(left, a, c), jnp.where(left, c, d), jnp.where(left, fc, fd)
        new = jnp.where(left, b2 - g * (b2 - a2), a2 + g * (b2 - a2))
        f_new = f(new)
        c2, fc2 = jnp.where(left, new, c2), jnp.where(left, f_new, fc2)
        d2, fd2 = jnp.where(left, d2, new), jnp.where(left, fd2, f_new)
        return i + 1, a2, b2, c2, d2, fc2, fd2

    _, _, _, c, d, fc, fd = jax.lax.while_loop(cond, body, (jnp.asarray(0), lo, hi, c, d, f(c), f(d)))
    points = jnp.stack([lo, c, d, hi])
    values = jnp.stack([f(lo), fc, fd, f(hi)])
    values = jnp.where(jnp.isnan(values), jnp.inf, values)
    return points[jnp.argmin(values)]


def power_control_paper(up: Uplink, tau_pipe, channel, w, V, p_ub, iters: int = 200) -> Resources:
    """Powers for a fixed matching under the ``paper`` objective (V τ + Σ w (S + p)): the
    bottleneck T by golden section over [T_lo, T_lo + f(T_lo)/V], p_n = p_req(T) ≤ p_ub."""
    dtype = up.h_n.dtype
    tau_pipe = jnp.asarray(tau_pipe, dtype)
    V = jnp.asarray(V, dtype)
    n = jnp.arange(up.N)
    assigned = channel >= 0
    j = jnp.clip(channel, 0, None)
    cap = p_ub[n, j]
    u_lo = jnp.where(assigned, upload_delay(up, jnp.where(assigned, cap, 1.0), n, j), 1.0)
    T_lo = jnp.max(tau_pipe + jnp.where(assigned, u_lo, 0.0))
    f = lambda T: paper_power_objective(up, tau_pipe, channel, w, V, T)  # noqa: E731
    f_lo = f(T_lo)
    # beyond T_lo + f_lo/V the latency term alone exceeds f(T_lo); cap the bracket if V = 0
    T_hi = jnp.where(V > 0, T_lo + f_lo / jnp.where(V > 0, V, 1.0) + 1e-9, T_lo * 1e3 + 1.0)
    T_opt = jnp.maximum(golden_section(f, T_lo, T_hi, iters), T_lo)
    p = jnp.where(assigned, jnp.minimum(power_for_delay(up, T_opt - tau_pipe, n, j), cap), 0.0)
    tau_up = jnp.where(assigned, upload_delay(up, jnp.where(assigned, p, 1.0), n, j), 0.0)
    obj = V * jnp.max(tau_pipe + tau_up) + jnp.dot(w, p)
    return Resources(channel, p, tau_up, obj, jnp.isfinite(obj))


# --------------------------------------------------------------------------- Sub-1's choice of S


def choose_stage_counts(F, tau_up, w, V, coef):
    """Exact min over stage-count vectors of V max_n (F[n, S_n] + τ^up_n) + Σ_n w_n coef S_n
    (Sub-1 given Sub-2; host `dssra.choose_stage_counts`). F [N, K]: τ_pipe of cluster n's
    best plan with k + 1 stages, inf where none. Returns the index k per cluster [N] int32.

    Every bottleneck T among the F + τ^up is tried; under T each cluster takes the least
    w coef S among its plans that fit (ties: the faster plan); the first best T wins. The plans
    that fit under T are a prefix of the cluster's plans in latency order, so each cluster's
    choice per prefix is found once (a running arg-min over K) and each T only counts the
    cluster's plans under it: O(N K · N log K) for the N K bounds instead of O((N K)²)."""
    dtype = F.dtype
    N, K = F.shape
    lat = F + jnp.asarray(tau_up, dtype)[:, None]
    S = jnp.arange(1, K + 1, dtype=dtype)
    cost = jnp.asarray(w, dtype)[:, None] * coef * S[None, :]
    order = jnp.argsort(lat, axis=1, stable=True)  # equal latencies: lower k first, as the argmin
    ls = jnp.take_along_axis(lat, order, axis=1)
    cs = jnp.take_along_axis(cost, order, axis=1)
    # prefix j (the j + 1 fastest plans): the cheapest, the fastest among equally cheap (first)
    best_c, best_i = cs[:, 0], jnp.zeros(N, jnp.int32)
    pre_c, pre_i = [best_c], [best_i]
    for j in range(1, K):
        better = cs[:, j] < best_c
        best_c, best_i = jnp.where(better, cs[:, j], best_c), jnp.where(better, j, best_i)
        pre_c.append(best_c)
        pre_i.append(best_i)
    pre_c, pre_i = jnp.stack(pre_c, axis=1), jnp.stack(pre_i, axis=1)  # [N, K]
    pre_lat = jnp.take_along_axis(ls, pre_i, axis=1)
    bounds = jnp.sort(lat.reshape(-1))  # [C]
    fitting = jax.vmap(lambda row: jnp.searchsorted(row, bounds, side="right"))(ls)  # [N, C] plans ≤ T
    usable = jnp.isfinite(bounds) & jnp.all(fitting > 0, axis=0)
    j = jnp.clip(fitting - 1, 0, K - 1)
    pick_lat = jnp.take_along_axis(pre_lat, j, axis=1)  # [N, C]
    pick_cost = jnp.take_along_axis(pre_c, j, axis=1)
    totals = V * jnp.max(pick_lat, axis=0) + jnp.sum(pick_cost, axis=0)
    best = jnp.argmin(jnp.where(usable, totals, jnp.inf))
    rows = jnp.arange(N)
    return order[rows, pre_i[rows, j[:, best]]].astype(jnp.int32)


def choose_stage_counts_paper(F, up: Uplink, channel, p_ub, w, V, grid: int = 4000, chunk: int = 512):
    """Sub-1 for the ``paper`` objective with the channels fixed but the powers free (host
    `dssra.choose_stage_counts_paper`): for each T of a dense grid (plus every cluster's
    fastest finish) each cluster takes the S minimising w_n (S + p_req(T − F[n, S])); the
    first best T wins. The T's are scanned `chunk` at a time to bound memory under vmap."""
    dtype = F.dtype
    N, K = F.shape
    w = jnp.asarray(w, dtype)
    V = jnp.asarray(V, dtype)
    n = jnp.arange(N)
    assigned = channel >= 0
    j = jnp.clip(channel, 0, None)
    cap = p_ub[n, j]
    up_min = jnp.where(assigned, upload_delay(up, jnp.where(assigned, cap, 1.0), n, j), 0.0)
    floor = F + up_min[:, None]
    T_lo = jnp.max(jnp.min(floor, axis=1))
    finite = jnp.isfinite(floor)
    T_hi = jnp.maximum(jnp.max(jnp.where(finite, floor, -jnp.inf)), T_lo) * 4.0 + 1.0
    from_floor = jnp.where(finite & (floor >= T_lo), floor, jnp.inf).reshape(-1)
    T = jnp.concatenate([from_floor, T_lo + (T_hi - T_lo) * jnp.asarray(np.geomspace(1e-6, 1.0, grid), dtype)])
    T = jnp.sort(T)
    n_chunks = -(-T.shape[0] // chunk)
    T = jnp.concatenate([T, jnp.full(n_chunks * chunk - T.shape[0], jnp.inf, dtype)]).reshape(n_chunks, chunk)
    S = jnp.arange(1, K + 1, dtype=dtype)
    n_b, j_b = n[:, None, None], j[:, None, None]

    def chunk_best(carry, Ts):
        fits = (Ts[None, None, :] >= floor[:, :, None]) & jnp.isfinite(F)[:, :, None]  # [N, K, C]
        budget = jnp.where(fits, Ts[None, None, :] - F[:, :, None], 1.0)
        p = power_for_delay(up, budget, n_b, j_b, p_cap=cap[:, None, None])
        with_power = jnp.where(fits & jnp.isfinite(p), w[:, None, None] * (S[None, :, None] + jnp.where(
            jnp.isfinite(p), p, 0.0)), jnp.inf)
        without = jnp.where(fits, w[:, None, None] * S[None, :, None], jnp.inf)
        cost = jnp.where(assigned[:, None, None], with_power, without)
        total = V * Ts + jnp.sum(jnp.min(cost, axis=1), axis=0)
        total = jnp.where(jnp.isfinite(Ts), total, jnp.inf)
        total = jnp.where(jnp.isnan(total), jnp.inf, total)
        k = jnp.argmin(total)
        pick = jnp.argmin(cost[:, :, k], axis=1).astype(jnp.int32)
        best_total, best_pick = carry
        better = total[k] < best_total
        return (jnp.where(better, total[k], best_total), jnp.where(better, pick, best_pick)), None

    init = (jnp.asarray(jnp.inf, dtype), jnp.zeros(N, jnp.int32))
    (_, pick), _ = jax.lax.scan(chunk_best, init, T)
    return pick


# --------------------------------------------------------------------------- fixed rules


def default_preference(selected, J: int):
    """The baselines' default order: the i-th selected cluster prefers channel i (0 ≤ i < J),
    lower first; every other pair 1. [N, J]"""
    rank = jnp.cumsum(selected) - 1
    first = selected[:, None] & (rank[:, None] == jnp.arange(J)[None, :])
    return jnp.where(first, 0.0, 1.0)


def default_uploads(up: Uplink, p_ub, selected, preference, method: str | None = None):
    """Channels and powers of the selected CUs (host `baselines.default_uploads`): the pairs in
    `preference` order (lower first; `default_preference` for the baselines' default), never a
    pair where no power meets C11'; p_n = p_ub (= min(P_max, the C11' bound)). Exactly the
    selected clusters upload when min(N, J) are selected. Returns (channel, p, ok)."""
    method = default_method(up.J) if method is None else method
    selected = jnp.asarray(selected, bool)
    cost = jnp.where(selected[:, None] & ~jnp.isnan(p_ub), jnp.asarray(preference, p_ub.dtype), jnp.inf)
    channel, _, ok = match_channels(cost, jnp.where(selected, jnp.inf, 0.0).astype(p_ub.dtype), method)
    p = jnp.where(channel >= 0, _pick(p_ub, channel), 0.0)
    return channel, p, ok


def default_channels(up: Uplink, p_ub):
    """The frameworks' fixed rule (host `frameworks.default_channels`): channel n for cluster
    n < J, none for the rest; p_n = p_ub, or P_max where no power meets C11' (a breach the
    round reports). Returns (channel, p)."""
    n = jnp.arange(up.N)
    channel = jnp.where(n < up.J, n, -1).astype(jnp.int32)
    bound = _pick(p_ub, channel)
    p = jnp.where(channel >= 0, jnp.where(jnp.isnan(bound), up.P_max_n_w, bound), 0.0)
    return channel, p
