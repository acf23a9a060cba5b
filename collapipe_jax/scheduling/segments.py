"""Sub-problem 1 (Alg. 2, Eq. 37–39): micro-batches m, segments δ, stage count S and pipeline order
for one cluster, on the host in NumPy (float64).

For a cluster with K devices and m micro-batches (b̂ = b/m), a device k holding δ_k TEBs spends per
micro-batch δ_k c_k on compute and d_k on the D2D link (Eq. 13, 15/33),

    c_k = (b̂ o_l + o'_l)/(ϕ_k f_k),  d_k = (z + g)/r^dd_k               (paper)
    c_k = b̂ (o_l + o'_l)/(ϕ_k f_k),  d_k = b̂ (z + g)/r^dd_k             (consistent)

and the cluster's pipeline latency over the S scheduled devices, ℓ the last in pipeline order, is

    paper       (Eq. 15 as printed)  τ_pipe = (S + m − 1) · max_k (δ_k c_k + d_k) − d_ℓ,
    consistent  (GPipe makespan)     τ_pipe = Σ_k t_k + (m − 1) · max_k t_k,  t_k = δ_k c_k + d_k [k ≠ ℓ].

Both are  Σ_k cost_k(δ_k, role_k) + w_S · max_k bound_k(δ_k, role_k)  with the per-device "bound"
(the chunk time inside the max: paper δc + d for every device, consistent t_k), the "cost"
(paper: −d_ℓ for the last device and 0 otherwise; consistent: t_k) and the bottleneck weight
w_S (paper S + m − 1, consistent m − 1); the solvers below work on that form. The device energy
(Eq. 14/16, energy.py) E_k = 2m (κ f_k² δ_k cycles_k + p_k d_k) (paper, the last device too) or
m (κ f_k² δ_k cycles_k + p_k d_k [k ≠ ℓ]) (consistent) must stay ≤ E_k^max (C9, named C9' here
as in Alg. 2) and the memory δ_k γ_0 ≤ γ_k^max (C7); Σ_k δ_k = L (C1), S ≤ K (C2).

Only the *last* device of the order is special (it sends nothing on, or is the one whose τ^dd
Eq. 15 subtracts), so an order is "which device is last" plus any order of the others; plans
list the others by index.

Exact solvers, for a fixed m; each returns the best plan for every stage count S = 1..K (the
Y·Γ term of the round objective depends on S, so Alg. 4 chooses S from this front). Every one
minimises over the finitely many candidate bottleneck values T ∈ {bound_k(δ, role)}: for a
bound T, the least Σ cost with every bound_k ≤ T, plus w_S T, is an upper bound of a real
plan's τ_pipe, and at T = the optimum's own bottleneck it is the optimum.

* `front_greedy` (paper, the default there): the cost is −d_ℓ alone, so for (T, S, ℓ) the
  plan exists iff ℓ and the S − 1 other devices with the largest caps (most TEBs under T, C7,
  C9') can hold L; τ = w_S T − d_ℓ. O(|T| K²) per m, any K.
* `front_enum` (consistent for K ≤ 7): every (device set, last device) with a greedy fill per T
  (cheapest c_k first: optimal for a cost linear in δ).
* `front_dp` (consistent for larger K): a knapsack-like DP over the devices with state (TEBs
  placed, devices used, last chosen?), vectorised over all candidate T.
* `front_milp`: the paper's integer programme with C2' (Σ_k x_k = S), one MILP per S.
All four handle both variants and are checked against brute force under both.

m (Alg. 2, Eq. 38): with δ and the order fixed, each chunk time is bound_k(m) = α_k/m + β_k, and
with the bottleneck * fixed

    paper       τ(m) = (S + m − 1)(α_*/m + β_*) − d_ℓ   ⇒  m° = sqrt((S − 1) α_*/β_*),
    consistent  τ(m) = (Σ_k α_k − α_*)/m + β_* m + const ⇒  m° = sqrt((Σ_k α_k − α_*)/β_*)

(consistent: every term scales with b̂, so β = 0 and τ falls with m: m° = b). The better of
⌊m°⌋, ⌈m°⌉ (clipped to [1, b], constraints checked) is taken, δ is re-solved for that m, and so
on until m repeats or `max_m_solves` (default 3) δ-solves are spent. Exactness is over (δ, S,
order) for each m solved; `m_rule="exhaustive"` instead solves every m in 1..b (exact over m
as well).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from collapipe_jax.choices import M_RULES, SEGMENT_SOLVERS  # noqa: F401 (re-exported)
from collapipe_jax.errors import InfeasibleError, ValidationError
from collapipe_jax.io import redirect_fd
from collapipe_jax.scenario import even_split

NONLAST, LAST = 0, 1


@dataclasses.dataclass(frozen=True)
class ClusterDevices:
    """One cluster's devices (arrays [K], SI units) and the model sizes; float64 host copy."""

    f_hz: np.ndarray
    phi: np.ndarray  # FLOPs per cycle
    p_k_w: np.ndarray
    r_dd_bps: np.ndarray  # D2D rate of each device (Eq. 13)
    gamma_max_bytes: np.ndarray
    E_max_j: np.ndarray
    L: int
    b: int
    o_fwd: float
    o_bwd: float
    z_bits: float
    g_bits: float
    gamma0_bytes: float
    kappa: float
    variant: str = "paper"
    iterations: float = 1.0  # E: pipeline iterations (local steps) per round; τ_pipe and energy are per round
    # m_terms per m, memoised: Alg. 2 evaluates the same m for many plans (arrays are never mutated)
    _terms: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def K(self) -> int:
        return int(self.f_hz.shape[0])


