"""Sub-1 (Alg. 2, Eq. 37–39) on the device: per-cluster fronts, the m rule, the default plan and
the frameworks' fixed plans, as pure JAX with static shapes ↔ `scheduling/segments.py`.

Every function works on **one** cluster (`Cluster`, arrays [K] and 0-d scalars); `L`, `b`,
`variant` and the method choices are static Python arguments, everything else is an array, so
that a caller can `jax.vmap` over clusters, rounds and seeds and `jax.jit` the whole. The
arithmetic follows the host's operation by operation (float64 under `jax.enable_x64` equals the
host to rounding; float32 runs too). The math is in the host module's docstring; in short, with
t_k the chunk time inside the max (Eq. 15/33),

    paper       τ_pipe = E ((S + m − 1) max_k t_k − d_ℓ)        (Eq. 15 as printed)
    consistent  τ_pipe = E (Σ_k t_k + (m − 1) max_k t_k)         (GPipe makespan)

A plan is (δ [K], last device ℓ, m): the pipeline order is the scheduled devices other than ℓ
in index order, then ℓ (the host's `_plan`; τ_pipe and the energies depend on the order only
through which device is last).

Exact fronts at fixed m (the best plan per stage count S = 1..K):

* paper: the host's greedy. Feasibility of (bound T, S, ℓ) is monotone in T, and τ = w_S T − d_ℓ
  grows with T, so each (S, ℓ) takes its smallest feasible candidate bound (the host's argmin
  over (T, ℓ) with its tie-breaking): the largest of four monotone conditions' smallest bounds,
  from counts of comparisons over every candidate at once (`_greedy_bounds`; no sort).
* consistent: a DP over the devices (state: TEBs placed, devices used, last chosen), one bound T
  at a time, the arg-min plan carried through the DP (no backtrack). The largest bound first:
  its least Σ cost per S lower-bounds Σ cost under every bound, so a bound T can improve S only
  if T ≥ the least bound under which S devices hold L TEBs and Σcost_top(S) + w_S T ≤ the best
  τ found for S; those bounds are visited in increasing order (`lax.while_loop`, a data-dependent
  trip count: 5–8 DP passes on the drawn paper-bert instances at m = 8..64, of K·L·2 bounds).
  At m = 1 (consistent) the largest bound alone is optimal (τ = Σ t falls as the bound rises).
  `method="dp"` runs the same DP under paper (a check of the greedy).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from collapipe_jax.scenario import even_split
from collapipe_jax.scheduling import segments as sg
from collapipe_jax.scheduling.device import constraints as cs

NONLAST, LAST = sg.NONLAST, sg.LAST
VARIANTS = ("paper", "consistent")
FRONT_METHODS = ("auto", "greedy", "dp")
DEFAULT_MICRO_BATCHES = 4  # frameworks.DEFAULT_MICRO_BATCHES: GPipe with m = 4 (paper §VI)
_BIG = np.iinfo(np.int32).max


# --------------------------------------------------------------------------- data


@struct.dataclass
class Cluster:
    """One cluster's devices (arrays [K], SI units) and the model sizes (0-d): the host
    `ClusterDevices` without its static L, b and variant."""

    f_hz: jax.Array
    phi: jax.Array
    p_k_w: jax.Array
    r_dd_bps: jax.Array
    gamma_max_bytes: jax.Array
    E_max_j: jax.Array
    o_fwd: jax.Array
    o_bwd: jax.Array
    z_bits: jax.Array
    g_bits: jax.Array
    gamma0_bytes: jax.Array
    kappa: jax.Array
    iterations: jax.Array


def cluster_from_host(dev: sg.ClusterDevices, dtype=None) -> Cluster:
    """A host `ClusterDevices` as a `Cluster` (dtype: JAX's default float unless given)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    a = lambda x: jnp.asarray(np.asarray(x, np.float64), dtype=dtype)  # noqa: E731
    return Cluster(f_hz=a(dev.f_hz), phi=a(dev.phi), p_k_w=a(dev.p_k_w), r_dd_bps=a(dev.r_dd_bps),
                   gamma_max_bytes=a(dev.gamma_max_bytes), E_max_j=a(dev.E_max_j), o_fwd=a(dev.o_fwd),
                   o_bwd=a(dev.o_bwd), z_bits=a(dev.z_bits), g_bits=a(dev.g_bits),
                   gamma0_bytes=a(dev.gamma0_bytes), kappa=a(dev.kappa), iterations=a(dev.iterations))


@struct.dataclass
class Terms:
    """Per-device terms for one m (host `MTerms`): c, d, cycles [K]; the chunk time inside the
    max, the energy and what C7/C9' allow per (device, δ = 0..L, role) [K, L+1, 2]; the cost
    cost_k(δ, role) = δ cost_per_teb_k + cost_role[k, role]."""

    m: jax.Array
    c: jax.Array
    d: jax.Array
    cycles: jax.Array
    stage: jax.Array
    energy: jax.Array
    allowed: jax.Array
    cost_per_teb: jax.Array
    cost_role: jax.Array


@struct.dataclass
class Plan:
    """δ per device, the last device, m and τ_pipe; ok: the plan meets C1, C2, C7 and C9'."""

    delta: jax.Array  # [K] int32
    last: jax.Array  # int32
    m: jax.Array  # int32
    tau: jax.Array
    ok: jax.Array  # bool


@struct.dataclass
class Front:
    """The best plan per stage count: row S − 1 holds the best plan with S stages (host
    `SegmentFront.plans`); tau is inf and ok False where there is none."""

    delta: jax.Array  # [K, K] int32
    last: jax.Array  # [K] int32
    m: jax.Array  # [K] int32
    tau: jax.Array  # [K]
    ok: jax.Array  # [K] bool


def _check(variant: str, L: int, b: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {list(VARIANTS)}, got {variant!r}")
    if int(L) < 1 or int(b) < 1:
        raise ValueError(f"L and b: must be integers >= 1, got L={L}, b={b}")


def _dtype(cl: Cluster):
    return cl.f_hz.dtype


def _sends(variant: str, dtype) -> jax.Array:
    """Which roles (non-last, last) are charged their D2D delay: both under paper (the last
    device's τ^dd is inside Eq. 15's max and its energy), the non-last ones under consistent."""
    return jnp.asarray([1.0, 1.0] if variant == "paper" else [1.0, 0.0], dtype)


# --------------------------------------------------------------------------- terms and plans


def m_terms(cl: Cluster, m, L: int, b: int, variant: str) -> Terms:
    """Chunk times and energies of every (device, δ, role) at m micro-batches (Eq. 13, 14,
    15/33, 16); host `segments.m_terms` (m in [1, b], traced)."""
    _check(variant, L, b)
    dt = _dtype(cl)
    m = jnp.asarray(m, jnp.int32)
    b_hat = jnp.asarray(b, dt) / m.astype(dt)
    if variant == "paper":
        cycles = (b_hat * cl.o_fwd + cl.o_bwd) / cl.phi
        d = (cl.z_bits + cl.g_bits) / cl.r_dd_bps
    else:
        cycles = b_hat * (cl.o_fwd + cl.o_bwd) / cl.phi
        d = b_hat * (cl.z_bits + cl.g_bits) / cl.r_dd_bps
    c = cycles / cl.f_hz
    deltas = jnp.arange(L + 1, dtype=dt)
    sends = _sends(variant, dt)
    stage = deltas[None, :, None] * c[:, None, None] + d[:, None, None] * sends[None, None, :]
    energy = _energy(cl, m, variant, cl.f_hz[:, None, None], cycles[:, None, None],
                     (cl.p_k_w * d)[:, None, None], deltas[None, :, None], sends[None, None, :])
    mem_ok = deltas[None, :] * cl.gamma0_bytes <= cl.gamma_max_bytes[:, None]
    allowed = mem_ok[:, :, None] & (energy <= cl.E_max_j[:, None, None]) & (deltas >= 1)[None, :, None]
    if variant == "paper":  # Σ cost = −d_ℓ
        cost_per_teb, cost_role = jnp.zeros_like(c), jnp.stack([jnp.zeros_like(d), -d], axis=1)
    else:  # Σ cost = Σ t_k
        cost_per_teb, cost_role = c, jnp.stack([d, jnp.zeros_like(d)], axis=1)
    return Terms(m=m, c=c, d=d, cycles=cycles, stage=stage, energy=energy, allowed=allowed,
                 cost_per_teb=cost_per_teb, cost_role=cost_role)


def _energy(cl, m, variant, f, cycles, pd, delta, send):
    """E_k = 2m E (κ f² δ cycles + p d) (paper, Eq. 14/16) or m E (κ f² δ cycles + p d [k ≠ ℓ])
    (consistent), in the host's order of operations."""
    dt = _dtype(cl)
    factor = (2 * m if variant == "paper" else m).astype(dt) * cl.iterations
    return factor * (cl.kappa * f ** 2 * (delta * cycles) + pd * send)


def _weight(terms: Terms, S, variant: str):
    """w_S: S + m − 1 (paper, Eq. 15) or m − 1 (consistent)."""
    dt = terms.c.dtype
    if variant == "paper":
        return (jnp.asarray(S, jnp.int32) + terms.m - 1).astype(dt)
    return jnp.broadcast_to((terms.m - 1).astype(dt), jnp.shape(S))


def _plan_terms(cl: Cluster, terms: Terms, delta, last, variant: str):
    """Per device: scheduled, role, chunk time (0 off), cost (0 off), energy (0 off)."""
    dt = _dtype(cl)
    K = cl.f_hz.shape[0]
    delta = jnp.asarray(delta, jnp.int32)
    scheduled = delta > 0
    role = (jnp.arange(K) == last).astype(jnp.int32)
    df = delta.astype(dt)
    send = _sends(variant, dt)[role]
    t = jnp.where(scheduled, df * terms.c + terms.d * send, 0.0)
    cost = jnp.where(scheduled, df * terms.cost_per_teb + jnp.take_along_axis(terms.cost_role, role[:, None], 1)[:, 0],
                     0.0)
    energy = _energy(cl, terms.m, variant, cl.f_hz, terms.cycles, cl.p_k_w * terms.d, df, send)
    return scheduled, t, cost, energy


def pipeline_latency(cl: Cluster, m, delta, last, L: int, b: int, variant: str) -> jax.Array:
    """τ_pipe of a round: E (Σ_k cost_k + w_S max_k t_k), i.e. E ((S + m − 1) max t − d_ℓ)
    (paper, Eq. 15) or E (Σ t + (m − 1) max t) (consistent); host `pipeline_latency`."""
    terms = m_terms(cl, m, L, b, variant)
    scheduled, t, cost, _ = _plan_terms(cl, terms, delta, last, variant)
    return cl.iterations * (jnp.sum(cost) + _weight(terms, jnp.sum(scheduled), variant) * jnp.max(t))


def plan_violations(cl: Cluster, m, delta, last, L: int, b: int, variant: str) -> jax.Array:
    """bool[4]: the plan breaks C1 (Σ δ = L, δ ≥ 0), C2 (the last device is scheduled), C7
    (δ_k γ_0 ≤ γ_k^max), C9' (E_k ≤ E_k^max); host `plan_violations`."""
    K = cl.f_hz.shape[0]
    delta = jnp.asarray(delta, jnp.int32)
    last = jnp.asarray(last, jnp.int32)
    terms = m_terms(cl, m, L, b, variant)
    scheduled, _, _, energy = _plan_terms(cl, terms, delta, last, variant)
    c1 = (jnp.sum(delta) != L) | jnp.any(delta < 0)
    c2 = (last < 0) | (last >= K) | (delta[jnp.clip(last, 0, K - 1)] <= 0)
    c7 = jnp.any(scheduled & (delta.astype(_dtype(cl)) * cl.gamma0_bytes > cl.gamma_max_bytes))
    c9 = jnp.any(scheduled & (energy > cl.E_max_j))
    return jnp.stack([c1, c2, c7, c9])


def _make_plan(cl, m, delta, last, L, b, variant) -> Plan:
    delta = jnp.asarray(delta, jnp.int32)
    last = jnp.asarray(last, jnp.int32)
    m = jnp.asarray(m, jnp.int32)
    tau = pipeline_latency(cl, m, delta, last, L, b, variant)
    ok = ~jnp.any(plan_violations(cl, m, delta, last, L, b, variant))
    return Plan(delta=delta, last=last, m=m, tau=tau, ok=ok)


# --------------------------------------------------------------------------- exact fronts at fixed m


def _candidates(terms: Terms):
    """(chunk times with disallowed entries at inf [K, L+1, 2], sorted candidate bounds: every
    δ ≥ 1 chunk time, inf at the end). Duplicates are kept: they do not change any min."""
    stage = jnp.where(terms.allowed, terms.stage, jnp.inf)
    return stage, jnp.sort(stage[:, 1:, :].reshape(-1))


def _caps(stage, T):
    """U[..., k, role]: the most TEBs device k may hold in that role with its chunk time ≤ T
    (host `_caps_under`: the allowed δ are a prefix and the chunk time grows with δ), for bounds
    T of any shape; a count of comparisons, which vectorises better than a search."""
    return jnp.sum(stage[:, 1:, :] <= jnp.asarray(T)[..., None, None, None], axis=-2).astype(jnp.int32)


def _row_at(cap):
    """The greedy's order of the non-last caps [..., K]: by decreasing cap, ties by index (the
    host's stable argsort), as comparisons rather than a sort (sorts are slow under vmap on
    CPUs): each device's rank, the devices by rank, the sums of the s largest caps (s = 0..K),
    and per device the usable others."""
    K = cap.shape[-1]
    a, b = cap[..., :, None], cap[..., None, :]  # [..., k, j]
    before = (b > a) | ((b == a) & (jnp.arange(K)[None, :] < jnp.arange(K)[:, None]))
    rank = jnp.sum(before, axis=-1).astype(jnp.int32)  # how many devices come before k
    by_cap = jnp.argmax(rank[..., None, :] == jnp.arange(K)[:, None], axis=-1).astype(jnp.int32)
    s = jnp.arange(K + 1)[:, None]
    top = jnp.sum(jnp.where(rank[..., None, :] < s, cap[..., None, :], 0), axis=-1)  # [..., K + 1]
    usable = (cap >= 1).astype(cap.dtype)
    return by_cap, top, rank, jnp.sum(usable, axis=-1, keepdims=True) - usable


def _first_holding(stage, cand, L: int, K: int):
    """[S, ℓ]: index of the first candidate bound under which the greedy's (S, ℓ) holds L TEBs
    (len(cand) if none): every bound at once, as the host's `front_greedy`."""
    nT = cand.shape[0]
    U = _caps(stage, cand)  # [nT, K, 2]
    cap, cap_last = U[..., NONLAST], U[..., LAST]
    _, top, rank, others_usable = _row_at(cap)
    s = jnp.arange(1, K + 1)[None, :, None]  # [1, S, 1]
    top_s = jnp.take_along_axis(top, jnp.broadcast_to(s[:, :, 0], (nT, K)), 1)[:, :, None]  # Σ of the s largest
    top_s1 = jnp.take_along_axis(top, jnp.broadcast_to(s[:, :, 0] - 1, (nT, K)), 1)[:, :, None]
    others = jnp.where(rank[:, None, :] < s - 1, top_s - cap[:, None, :], top_s1)  # [nT, S, ℓ]
    holds = ((cap_last[:, None, :] >= 1) & (others_usable[:, None, :] >= s - 1)
             & (others + cap_last[:, None, :] >= L) & (s <= L) & jnp.isfinite(cand)[:, None, None])
    return jnp.where(jnp.any(holds, axis=0), jnp.argmax(holds, axis=0), nT).astype(jnp.int32)


def _row(stage, T):
    """Caps under one bound T and the greedy's order of them (for the fill of a plan)."""
    U = _caps(stage, T)
    cap, cap_last = U[:, NONLAST], U[:, LAST]
    by_cap, top, rank, others_usable = _row_at(cap)
    return cap, cap_last, by_cap, top, rank, others_usable


def _front_from_plans(cl, m, delta, last, found, L, b, variant) -> Front:
    K = cl.f_hz.shape[0]
    m = jnp.asarray(m, jnp.int32)
    tau = jax.vmap(lambda dl, la: pipeline_latency(cl, m, dl, la, L, b, variant))(delta, last)
    return Front(delta=jnp.where(found[:, None], delta, 0).astype(jnp.int32),
                 last=jnp.where(found, last, -1).astype(jnp.int32),
                 m=jnp.full((K,), m, jnp.int32), tau=jnp.where(found, tau, jnp.inf), ok=found)


def _greedy_bounds(stage, L: int):
    """[S, ℓ]: the smallest candidate bound under which the greedy's (S, ℓ) holds L TEBs (inf if
    none), from one role's chunk times [K, L+1] (under paper both roles' are equal).

    With the caps U_k(T) and their values sorted c_1 ≥ c_2 ≥ …, (S, ℓ) holds iff U_ℓ ≥ 1, S
    devices are usable, and the S − 1 largest caps other than ℓ's plus U_ℓ reach L, i.e.
    c_1 + … + c_{S−1} + min(U_ℓ, c_S) ≥ L. Each of these four conditions is monotone in T, so
    the smallest bound meeting all is the largest of the four smallest bounds that meet each:
    U_ℓ ≥ 1 from the 1-TEB chunk time itself, the others as minima over the candidates (every
    allowed chunk time, unsorted). c_S = #{v : U_k ≥ v for at least S devices}: counts of
    comparisons, no sort (sorts and gathers are slow under vmap on CPUs)."""
    K = stage.shape[0]
    st = stage[:, 1:]  # [K, L]: δ = 1..L, inf where not allowed (a prefix)
    cand = st.reshape(-1)  # [T]
    below = st[None, :, :] <= cand[:, None, None]  # [T, K, L]: U_k(T) ≥ δ
    cap = jnp.sum(below, axis=2, dtype=jnp.int32)  # [T, K]
    count = jnp.sum(below, axis=1, dtype=jnp.int32)  # [T, L]: devices with U_k(T) ≥ v
    s = jnp.arange(1, K + 1, dtype=jnp.int32)
    sorted_cap = jnp.sum(count[:, None, :] >= s[None, :, None], axis=2, dtype=jnp.int32)  # [T, S]: c_S
    top_before = jnp.cumsum(sorted_cap, axis=1) - sorted_cap  # [T, S]: c_1 + … + c_{S−1}
    first = lambda ok: jnp.min(jnp.where(ok, cand.reshape(cand.shape + (1,) * (ok.ndim - 1)), jnp.inf), axis=0)  # noqa: E731
    usable = first(count[:, :1] >= s[None, :])  # [S]
    fill_all = first(top_before + sorted_cap >= L)  # [S]
    fill_last = first(top_before[:, :, None] + cap[:, None, :] >= L)  # [S, ℓ]
    bound = jnp.maximum(jnp.maximum(st[None, :, 0], usable[:, None]), jnp.maximum(fill_all[:, None], fill_last))
    return jnp.where((s <= L)[:, None], bound, jnp.inf)


def _front_greedy(cl: Cluster, m, L: int, b: int, variant: str) -> Front:
    """Exact front under paper (host `front_greedy`): for (S, ℓ) the best bound is the smallest
    feasible one; ties as the host's argmin over (T, ℓ): the smallest T, then the smallest ℓ."""
    K = cl.f_hz.shape[0]
    terms = m_terms(cl, m, L, b, variant)
    stage = jnp.where(terms.allowed, terms.stage, jnp.inf)
    T_at = _greedy_bounds(stage[..., NONLAST], L)  # [S, ℓ]; paper: the roles' chunk times are equal
    found = jnp.isfinite(T_at)
    S = jnp.arange(1, K + 1, dtype=jnp.int32)
    value = jnp.where(found, _weight(terms, S, variant)[:, None] * T_at + terms.cost_role[None, :, LAST], jnp.inf)
    best = found & (value == jnp.min(value, axis=1, keepdims=True))
    best &= T_at == jnp.min(jnp.where(best, T_at, jnp.inf), axis=1, keepdims=True)
    last = jnp.argmax(best, axis=1).astype(jnp.int32)
    bound = jnp.take_along_axis(T_at, last[:, None], 1)[:, 0]

    def fill(s, last, T):
        cap, cap_last, by_cap, _, rank, _ = _row(stage, T)
        # ℓ first, then the others by decreasing cap; any fill within the caps is optimal
        j = jnp.arange(K - 1)
        seq = jnp.concatenate([last[None], by_cap[jnp.where(j < rank[last], j, j + 1)]])
        member = jnp.arange(K) < s
        room = jnp.where(member, jnp.where(jnp.arange(K) == 0, cap_last[last], cap[seq]) - 1, 0)
        extra = jnp.clip((L - s) - (jnp.cumsum(room) - room), 0, room)
        return jnp.zeros(K, jnp.int32).at[seq].add(jnp.where(member, 1 + extra, 0))

    # Each bound is one of the chunk times, and the fill compares the chunk times with it again.
    # XLA may compute the chunk times twice (once per consumer, e.g. inside a while loop whose
    # trip count it folds) with roundings an ulp apart, which dropped a TEB from a plan (Σ δ = L
    # − 1, measured); a few ulps of slack keep the binding chunk time within its own bound.
    slack = bound + 4 * jnp.finfo(stage.dtype).eps * jnp.abs(bound)
    delta = jax.vmap(fill)(S, last, slack)
    whole = jnp.sum(delta, axis=1) == L  # a plan that does not place every TEB is no plan
    return _front_from_plans(cl, m, delta, last, jnp.any(found, axis=1) & whole, L, b, variant)


def _dp_at(stage, cost, T, L: int, K: int):
    """DP over the devices at bound T (host `_segment_dp` for one T), the arg-min plan carried:
    least Σ cost placing L TEBs on s devices, one of them last, every chunk time ≤ T.
    Returns (value [S], δ [S, K], last [S]) for S = 1..K."""
    dt = stage.dtype
    V = jnp.full((L + 1, K + 1, 2), jnp.inf, dt).at[0, 0, 0].set(0.0)
    P = jnp.zeros((L + 1, K + 1, 2, K), jnp.int8)  # δ of the arg-min plan of each state
    Lam = jnp.full((L + 1, K + 1, 2), -1, jnp.int32)  # its last device
    l_all = jnp.arange(L + 1)
    inf_s = jnp.full((L + 1, 1), jnp.inf, dt)
    l_tgt = l_all[:, None, None]
    s_tgt = jnp.arange(K + 1)[None, :, None]
    f_tgt = jnp.arange(2)[None, None, :]

    def step(carry, k):
        V, P, Lam = carry
        add = jnp.where(stage[k, 1:, :] <= T, cost[k, 1:, :], jnp.inf)  # [L, 2] for δ = 1..L
        # δ = 1..D only, D the most TEBs device k may hold under T (the allowed δ are a prefix):
        # a loop of [L+1, K+1, 2] steps rather than one [L+1, L, K+1, 2] table
        D = jnp.max(jnp.sum(jnp.isfinite(add), axis=0))

        def over_delta(j, acc):
            nl_min, nl_arg, la_min, la_arg = acc
            src = jnp.where((l_all >= j)[:, None, None], V[jnp.maximum(l_all - j, 0)], jnp.inf)  # V[l − δ]
            nonlast = src + add[j - 1, NONLAST]
            last = src[..., 0] + add[j - 1, LAST]
            nl_arg = jnp.where(nonlast < nl_min, j, nl_arg)  # the smallest δ among ties
            la_arg = jnp.where(last < la_min, j, la_arg)
            return jnp.minimum(nl_min, nonlast), nl_arg, jnp.minimum(la_min, last), la_arg

        init = (jnp.full((L + 1, K + 1, 2), jnp.inf, dt), jnp.ones((L + 1, K + 1, 2), jnp.int32),
                jnp.full((L + 1, K + 1), jnp.inf, dt), jnp.ones((L + 1, K + 1), jnp.int32))
        nl_min, nl_arg, la_min, la_arg = lax.fori_loop(1, D + 1, over_delta, init)
        # target s + 1 from source s
        nl_min = jnp.concatenate([jnp.full((L + 1, 1, 2), jnp.inf, dt), nl_min[:, :K, :]], axis=1)
        nl_arg = jnp.concatenate([jnp.zeros((L + 1, 1, 2), nl_arg.dtype), nl_arg[:, :K, :]], axis=1)
        la_min = jnp.concatenate([inf_s, la_min[:, :K]], axis=1)
        la_arg = jnp.concatenate([jnp.zeros((L + 1, 1), la_arg.dtype), la_arg[:, :K]], axis=1)
        la_min = jnp.stack([jnp.full_like(la_min, jnp.inf), la_min], axis=-1)  # only into "last chosen"
        la_arg = jnp.stack([la_arg, la_arg], axis=-1)
        choice = jnp.where(nl_min < V, 1, 0)  # 0 skip (kept on ties), 1 non-last, 2 last
        value = jnp.minimum(V, nl_min)
        choice = jnp.where(la_min < value, 2, choice)
        value = jnp.minimum(value, la_min)
        d = jnp.where(choice == 1, nl_arg, la_arg).astype(jnp.int32)
        l_src = jnp.where(choice == 0, l_tgt, jnp.maximum(l_tgt - d, 0))
        s_src = jnp.where(choice == 0, s_tgt, jnp.maximum(s_tgt - 1, 0))
        f_src = jnp.where(choice == 2, 0, f_tgt)
        plan = P[l_src, s_src, f_src]  # [L+1, K+1, 2, K]
        plan = plan.at[..., k].set(jnp.where(choice == 0, plan[..., k], d.astype(jnp.int8)))
        lam = jnp.where(choice == 2, k, Lam[l_src, s_src, f_src]).astype(jnp.int32)
        return (value, plan, lam), None

    (V, P, Lam), _ = lax.scan(step, (V, P, Lam), jnp.arange(K))
    return V[L, 1:, 1], P[L, 1:, 1].astype(jnp.int32), Lam[L, 1:, 1]


def _front_dp(cl: Cluster, m, L: int, b: int, variant: str, with_steps: bool = False):
    """Exact front by the DP over every candidate bound that can still improve a stage count
    (module docstring), in increasing order with `lax.while_loop`."""
    K = cl.f_hz.shape[0]
    dt = _dtype(cl)
    terms = m_terms(cl, m, L, b, variant)
    stage, cand = _candidates(terms)
    nT = cand.shape[0]
    cost = (jnp.arange(L + 1, dtype=dt)[None, :, None] * terms.cost_per_teb[:, None, None]
            + terms.cost_role[:, None, :])  # host `_cost_table`
    S = jnp.arange(1, K + 1, dtype=jnp.int32)
    weight = _weight(terms, S, variant)  # [S]
    t_min = jnp.min(_first_holding(stage, cand, L, K), axis=1)  # [S]: no plan with a smaller bottleneck
    feasible = t_min < nT
    finite = jnp.isfinite(cand)
    index = jnp.arange(nT)
    top = jnp.maximum(jnp.sum(finite) - 1, 0)
    one_bound = (terms.m == 1) & (variant == "consistent")  # τ = Σ t falls as the bound rises

    def visit(state, i):
        """The DP at bound cand[i]; per S the new plan where it is faster (on ties, the smaller
        bound, as the host's argmin over increasing bounds)."""
        best, at, delta, last, steps = state
        T = cand[i]
        value, plan, plan_last = _dp_at(stage, cost, T, L, K)
        total = value + weight * T
        better = (total < best) | ((total == best) & (T < at))
        return (jnp.where(better, total, best), jnp.where(better, T, at), jnp.where(better[:, None], plan, delta),
                jnp.where(better, plan_last, last), steps + 1), value

    # the largest bound first: its Σ cost is the least any bound allows (every cap is largest),
    # so Σcost_top + w_S T lower-bounds τ of every plan with bottleneck T
    inf = jnp.full((K,), jnp.inf, dt)
    state, value_top = visit((inf, inf, jnp.zeros((K, K), jnp.int32), jnp.full((K,), -1, jnp.int32), jnp.int32(0)),
                             top)

    slack = 1e-9 if dt == jnp.float64 else 1e-5  # rounding: visit a bound that ties, never skip one

    def useful(best, after):
        lower = value_top[None, :] + weight[None, :] * cand[:, None]  # [T, S]
        improves = (index[:, None] >= t_min[None, :]) & (lower <= best[None, :] + slack * jnp.abs(best[None, :]))
        keep = jnp.any(feasible[None, :] & improves, axis=1) & ~one_bound & finite & (index > after) & (index != top)
        return jnp.where(jnp.any(keep), jnp.argmax(keep), nT).astype(jnp.int32)

    def body(carry):
        i, state = carry
        state, _ = visit(state, i)
        return useful(state[0], i), state

    _, (best, _, delta, last, steps) = lax.while_loop(lambda c: c[0] < nT, body, (useful(state[0], -1), state))
    front = _front_from_plans(cl, m, delta, last, jnp.isfinite(best), L, b, variant)
    return (front, steps) if with_steps else front


def front_at_m(cl: Cluster, m, L: int, b: int, variant: str, method: str = "auto") -> Front:
    """Exact min-τ_pipe plan for every S = 1..K at fixed m (host `front_exact`): "auto" is the
    greedy under paper and the DP under consistent; "dp" runs the DP under either."""
    _check(variant, L, b)
    if method not in FRONT_METHODS:
        raise ValueError(f"method: must be one of {list(FRONT_METHODS)}, got {method!r}")
    if method == "greedy" and variant != "paper":
        raise ValueError("method: greedy is exact for the paper variant only")
    if variant == "paper" and method != "dp":
        return _front_greedy(cl, m, L, b, variant)
    return _front_dp(cl, m, L, b, variant)


# --------------------------------------------------------------------------- m (Eq. 38)


def stationary_m(cl: Cluster, m, delta, last, b: int, variant: str) -> jax.Array:
    """Stationary point of τ_pipe(m) (Eq. 38) for the plan's δ, last device and its bottleneck
    chunk at m (host `stationary_m`): paper sqrt((S − 1) α_*/β_*), consistent
    sqrt((Σα − α_*)/β_*), b when β_* = 0 (always so under consistent)."""
    dt = _dtype(cl)
    K = cl.f_hz.shape[0]
    delta = jnp.asarray(delta, jnp.int32)
    scheduled = delta > 0
    df = delta.astype(dt)
    sends = (scheduled & ((jnp.arange(K) != last) | (variant == "paper"))).astype(dt)
    pf = cl.phi * cl.f_hz
    bf = jnp.asarray(b, dt)
    if variant == "consistent":
        alpha = df * bf * (cl.o_fwd + cl.o_bwd) / pf + sends * bf * (cl.z_bits + cl.g_bits) / cl.r_dd_bps
        beta = jnp.zeros(K, dt)
    else:
        alpha = df * bf * cl.o_fwd / pf
        beta = df * cl.o_bwd / pf + sends * (cl.z_bits + cl.g_bits) / cl.r_dd_bps
    t = jnp.where(scheduled, alpha / jnp.asarray(m, jnp.int32).astype(dt) + beta, -jnp.inf)
    star = jnp.argmax(t)
    if variant == "paper":
        numerator = (jnp.sum(scheduled) - 1).astype(dt) * alpha[star]
    else:
        numerator = jnp.sum(jnp.where(scheduled, alpha, 0.0)) - alpha[star]
    safe = jnp.where(beta[star] > 0, beta[star], 1.0)
    return jnp.where(beta[star] <= 0, bf, jnp.sqrt(jnp.maximum(numerator, 0.0) / safe))


def better_integer_neighbour(cl: Cluster, delta, last, m_real, L: int, b: int, variant: str):
    """⌊m°⌋ or ⌈m°⌉ in [1, b], whichever gives the smaller τ_pipe with the plan's δ and last
    device while C7/C9' hold at that m (host `better_integer_neighbour`; ties to ⌊m°⌋).
    Returns (m, τ_pipe at m, found)."""
    x = jnp.clip(m_real, 1.0, float(b))
    lo, hi = jnp.floor(x).astype(jnp.int32), jnp.ceil(x).astype(jnp.int32)

    def at(mm):
        bad = jnp.any(plan_violations(cl, mm, delta, last, L, b, variant))
        return ~bad, pipeline_latency(cl, mm, delta, last, L, b, variant)

    ok_lo, tau_lo = at(lo)
    ok_hi, tau_hi = at(hi)
    take_hi = ok_hi & (hi != lo) & (tau_hi < jnp.where(ok_lo, tau_lo, jnp.inf))
    return jnp.where(take_hi, hi, lo), jnp.where(take_hi, tau_hi, tau_lo), ok_lo | take_hi


def _round_m(m_real, b: int):
    """min(max(round(m°), 1), b), round half to even as Python's round."""
    return jnp.clip(jnp.round(jnp.clip(m_real, 0.0, float(b))), 1, b).astype(jnp.int32)


def initial_m(cl: Cluster, L: int, b: int, variant: str) -> jax.Array:
    """Stationary m of the uniform split over all K devices at m = b/2 (host `initial_m`)."""
    K = cl.f_hz.shape[0]
    delta = jnp.asarray(even_split(L, K), jnp.int32)
    return _round_m(stationary_m(cl, max(1, b // 2), delta, min(L, K) - 1, b, variant), b)


def check_capacity(cl: Cluster, L: int) -> jax.Array:
    """C7 alone: True iff the devices' memory can hold the L TEBs (host `check_capacity`)."""
    deltas = jnp.arange(L + 1, dtype=_dtype(cl))
    fits = deltas[None, :] * cl.gamma0_bytes <= cl.gamma_max_bytes[:, None]
    return jnp.sum(jnp.sum(fits, axis=1) - 1) >= L


def _empty_front(K: int, dt) -> Front:
    return Front(delta=jnp.zeros((K, K), jnp.int32), last=jnp.full((K,), -1, jnp.int32),
                 m=jnp.zeros((K,), jnp.int32), tau=jnp.full((K,), jnp.inf, dt), ok=jnp.zeros((K,), bool))


def _merge(best: Front, new: Front) -> Front:
    """Per S, the new plan where it is strictly faster (host `_merge`)."""
    take = new.ok & (new.tau < best.tau)
    pick = lambda a, b: jnp.where(take.reshape(take.shape + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
    return jax.tree_util.tree_map(pick, new, best)


def solve_segments(cl: Cluster, L: int, b: int, variant: str, m_rule: str = "stationary",
                   max_m_solves: int = 3, method: str = "auto"):
    """Alg. 2 for one cluster: the best (m, δ, last) per stage count S, and an infeasibility code
    (host `solve_segments`, which raises InfeasibleError instead): C7 when memory cannot hold the
    L TEBs, C9 when no plan was found, else FEASIBLE.

    m_rule "stationary": the host's sequence of m. A queue starts at `initial_m`; each δ-solve's
    plans propose their better integer neighbour of Eq. 38's m (a free m-step merged into the
    front), queued in order of (τ, m) unless solved or queued; at most `max_m_solves` δ-solves,
    then m = 1 (the least device energy) when nothing is feasible. "exhaustive": every m in 1..b.
    """
    _check(variant, L, b)
    if m_rule not in sg.M_RULES:
        raise ValueError(f"m_rule: must be one of {list(sg.M_RULES)}, got {m_rule!r}")
    if int(max_m_solves) < 1:
        raise ValueError(f"max_m_solves: must be an integer >= 1, got {max_m_solves}")
    K = cl.f_hz.shape[0]
    dt = _dtype(cl)
    solve = lambda m: front_at_m(cl, m, L, b, variant, method)  # noqa: E731
    if m_rule == "exhaustive":
        best = lax.fori_loop(1, b + 1, lambda m, best: _merge(best, solve(m)), _empty_front(K, dt))
    else:
        best = _stationary_rule(cl, L, b, variant, int(max_m_solves), solve)
    code = jnp.where(~check_capacity(cl, L), cs.C7, jnp.where(jnp.any(best.ok), cs.FEASIBLE, cs.C9))
    return best, code.astype(jnp.int32)


def _stationary_rule(cl, L, b, variant, Q, solve) -> Front:
    K = cl.f_hz.shape[0]
    dt = _dtype(cl)
    queue = jnp.zeros(Q, jnp.int32).at[0].set(initial_m(cl, L, b, variant))
    solved = jnp.zeros(Q + 1, jnp.int32)  # 0 = empty: m ≥ 1

    def phase(st):
        best, queue, tail, solved, n, fallback_done = st
        from_queue = (n < jnp.minimum(tail, Q))  # the head of the queue is the count solved
        fallback = ~jnp.any(best.ok) & ~jnp.any(solved == 1) & ~fallback_done
        return from_queue, fallback

    def cond(st):
        from_queue, fallback = phase(st)
        return from_queue | fallback

    def body(st):
        best, queue, tail, solved, n, fallback_done = st
        from_queue, _ = phase(st)
        m = jnp.where(from_queue, queue[jnp.minimum(n, Q - 1)], 1)
        front = solve(m)
        best = _merge(best, front)
        solved = solved.at[n].set(m)

        def propose(delta, last):
            m_real = stationary_m(cl, m, delta, last, b, variant)
            return better_integer_neighbour(cl, delta, last, m_real, L, b, variant)

        nxt, tau, found = jax.vmap(propose)(front.delta, front.last)
        moved = found & front.ok & (nxt != m) & from_queue
        best = _merge(best, Front(delta=front.delta, last=front.last, m=nxt, tau=tau, ok=moved))
        # queue the new m in order of (τ, m), skipping those solved or queued
        order = jnp.lexsort((nxt, jnp.where(moved, tau, jnp.inf), ~moved))

        def enqueue(j, qt):
            queue, tail = qt
            k = order[j]
            new = moved[k] & ~jnp.any(solved == nxt[k]) & ~jnp.any((jnp.arange(Q) < tail) & (queue == nxt[k]))
            queue = jnp.where(new & (tail < Q), queue.at[jnp.minimum(tail, Q - 1)].set(nxt[k]), queue)
            return queue, tail + new.astype(jnp.int32)

        queue, tail = lax.fori_loop(0, K, enqueue, (queue, tail))
        return best, queue, tail, solved, n + 1, fallback_done | ~from_queue

    state = (_empty_front(K, dt), queue, jnp.int32(1), solved, jnp.int32(0), jnp.bool_(False))
    return lax.while_loop(cond, body, state)[0]


# --------------------------------------------------------------------------- default and fixed plans


def default_plan(cl: Cluster, order, L: int, b: int, variant: str, max_steps: int = 8):
    """The baselines' plan (host `baselines.default_plan`): the even split along `order` (a
    permutation [K]; its first devices take the remainder), m by Eq. 38's stationary rule
    iterated to a fixed point, m = 1 when that breaks C9'. Returns (plan, code): C7 or C9 when
    the split breaks that constraint even at m = 1 (the host raises), the plan at m = 1 then."""
    _check(variant, L, b)
    K = cl.f_hz.shape[0]
    order = jnp.asarray(order, jnp.int32)
    split = jnp.asarray(even_split(L, K), jnp.int32)  # by pipeline position
    delta = jnp.zeros(K, jnp.int32).at[order].set(split)
    last = order[min(L, K) - 1]
    m = _round_m(stationary_m(cl, max(1, b // 2), delta, last, b, variant), b)
    seen = jnp.zeros(max_steps, jnp.int32)

    def cond(st):
        m, seen, n, done = st
        return ~done & ~jnp.any(seen == m) & (n < max_steps)

    def body(st):
        m, seen, n, done = st
        seen = seen.at[n].set(m)
        nxt, _, found = better_integer_neighbour(cl, delta, last, stationary_m(cl, m, delta, last, b, variant),
                                                 L, b, variant)
        stop = ~found | (nxt == m)
        return jnp.where(stop, m, nxt), seen, n + 1, stop

    m, *_ = lax.while_loop(cond, body, (m, seen, jnp.int32(0), jnp.bool_(False)))
    bad_m = plan_violations(cl, m, delta, last, L, b, variant)
    bad_1 = plan_violations(cl, 1, delta, last, L, b, variant)
    m = jnp.where(jnp.any(bad_m), 1, m)
    code = jnp.where(~jnp.any(bad_m) | ~jnp.any(bad_1), cs.FEASIBLE, jnp.where(bad_1[2], cs.C7, cs.C9))
    return _make_plan(cl, m, delta, last, L, b, variant), code.astype(jnp.int32)


def fixed_plan(cl: Cluster, delta, last, m, L: int, b: int, variant: str) -> Plan:
    """A fixed rule's plan (host `frameworks.fixed_plan`): m capped at b; kept even when it
    breaks C7/C9' (ok False, `plan_violations` says which)."""
    _check(variant, L, b)
    return _make_plan(cl, jnp.minimum(jnp.asarray(m, jnp.int32), b), delta, last, L, b, variant)


def _even_split(L: int, K: int, S) -> jax.Array:
    """scenario.even_split with a traced S: L TEBs over the first S of K devices."""
    k = jnp.arange(K)
    base, extra = L // S, L % S
    return jnp.where(k < S, base + (k < extra).astype(jnp.int32), 0).astype(jnp.int32)


def default_rule_plan(cl: Cluster, L: int, b: int, variant: str, stages=None, micro_batches=None) -> Plan:
    """The `default` rule's plan (host `frameworks.default_policy`): uniform δ over the first S
    devices in index order (all K when stages is None), m = 4 unless given."""
    K = cl.f_hz.shape[0]
    S = jnp.minimum(jnp.minimum(jnp.asarray(K if stages is None else stages, jnp.int32), K), L)
    m = DEFAULT_MICRO_BATCHES if micro_batches is None else micro_batches
    return fixed_plan(cl, _even_split(L, K, S), S - 1, m, L, b, variant)


def teb_capacity(cl: Cluster, L: int) -> jax.Array:
    """The most TEBs (at most L) each device's memory holds (C7; host `frameworks.teb_capacity`)."""
    per = jnp.where(cl.gamma0_bytes > 0, cl.gamma_max_bytes / jnp.where(cl.gamma0_bytes > 0, cl.gamma0_bytes, 1.0),
                    jnp.inf)
    return jnp.floor(jnp.minimum(per, L)).astype(jnp.int32)


def vanilla_fl_plan(cl: Cluster, L: int, b: int, variant: str) -> Plan:
    """VanillaFL (host `frameworks.vanilla_fl_policy`): all L TEBs on the fastest device whose
    memory fits them (the fastest of all when none does), m = 1."""
    K = cl.f_hz.shape[0]
    speed = cl.phi * cl.f_hz
    fits = teb_capacity(cl, L) >= L
    k = jnp.argmax(jnp.where(jnp.any(fits), jnp.where(fits, speed, -jnp.inf), speed)).astype(jnp.int32)
    return fixed_plan(cl, jnp.zeros(K, jnp.int32).at[k].set(L), k, 1, L, b, variant)


def proportional_split(L: int, speed, cap) -> jax.Array:
    """δ ∝ speed by largest remainder within the caps (without them when they cannot hold L);
    host `frameworks.proportional_split`."""
    cap = jnp.where(jnp.sum(cap) < L, L, cap)
    share = L * speed / jnp.sum(speed)
    delta = jnp.minimum(jnp.floor(share).astype(jnp.int32), cap)

    def give(_, delta):
        room = delta < cap
        k = jnp.argmax(jnp.where(room, share - delta, -jnp.inf))
        return jnp.where(jnp.sum(delta) < L, delta.at[k].add(1), delta)

    return lax.fori_loop(0, L, give, delta)


def titanic_plan(cl: Cluster, L: int, b: int, variant: str) -> Plan:
    """TITANIC-like (host `frameworks.titanic_policy`): the ⌈K/2⌉ fastest devices, δ ∝ speed
    within memory, m = 4; the last device is the slowest selected one holding TEBs."""
    K = cl.f_hz.shape[0]
    speed = cl.phi * cl.f_hz
    n_sel = min(L, math.ceil(K / 2))
    chosen = jnp.argsort(-speed, stable=True)[:n_sel]
    part = proportional_split(L, speed[chosen], teb_capacity(cl, L)[chosen])
    delta = jnp.zeros(K, jnp.int32).at[chosen].set(part)
    last = chosen[n_sel - 1 - jnp.argmax((part > 0)[::-1])]
    return fixed_plan(cl, delta, last, DEFAULT_MICRO_BATCHES, L, b, variant)