def d2d_rate(p_k, h_dd, i_dd, b_dd, n0):
    """Eq. 13's rate: r^dd_k = B^dd log2(1 + p_k h^dd / (I^dd + B^dd N0))."""
    return b_dd * np.log2(1.0 + np.asarray(p_k, float) * h_dd / (i_dd + b_dd * n0))


@dataclasses.dataclass(frozen=True)
class MTerms:
    """Per-device terms for one m: c (s per TEB), d (D2D s), cycles per TEB, and per (device, δ,
    role) tables of the chunk time inside the max, the energy and what is allowed."""

    m: int
    c: np.ndarray  # [K] compute seconds per TEB per micro-batch
    d: np.ndarray  # [K] D2D seconds per micro-batch
    cycles: np.ndarray  # [K] CPU cycles per TEB per micro-batch
    stage: np.ndarray  # [K, L+1, 2] bound_k for δ = 0..L and role (non-last, last): the chunk time in the max
    energy: np.ndarray  # [K, L+1, 2] E_k (Eq. 14/16)
    allowed: np.ndarray  # [K, L+1, 2] bool: C7 and C9' hold (δ ≥ 1)
    cost_per_teb: np.ndarray  # [K] cost_k(δ, role) = δ cost_per_teb_k + cost_role[k, role]
    cost_role: np.ndarray  # [K, 2]
    variant: str = "paper"

    def weight(self, S):
        """w_S, the bottleneck's weight: S + m − 1 (paper, Eq. 15) or m − 1 (consistent)."""
        return np.asarray(S) + self.m - 1 if self.variant == "paper" else np.full(np.shape(S), self.m - 1.0)


def m_terms(dev: ClusterDevices, m: int) -> MTerms:
    """Chunk times and energies of every (device, δ, role) at m micro-batches (Eq. 13, 14, 15/33, 16)."""
    if m in dev._terms:
        return dev._terms[m]
    if not (1 <= m <= dev.b):
        raise ValidationError("m", f"must be in [1, b={dev.b}]", m)
    b_hat = dev.b / m
    paper = dev.variant == "paper"
    if paper:
        cycles = (b_hat * dev.o_fwd + dev.o_bwd) / dev.phi
        d = (dev.z_bits + dev.g_bits) / dev.r_dd_bps
    else:
        cycles = b_hat * (dev.o_fwd + dev.o_bwd) / dev.phi
        d = b_hat * (dev.z_bits + dev.g_bits) / dev.r_dd_bps
    c = cycles / dev.f_hz
    deltas = np.arange(dev.L + 1, dtype=float)
    # which roles (non-last, last) are charged their D2D delay: under paper the last device's
    # τ^dd is inside Eq. 15's max and its energy (Eq. 14/16) as well; under consistent it sends nothing
    sends = np.array([1.0, 1.0]) if paper else np.array([1.0, 0.0])
    stage = deltas[None, :, None] * c[:, None, None] + d[:, None, None] * sends[None, None, :]
    factor = (2 * m if paper else m) * dev.iterations  # Eq. 16 as printed has 2m; consistent: m micro-batches
    energy = factor * (dev.kappa * dev.f_hz[:, None, None] ** 2 * (deltas[None, :, None] * cycles[:, None, None])
                       + (dev.p_k_w * d)[:, None, None] * sends[None, None, :])
    mem_ok = deltas[None, :] * dev.gamma0_bytes <= dev.gamma_max_bytes[:, None]
    allowed = (mem_ok[:, :, None] & (energy <= dev.E_max_j[:, None, None])) & (deltas[None, :, None] >= 1)
    if paper:  # Σ cost = −d_ℓ
        cost_per_teb, cost_role = np.zeros(dev.K), np.stack([np.zeros(dev.K), -d], axis=1)
    else:  # Σ cost = Σ t_k
        cost_per_teb, cost_role = c, np.stack([d, np.zeros(dev.K)], axis=1)
    for array in (c, d, cycles, stage, energy, allowed, cost_per_teb, cost_role):
        array.setflags(write=False)
    dev._terms[m] = MTerms(m=m, c=c, d=d, cycles=cycles, stage=stage, energy=energy, allowed=allowed,
                           cost_per_teb=cost_per_teb, cost_role=cost_role, variant=dev.variant)
    return dev._terms[m]


@dataclasses.dataclass(frozen=True)
class SegmentPlan:
    """δ per device, pipeline order (scheduled devices, last one last), m and its τ_pipe."""

    delta: tuple[int, ...]
    order: tuple[int, ...]
    m: int
    tau_pipe_s: float

    @property
    def S(self) -> int:
        return len(self.order)


def _roles(order) -> list[int]:
    return [LAST if pos == len(order) - 1 else NONLAST for pos in range(len(order))]


def stage_times(dev: ClusterDevices, m: int, delta, order) -> np.ndarray:
    """Per-device chunk time inside Eq. 15's max (0 for unscheduled devices): δ_k c_k + d_k for
    every scheduled device (paper), t_k without d for the last one (consistent)."""
    terms = m_terms(dev, m)
    delta = np.asarray(delta, int)
    t = np.zeros(dev.K)
    for k, role in zip(order, _roles(order)):
        t[k] = terms.stage[k, delta[k], role]
    return t


def pipeline_latency(dev: ClusterDevices, m: int, delta, order) -> float:
    """τ_pipe of a round: E × ((S + m − 1) max_k t_k − d_ℓ) (paper, Eq. 15) or E × (Σ_k t_k +
    (m − 1) max_k t_k) (consistent), written as E (Σ_k cost_k + w_S max_k t_k); E = dev.iterations
    pipeline iterations (local steps) per round."""
    terms = m_terms(dev, m)
    delta = np.asarray(delta, int)
    t = stage_times(dev, m, delta, order)
    cost = sum(delta[k] * terms.cost_per_teb[k] + terms.cost_role[k, role] for k, role in zip(order, _roles(order)))
    return float(dev.iterations * (cost + terms.weight(len(order)) * t.max()))


def plan_violations(dev: ClusterDevices, m: int, delta, order) -> list[str]:
    """Names of the constraints (C1, C2, C7, C9') a plan breaks; [] when it is feasible."""
    terms = m_terms(dev, m)
    delta = np.asarray(delta, int)
    out = []
    if delta.sum() != dev.L or np.any(delta < 0):
        out.append("C1")
    if sorted(order) != [k for k in range(dev.K) if delta[k] > 0] or len(order) > dev.K:
        out.append("C2")
    for k, role in zip(order, _roles(order)):
        if delta[k] * dev.gamma0_bytes > dev.gamma_max_bytes[k]:
            out.append("C7")
        if terms.energy[k, delta[k], role] > dev.E_max_j[k]:
            out.append("C9'")
    return sorted(set(out))


# --------------------------------------------------------------------------- exact solvers


ENUM_MAX_K = 7  # up to this K the subset enumeration is faster than the DP
EXACT_METHODS = ("auto", "greedy", "enum", "dp")


def front_exact(dev: ClusterDevices, m: int, method: str = "auto") -> list[SegmentPlan | None]:
    """Exact min-τ_pipe plan for every S = 1..K at fixed m (`method` = "auto" | "greedy" | "enum" |
    "dp"; all exact). "auto": the greedy under paper, else the enumeration for K ≤ 7, else the DP."""
    if method not in EXACT_METHODS:
        raise ValidationError("method", f"must be one of {list(EXACT_METHODS)}", method)
    if method == "greedy" or (method == "auto" and dev.variant == "paper"):
        return front_greedy(dev, m)
    if method == "enum" or (method == "auto" and dev.K <= ENUM_MAX_K):
        return front_enum(dev, m)
    return front_dp(dev, m)


def _subsets(K: int):
    """Every (scheduled set, last device) pair: member [C, K], is_last [C, K], size [C]."""
    key = K
    if key not in _SUBSET_CACHE:
        member, last = [], []
        for mask in range(1, 1 << K):
            bits = [(mask >> k) & 1 for k in range(K)]
            for k in range(K):
                if bits[k]:
                    member.append(bits)
                    last.append([int(i == k) for i in range(K)])
        member = np.asarray(member, bool)
        _SUBSET_CACHE[key] = (member, np.asarray(last, bool), member.sum(axis=1))
    return _SUBSET_CACHE[key]


_SUBSET_CACHE: dict[int, tuple] = {}


def _stage_bounds(dev: ClusterDevices, m: int):
    """(terms, chunk times with disallowed entries at inf, sorted distinct feasible chunk times):
    the candidate bottleneck values T shared by the exact solvers."""
    terms = m_terms(dev, m)
    stage = np.where(terms.allowed, terms.stage, np.inf)
    return terms, stage, np.unique(stage[np.isfinite(stage)])


def _caps_under(stage, T) -> np.ndarray:
    """U[T, k, role]: the most TEBs device k may hold in that role with its chunk time ≤ T (the
    allowed δ are a prefix: memory and energy grow with δ, and so does the chunk time)."""
    return np.sum(stage[None, :, 1:, :] <= T[:, None, None, None], axis=2)


def _bottleneck_limit(terms: MTerms, upper, S) -> float:
    """The largest bottleneck an optimum for any stage count in S can have, from upper bounds
    UB_S of the optima: consistent OPT_S = Σ t + (m − 1) T* ≥ m T* (Σ t holds the bottleneck
    itself); paper OPT_S = (S + m − 1) T* − d_ℓ ≥ (S + m − 1) T* − max_k d_k."""
    upper, S = np.asarray(upper, float), np.asarray(S)
    finite = np.isfinite(upper)
    if terms.variant == "paper":
        limit = (upper[finite] + terms.d.max()) / terms.weight(S[finite])
    else:
        limit = upper[finite] / terms.m
    return float(limit.max())


def _plan(dev: ClusterDevices, m: int, delta, last: int) -> SegmentPlan:
    """A plan from δ and the last device; the others run in index order."""
    delta = [int(v) for v in delta]
    order = tuple([k for k in range(dev.K) if delta[k] > 0 and k != last] + [last])
    return SegmentPlan(tuple(delta), order, m, pipeline_latency(dev, m, delta, order))


def front_greedy(dev: ClusterDevices, m: int) -> list[SegmentPlan | None]:
    """Exact front under ``paper`` (Eq. 15 as printed): τ = (S + m − 1) T − d_ℓ.

    For a bound T every device has a cap U_k (most TEBs with δ c_k + d_k ≤ T, C7 and C9'), and a
    set A with last device ℓ can hold the L TEBs iff every cap is ≥ 1 and Σ_A U_k ≥ L; the
    objective depends on A only through S and ℓ, so for (T, S, ℓ) the best A is ℓ plus the
    S − 1 other devices with the largest caps. Minimising (S + m − 1) T − d_ℓ over the
    candidate T and ℓ is exact (module docstring); O(|T| K²).
    """
    if dev.variant != "paper":
        raise ValidationError("method", "greedy is exact for the paper variant only", dev.variant)
    terms, stage, T = _stage_bounds(dev, m)
    K, L = dev.K, dev.L
    if T.size == 0:
        return [None] * K
    U = _caps_under(stage, T)
    cap, cap_last = U[:, :, NONLAST], U[:, :, LAST]  # [nT, K]
    by_cap = np.argsort(-cap, axis=1, kind="stable")  # devices by decreasing cap, per T
    top = np.concatenate([np.zeros((T.size, 1), int), np.cumsum(np.take_along_axis(cap, by_cap, 1), axis=1)], 1)
    rank = np.argsort(by_cap, axis=1)  # each device's position in by_cap
    others_usable = np.sum(cap >= 1, axis=1)[:, None] - (cap >= 1)  # [nT, K]: devices ≠ ℓ with cap ≥ 1
    plans: list[SegmentPlan | None] = []
    for s in range(1, K + 1):
        # Σ of the S − 1 largest caps among the devices other than ℓ
        others = np.where(rank < s - 1, top[:, s, None] - cap, top[:, s - 1, None])
        ok = (cap_last >= 1) & (others_usable >= s - 1) & (others + cap_last >= L) & (s <= L)
        value = np.where(ok, terms.weight(s) * T[:, None] + terms.cost_role[None, :, LAST], np.inf)
        i, last = divmod(int(np.argmin(value)), K)  # the smallest T first among ties
        if not np.isfinite(value[i, last]):
            plans.append(None)
            continue
        members = [last] + [int(k) for k in by_cap[i] if k != last][: s - 1]
        delta = np.zeros(K, int)
        delta[members] = 1
        rest = L - s
        for k in members:  # any fill within the caps is optimal: top up in this order
            add = min(rest, (cap_last if k == last else cap)[i, k] - 1)
            delta[k] += add
            rest -= add
        plans.append(_plan(dev, m, delta, last))
    return plans


def front_enum(dev: ClusterDevices, m: int) -> list[SegmentPlan | None]:
    """Exact front by enumerating every (device set, last device) and every bound T.

    For a fixed set A, last device ℓ and bound T, device k may hold 1..U_k TEBs (U_k from C7,
    C9' and its chunk time ≤ T); the least Σ cost gives every device one TEB and the remaining
    L − |A| to the smallest per-TEB cost first (a greedy fill with integer caps is optimal for a
    cost linear in δ; under paper the cost does not depend on δ at all). Minimising
    Σ cost + w_S T over the candidate T is exact (module docstring).
    """
    terms, stage, T = _stage_bounds(dev, m)
    K, L = dev.K, dev.L
    if T.size == 0:
        return [None] * K
    member, is_last, size = _subsets(K)
    order = np.argsort(terms.cost_per_teb, kind="stable")  # fill the cheapest TEB slots first
    member, is_last = member[:, order], is_last[:, order]
    stage = stage[order]
    a, e = terms.cost_per_teb[order], terms.cost_role[order]

    def evaluate(T, member, is_last, size):
        U = _caps_under(stage, T).astype(np.int16)
        cap = np.where(is_last[None], U[:, None, :, LAST], U[:, None, :, NONLAST])  # [nT, C, K]
        cap = np.where(member[None], cap, np.int16(0))
        ok = np.all(~member[None] | (cap >= 1), axis=2)
        room = np.where(member[None], cap - np.int16(1), np.int16(0))
        rest = (L - size).astype(np.int16)[None, :]  # TEBs beyond one per device
        before = np.cumsum(room, axis=2, dtype=np.int16) - room
        extra = np.clip(rest[..., None] - before, 0, room)
        ok &= (rest >= 0) & (room.sum(axis=2) >= rest)
        delta = np.where(member[None], 1 + extra, 0)  # [nT, C, K]
        cost = delta @ a + (member & ~is_last) @ e[:, NONLAST] + is_last @ e[:, LAST]  # [nT, C]
        return np.where(ok, cost + terms.weight(size)[None, :] * T[:, None], np.inf), delta

    # pruning (exact): every S's optimum has its bottleneck under `_bottleneck_limit` of the
    # upper bounds UB_S from the largest bound, where every allowed (device, δ, role) is usable
    T_top = T[-1]
    top, _ = evaluate(T[-1:], member, is_last, size)
    top = top[0]
    upper = np.array([top[size == s_].min() for s_ in range(1, K + 1)])
    if not np.isfinite(upper).any():
        return [None] * K
    T = T[T <= _bottleneck_limit(terms, upper, np.arange(1, K + 1)) * (1 + 1e-12)]
    T = T[_holding_bounds(stage, T, L):]
    if T.size == 0:  # pragma: no cover - the optimum's own bottleneck is always left
        return [None] * K
    # drop sets that cannot beat UB_S at any bound
    if terms.variant == "paper":
        # the bottleneck is at least each member's one-TEB chunk time
        one = np.where(is_last, stage[None, :, 1, LAST], np.where(member, stage[None, :, 1, NONLAST], 0.0))
        lower = terms.weight(size) * one.max(axis=1) + is_last @ e[:, LAST]
    else:
        # a set's Σ t can only grow as T shrinks, and its bottleneck is at least the mean stage
        lower = (top - (m - 1) * T_top) * (1 + (m - 1) / size)
    keep = np.isfinite(top) & (lower <= upper[size - 1] + 1e-9 * np.abs(upper[size - 1]))
    member, is_last, size = member[keep], is_last[keep], size[keep]
    total, delta = evaluate(T, member, is_last, size)
    plans: list[SegmentPlan | None] = []
    inverse = np.argsort(order)
    for s in range(1, K + 1):
        cols = np.nonzero(size == s)[0]
        if cols.size == 0:
            plans.append(None)
            continue
        sub = total[:, cols]
        flat = int(np.argmin(sub))
        i, j = divmod(flat, cols.size)
        if not np.isfinite(sub[i, j]):
            plans.append(None)
            continue
        col = cols[j]
        plans.append(_plan(dev, m, delta[i, col][inverse], int(order[np.argmax(is_last[col])])))
    return plans


def _holding_bounds(stage, T, L) -> int:
    """Index of the first bound T under which the devices can hold L TEBs at all (every device
    with room, the roomiest one as last stage): no plan has its bottleneck below it."""
    U = _caps_under(stage, T)  # [nT, K, 2]
    room = U[:, :, LAST] - U[:, :, NONLAST] + U[:, :, NONLAST].sum(axis=1, keepdims=True)
    holds = np.any((U[:, :, LAST] >= 1) & (room >= L), axis=1)
    return int(np.argmax(holds)) if holds.any() else T.size


def _cost_table(terms: MTerms, L: int) -> np.ndarray:
    """cost_k(δ, role) = δ cost_per_teb_k + cost_role[k, role]: [K, L+1, 2]."""
    deltas = np.arange(L + 1, dtype=float)
    return deltas[None, :, None] * terms.cost_per_teb[:, None, None] + terms.cost_role[:, None, :]


def front_dp(dev: ClusterDevices, m: int) -> list[SegmentPlan | None]:
    """Exact min-τ_pipe plan for every stage count S = 1..K at fixed m (None: no feasible plan).

    Pruning (keeps exactness): only bounds T ≤ `_bottleneck_limit` of the upper bounds UB_S
    matter, UB_S from a first pass on a coarse subset of the candidate bounds (which includes
    the largest one, so no feasible S is missed).
    """
    terms, stage, candidates = _stage_bounds(dev, m)
    K, L = dev.K, dev.L
    if candidates.size == 0:
        return [None] * K
    cost = _cost_table(terms, L)
    weight = terms.weight(np.arange(K + 1))
    # S = 1 directly: one device holds all L TEBs and is the last stage
    single = np.where(terms.allowed[:, L, LAST], cost[:, L, LAST] + weight[1] * terms.stage[:, L, LAST], np.inf)
    plans: list[SegmentPlan | None] = [None]
    if np.isfinite(single).any():
        k = int(np.argmin(single))
        delta = [0] * K
        delta[k] = L
        plans[0] = _plan(dev, m, delta, k)
    if K == 1:
        return plans
    candidates = candidates[_holding_bounds(stage, candidates, L):]
    if candidates.size == 0:
        return plans + [None] * (K - 1)
    coarse = candidates[np.unique(np.linspace(0, candidates.size - 1, min(12, candidates.size)).round().astype(int))]
    total, _, _ = _segment_dp(stage, cost, coarse, K, L, weight)
    upper = np.min(total, axis=0)[2:]  # UB_S for S = 2..K
    if not np.isfinite(upper).any():
        return plans + [None] * (K - 1)
    T = candidates[candidates <= _bottleneck_limit(terms, upper, np.arange(2, K + 1)) * (1 + 1e-12)]
    total, tables, final = _segment_dp(stage, cost, T, K, L, weight)
    for s in range(2, K + 1):
        i = int(np.argmin(total[:, s]))
        if not np.isfinite(total[i, s]):
            plans.append(None)
            continue
        delta, last = _backtrack(tables, final, stage, cost, T[i], i, L, s)
        plans.append(_plan(dev, m, delta, last))
    return plans


def _segment_dp(stage, cost, T, K, L, weight):
    """DP over devices, vectorised over the bounds T and δ: value[T, l, s, last chosen] = least
    Σ cost_k placing l TEBs on s devices with every chunk time ≤ T. Returns (Σ + w_S T per S,
    tables, final table)."""
    nT = T.size
    best = np.full((nT, L + 1, K + 1, 2), np.inf)
    best[:, 0, 0, 0] = 0.0
    usable = np.isfinite(stage[:, 1:, :]).any(axis=(0, 2))
    D = int(np.nonzero(usable)[0].max()) + 1 if usable.any() else 1  # largest δ any device may hold
    # source index l − δ for target l and δ = 1..D; L + 1 points at an all-inf pad row
    l_idx = np.arange(L + 1)[:, None] - np.arange(1, D + 1)[None, :]
    l_idx = np.where(l_idx >= 0, l_idx, L + 1)
    pad = np.full((nT, 1, K + 1, 2), np.inf)
    tables = []
    for k in range(K):
        # the bound T caps every chunk time: [nT, D, 2] additions for δ = 1..D
        add = np.where(stage[None, k, 1:D + 1, :] <= T[:, None, None], cost[None, k, 1:D + 1, :], np.inf)
        src = np.concatenate([best, pad], axis=1)[:, l_idx]  # [nT, L+1, D, K+1, 2]
        new = best.copy()
        nonlast = np.min(src + add[:, None, :, None, None, NONLAST], axis=2)  # [nT, L+1, K+1, 2]
        last = np.min(src[..., 0] + add[:, None, :, None, LAST], axis=2)  # [nT, L+1, K+1]
        np.minimum(new[:, :, 1:, :], nonlast[:, :, :K, :], out=new[:, :, 1:, :])
        np.minimum(new[:, :, 1:, 1], last[:, :, :K], out=new[:, :, 1:, 1])
        tables.append(best)
        best = new
    total = best[:, L, :, 1] + weight[None, :] * T[:, None]  # [nT, K+1]
    return total, tables, best


def _backtrack(tables, final, stage, cost, T, i, L, s):
    """Recover δ and the last device from the DP tables of one bound index i."""
    K = len(tables)
    delta = [0] * K
    last = -1
    l, used, flag = L, s, 1
    value = final[i, l, used, flag]
    for k in range(K - 1, -1, -1):
        prev = tables[k]
        if prev[i, l, used, flag] == value:
            continue  # device k skipped
        found = False
        for d in range(1, l + 1):
            if used == 0:
                break
            if stage[k, d, NONLAST] <= T and prev[i, l - d, used - 1, flag] + cost[k, d, NONLAST] == value:
                delta[k], l, used, value, found = d, l - d, used - 1, prev[i, l - d, used - 1, flag], True
                break
            if flag == 1 and stage[k, d, LAST] <= T and prev[i, l - d, used - 1, 0] + cost[k, d, LAST] == value:
                delta[k], last = d, k
                l, used, flag, value, found = l - d, used - 1, 0, prev[i, l - d, used - 1, 0], True
                break
        if not found:  # pragma: no cover - the DP values are exact sums, so this cannot happen
            raise RuntimeError("segment DP backtrack failed")
    return delta, last


# --------------------------------------------------------------------------- MILP (paper path)

_MILP_CACHE: dict[tuple[int, int, str], tuple] = {}


def _milp_problem(K: int, L: int, variant: str):
    """cvxpy MILP for fixed (m, S), built once per (K, L, variant) with Parameters (DPP).

    S is fixed per solve, so both objectives are linear: paper (S + m − 1) t_max − Σ_k d_k y_k
    (Eq. 15, t_max over every scheduled device's δ c + d), consistent Σ_k t_k + (m − 1) t_max.
    """
    import cvxpy as cp

    key = (K, L, variant)
    if key in _MILP_CACHE:
        return _MILP_CACHE[key]
    delta = cp.Variable(K, integer=True)
    x = cp.Variable(K, boolean=True)  # device scheduled (δ_k > 0)
    y = cp.Variable(K, boolean=True)  # device is last in pipeline order
    tmax = cp.Variable()
    c = cp.Parameter(K, nonneg=True)
    d = cp.Parameter(K, nonneg=True)
    cap_nl = cp.Parameter(K, nonneg=True)  # largest δ allowed by C7 and C9' as a non-last stage
    cap_l = cp.Parameter(K, nonneg=True)  # ... as the last stage
    weight = cp.Parameter(nonneg=True)  # w_S: S + m − 1 (paper) or m − 1 (consistent)
    S = cp.Parameter(nonneg=True)
    if variant == "paper":
        stage = cp.multiply(c, delta) + cp.multiply(d, x)  # the last device's τ^dd is inside the max
        cost = -(d @ y)
    else:
        stage = cp.multiply(c, delta) + cp.multiply(d, x - y)
        cost = cp.sum(stage)
    constraints = [
        cp.sum(delta) == L,  # C1
        delta >= x,
        delta <= cp.multiply(cap_nl, x - y) + cp.multiply(cap_l, y),  # C7, C9' (and δ = 0 off)
        y <= x,
        cp.sum(y) == 1,
        cp.sum(x) == S,  # C2': the number of scheduled devices
        tmax >= stage,
    ]
    problem = cp.Problem(cp.Minimize(cost + weight * tmax), constraints)
    params = dict(c=c, d=d, cap_nl=cap_nl, cap_l=cap_l, weight=weight, S=S)
    _MILP_CACHE[key] = (problem, params, delta, y)
    return _MILP_CACHE[key]


def role_caps(terms: MTerms, role: int) -> np.ndarray:
    """Largest δ with (device, δ, role) allowed (feasibility is monotone in δ); 0 if none."""
    allowed = terms.allowed[:, :, role]
    # first δ ≥ 1 that is not allowed, minus one
    blocked = ~allowed[:, 1:]
    first_blocked = np.where(blocked.any(axis=1), blocked.argmax(axis=1), allowed.shape[1] - 1)
    return first_blocked.astype(float)


def front_milp(dev: ClusterDevices, m: int) -> list[SegmentPlan | None]:
    """The paper's integer programme (C2' as Σ x_k = S), one MILP per S, HiGHS through cvxpy."""
    import cvxpy as cp

    terms = m_terms(dev, m)
    problem, params, delta, y = _milp_problem(dev.K, dev.L, dev.variant)
    params["c"].value = terms.c
    params["d"].value = terms.d
    params["cap_nl"].value = role_caps(terms, NONLAST)
    params["cap_l"].value = role_caps(terms, LAST)
    plans: list[SegmentPlan | None] = []
    for s in range(1, dev.K + 1):
        params["S"].value = float(s)
        params["weight"].value = float(terms.weight(s))
        with redirect_fd(1):  # HiGHS prints its banner on fd 1 whatever its options say: stdout is the result's
            # no MIP gap: HiGHS's default (1e-4 relative, 1e-6 absolute) accepted a plan 3.5e-5 above the
            # optimum (tests/test_segments.py, seed 5227, K = 4, L = 3, m = 4)
            problem.solve(solver=cp.HIGHS, mip_rel_gap=0.0, mip_abs_gap=0.0)
        if problem.status not in ("optimal", "optimal_inaccurate"):
            plans.append(None)
            continue
        plans.append(_plan(dev, m, np.rint(delta.value).astype(int), int(np.argmax(y.value))))
    return plans


# --------------------------------------------------------------------------- m (Eq. 38)


def stationary_m(dev: ClusterDevices, plan: SegmentPlan) -> float:
    """Stationary point of τ_pipe(m) (Eq. 38) for the plan's δ, order and bottleneck chunk.

    Each chunk time is α_k/m + β_k; with the bottleneck * at the plan's m fixed,
    paper (Eq. 15/38): τ(m) = (S + m − 1)(α_*/m + β_*) − d_ℓ  ⇒  m° = sqrt((S − 1) α_*/β_*);
    consistent: τ(m) = (Σα − α_*)/m + β_* m + const  ⇒  m° = sqrt((Σα − α_*)/β_*).
    b when β_* = 0 (τ falls with m: always so under consistent, where everything scales with b̂).
    """
    delta = np.asarray(plan.delta, float)
    sends = np.zeros(dev.K)
    sends[list(plan.order if dev.variant == "paper" else plan.order[:-1])] = 1.0
    pf = dev.phi * dev.f_hz
    if dev.variant == "consistent":
        alpha = delta * dev.b * (dev.o_fwd + dev.o_bwd) / pf + sends * dev.b * (dev.z_bits + dev.g_bits) / dev.r_dd_bps
        beta = np.zeros(dev.K)
    else:
        alpha = delta * dev.b * dev.o_fwd / pf
        beta = delta * dev.o_bwd / pf + sends * (dev.z_bits + dev.g_bits) / dev.r_dd_bps
    scheduled = delta > 0
    t = np.where(scheduled, alpha / plan.m + beta, -np.inf)
    star = int(np.argmax(t))
    if dev.variant == "paper":
        numerator = (plan.S - 1) * float(alpha[star])
    else:
        numerator = float(alpha[scheduled].sum() - alpha[star])
    if beta[star] <= 0:
        return float(dev.b)
    return math.sqrt(max(numerator, 0.0) / beta[star])


def better_integer_neighbour(dev: ClusterDevices, plan: SegmentPlan, m_real: float) -> int | None:
    """⌊m°⌋ or ⌈m°⌉ in [1, b], whichever gives the smaller τ_pipe with the plan's δ and order
    while C9' still holds at that m; None if neither does."""
    lo = min(max(int(math.floor(m_real)), 1), dev.b)
    hi = min(max(int(math.ceil(m_real)), 1), dev.b)
    best, best_tau = None, math.inf
    for m in sorted({lo, hi}):
        if plan_violations(dev, m, plan.delta, plan.order):
            continue
        tau = pipeline_latency(dev, m, plan.delta, plan.order)
        if tau < best_tau:
            best, best_tau = m, tau
    return best


@dataclasses.dataclass(frozen=True)
class SegmentFront:
    """Best plan per stage count S = 1..K (None where infeasible) and the m values solved."""

    plans: tuple[SegmentPlan | None, ...]
    m_explored: tuple[int, ...]

    def feasible(self) -> list[int]:
        return [i for i, p in enumerate(self.plans) if p is not None]


def _merge(best: list, plans: list) -> None:
    for i, p in enumerate(plans):
        if p is not None and (best[i] is None or p.tau_pipe_s < best[i].tau_pipe_s):
            best[i] = p


def solve_segments(dev: ClusterDevices, m_rule: str = "stationary", solver: str = "exact",
                   max_m_solves: int = 3, cluster: int | None = None) -> SegmentFront:
    """Alg. 2 for one cluster: the best (m, δ, order) per stage count S.

    Raises InfeasibleError naming C7 (memory cannot hold the L TEBs) or C9' (no allocation
    meets the device energy budgets even with m = 1, which needs the least energy).
    """
    if solver not in SEGMENT_SOLVERS:
        raise ValidationError("solver", f"must be one of {list(SEGMENT_SOLVERS)}", solver)
    if m_rule not in M_RULES:
        raise ValidationError("m_rule", f"must be one of {list(M_RULES)}", m_rule)
    check_capacity(dev, cluster)
    solve = front_exact if solver == "exact" else front_milp
    best: list[SegmentPlan | None] = [None] * dev.K
    solved: list[int] = []
    if m_rule == "exhaustive":
        for m in range(1, dev.b + 1):
            _merge(best, solve(dev, m))
            solved.append(m)
    else:
        queue = [initial_m(dev)]
        while queue and len(solved) < max_m_solves:
            m = queue.pop(0)
            if m in solved:
                continue
            plans = solve(dev, m)
            solved.append(m)
            _merge(best, plans)
            proposals = []
            for p in plans:
                if p is None:
                    continue
                nxt = better_integer_neighbour(dev, p, stationary_m(dev, p))
                if nxt is None or nxt == p.m:
                    continue
                # m-step for this δ (free), then queue a δ-step at the new m
                moved = SegmentPlan(p.delta, p.order, nxt, pipeline_latency(dev, nxt, p.delta, p.order))
                _merge(best, [moved if q is p else None for q in plans])
                proposals.append((moved.tau_pipe_s, nxt))
            for _, nxt in sorted(proposals):  # the most promising stage counts first
                if nxt not in solved and nxt not in queue:
                    queue.append(nxt)
        if all(p is None for p in best) and 1 not in solved:
            _merge(best, solve(dev, 1))  # m = 1 needs the least device energy
            solved.append(1)
    if all(p is None for p in best):
        raise InfeasibleError({
            "constraint": "C9'", "cluster": cluster,
            "message": f"cluster {cluster}: no allocation of L={dev.L} TEBs meets the device energy "
                       f"budgets E_max_k (C9') together with memory (C7), for any micro-batch count tried",
        })
    return SegmentFront(tuple(best), tuple(solved))


def initial_m(dev: ClusterDevices) -> int:
    """Stationary m of the uniform split over all K devices (index order), as Alg. 2's start."""
    delta = tuple(even_split(dev.L, dev.K))
    order = tuple(k for k in range(dev.K) if delta[k] > 0)
    m0 = max(1, dev.b // 2)
    plan = SegmentPlan(delta, order, m0, 0.0)
    m_real = stationary_m(dev, plan)
    return min(max(int(round(m_real)), 1), dev.b)


def check_capacity(dev: ClusterDevices, cluster) -> None:
    """C7 alone: the devices' memory must be able to hold the L TEBs."""
    deltas = np.arange(dev.L + 1)
    fits = deltas[None, :] * dev.gamma0_bytes <= dev.gamma_max_bytes[:, None]  # the C7 test itself
    capacity = int((fits.sum(axis=1) - 1).sum())
    if capacity < dev.L:
        raise InfeasibleError({
            "constraint": "C7", "cluster": cluster,
            "message": f"cluster {cluster}: the devices' memory holds at most {capacity} of L={dev.L} TEBs "
                       f"(gamma0={dev.gamma0_bytes:.4g} B per TEB) (C7)",
        })
