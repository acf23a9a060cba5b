"""The paper's baselines (§VI) and the ablations of DSSRA, on the host.

Every policy has the registry's signature (`scheduling.policies`):
`(problem, Y, rng, losses=None, **options) -> RoundResult`; `.decision` is the `Decision` pytree
the system model and the trainer take. Every decision satisfies C1–C11' (checked in
`dssra.build_result`); an instance where none exists raises InfeasibleError.

The paper's baselines are rules for *which J CUs the BS selects* (§VI, "Random / Loss-only /
Delay-only Driven Scheduling"); when N ≤ J every CU is selected and only the rest of the
decision differs. The rest is the default plan (`default_plan`, `default_uploads`):

  δ      uniform over the K devices (`even_split`), in device-index order (``random``: in a
         random order of the devices, drawn per cluster and round)
  m      Eq. 38's stationary point for that split (Alg. 2's rule, iterated to a fixed point;
         m = 1 when C9' fails at the stationary m)
  I      the selected CUs take channels 0, 1, … in cluster-index order (``random``: a random
         matching), or the nearest feasible matching when C11' rules a pair out
  p_n    P_n^max, capped by C11' (`resources.power_upper_bounds`, as DSSRA's)

* ``random``     — J CUs drawn at random.
* ``loss-only``  — the J CUs with the highest local training loss (the losses of the previous
                   round, which `collapipe train` passes). Without losses (a scheduling-only
                   run, or round 0) the queue Y_n(t) stands for the loss: it accumulates how far
                   cluster n's convergence bound Γ_n (Eq. 28) exceeded Γ^max (Eq. 29), the
                   model's own measure of a cluster falling behind; ties go to the lower index.
* ``delay-only`` — the J CUs with the lowest reported local training delay: τ^pipe of each
                   cluster's default plan in this round's draw.

Ablations (named by what they change in DSSRA; stronger than the paper's baselines):

* ``dssra-no-queue``      — Alg. 4 with the queue terms off: minimises τ(t) alone.
* ``dssra-loss-weighted`` — Alg. 4 minimising Σ_n w_n Γ_n, w_n = the previous round's losses
                            (w_n = 1 without losses); latency only breaks ties (V = 1e-9).
* ``random-feasible``     — a uniformly drawn feasible m, device set, order, split of the L
                            TEBs, channel matching and p_n ∈ (0, p_ub].
* ``uniform``             — CollaPipe without segment scheduling ("w/o SS", Fig. 8): the default
                            plan's δ and m, channels and power by DSSRA's Sub-2.
"""

from __future__ import annotations

import time

import numpy as np

from collapipe_jax.errors import InfeasibleError, ValidationError
from collapipe_jax.scenario import even_split
from collapipe_jax.scheduling import dssra as ds
from collapipe_jax.scheduling import resources as rs
from collapipe_jax.scheduling import segments as sg

LOSS_ONLY_V = 1e-9  # latency only breaks ties between equally good Γ


# --------------------------------------------------------------------------- the default plan


def default_plan(dev: sg.ClusterDevices, cluster: int, order=None, max_steps: int = 8) -> sg.SegmentPlan:
    """Even split of the L TEBs along `order` (default: device-index order; the first devices of
    the order take the remainder), m by Eq. 38's stationary rule iterated to a fixed point.

    m = 1 (the least device energy) when the stationary m breaks C9'; InfeasibleError naming
    the constraint when the split breaks C7 or C9' even then."""
    order = list(range(dev.K)) if order is None else [int(k) for k in order]
    split = even_split(dev.L, dev.K)  # by pipeline position
    delta = [0] * dev.K
    for pos, k in enumerate(order):
        delta[k] = split[pos]
    delta = tuple(delta)
    order = tuple(k for k in order if delta[k] > 0)
    m = _stationary_start(dev, delta, order)
    seen = set()
    while m not in seen and len(seen) < max_steps:
        seen.add(m)
        plan = sg.SegmentPlan(delta, order, m, sg.pipeline_latency(dev, m, delta, order))
        nxt = sg.better_integer_neighbour(dev, plan, sg.stationary_m(dev, plan))
        if nxt is None or nxt == m:
            break
        m = nxt
    bad = []
    for candidate in (m, 1):
        bad = sg.plan_violations(dev, candidate, delta, order)
        if not bad:
            return sg.SegmentPlan(delta, order, candidate, sg.pipeline_latency(dev, candidate, delta, order))
    raise InfeasibleError({
        "constraint": bad[0], "cluster": cluster,
        "message": f"cluster {cluster}: the uniform split {list(delta)} violates {', '.join(bad)} even at m = 1",
    })


def _stationary_start(dev: sg.ClusterDevices, delta, order) -> int:
    """Eq. 38's m with the bottleneck taken at m = b/2 (as Alg. 2's start, `segments.initial_m`)."""
    plan = sg.SegmentPlan(delta, order, max(1, dev.b // 2), 0.0)
    return min(max(int(round(sg.stationary_m(dev, plan))), 1), dev.b)


def default_uploads(problem: ds.RoundProblem, selected, preference: np.ndarray | None = None):
    """Channels and powers of the selected CUs under the default plan: the selected clusters (in
    the order given) take channels 0, 1, …, unless `preference[n, j]` (lower first) orders the
    pairs otherwise; pairs where no power meets C11' are never used; p_n = min(P_max, p_ub).
    Returns (channel [N], −1 = none; p_n [N])."""
    up = problem.uplink
    N, J = problem.N, up.J
    selected = [int(n) for n in selected]
    p_ub = rs.power_upper_bounds(up)
    if preference is None:
        preference = np.ones((N, J))
        for i, n in enumerate(selected):
            if i < J:
                preference[n, i] = 0.0
    chosen = np.zeros(N, bool)
    chosen[selected] = True
    cost = np.where(chosen[:, None] & ~np.isnan(p_ub), preference, np.inf)
    # exactly min(N, J) clusters take a real channel: with |selected| = min(N, J) those are the selected
    matched = rs.match_channels(cost, np.where(chosen, np.inf, 0.0))
    if matched is None:
        raise rs.infeasible_c11(up, p_ub)
    channel, _ = matched
    p = np.array([p_ub[n, c] if c >= 0 else 0.0 for n, c in enumerate(channel)])
    return channel, p


def _selected_count(problem: ds.RoundProblem) -> int:
    return min(problem.N, problem.uplink.J)


def _by_rank(score, count: int) -> list[int]:
    """The `count` clusters with the highest score, ties to the lower index."""
    return [int(n) for n in np.lexsort((np.arange(len(score)), -np.asarray(score, float)))[:count]]


# --------------------------------------------------------------------------- the paper's baselines


def random_policy(problem: ds.RoundProblem, Y, rng: np.random.Generator, losses=None, **options) -> ds.RoundResult:
    """§VI Random Scheduling: J CUs at random, each with a random device order."""
    started = time.perf_counter()
    plans = [default_plan(dev, n, rng.permutation(dev.K)) for n, dev in enumerate(problem.clusters)]
    selected = [int(n) for n in rng.permutation(problem.N)[:_selected_count(problem)]]
    channel, p = default_uploads(problem, selected, rng.uniform(size=(problem.N, problem.uplink.J)))
    return ds.build_result(problem, plans, channel, p, Y, "random", started=started)


def loss_only_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **options) -> ds.RoundResult:
    """§VI Loss-only Driven Scheduling: the J CUs with the highest local training loss."""
    started = time.perf_counter()
    score = np.asarray(Y, float) if losses is None else check_losses(problem, losses)
    plans = [default_plan(dev, n) for n, dev in enumerate(problem.clusters)]
    channel, p = default_uploads(problem, sorted(_by_rank(score, _selected_count(problem))))
    return ds.build_result(problem, plans, channel, p, Y, "loss-only", started=started)


def delay_only_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **options) -> ds.RoundResult:
    """§VI Delay-only Driven Scheduling: the J CUs with the lowest reported local training delay."""
    started = time.perf_counter()
    plans = [default_plan(dev, n) for n, dev in enumerate(problem.clusters)]
    delay = np.array([plan.tau_pipe_s for plan in plans])
    channel, p = default_uploads(problem, sorted(_by_rank(-delay, _selected_count(problem))))
    return ds.build_result(problem, plans, channel, p, Y, "delay-only", started=started)


def check_losses(problem: ds.RoundProblem, losses) -> np.ndarray:
    weights = np.asarray(losses, float)
    if weights.shape != (problem.N,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValidationError("losses", f"must be N={problem.N} finite numbers >= 0", np.asarray(losses).tolist())
    return weights


# --------------------------------------------------------------------------- ablations


def uniform_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **kw) -> ds.RoundResult:
    """CollaPipe w/o segment scheduling: the default plan's δ and m, DSSRA's channels and power."""
    started = time.perf_counter()
    fronts = []
    for n, dev in enumerate(problem.clusters):
        plan = default_plan(dev, n)
        plans = [None] * dev.K
        plans[plan.S - 1] = plan
        fronts.append(sg.SegmentFront(tuple(plans), (plan.m,)))
    res = ds.dssra_round(problem, Y, fronts=fronts, policy="uniform", **kw)
    return ds.build_result(problem, res.plans, res.channel, res.p_n_w, Y, "uniform", res.iterations,
                           res.fallback, started)


def dssra_no_queue_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **kw) -> ds.RoundResult:
    """Alg. 4 with the queue terms off (min τ(t))."""
    return ds.dssra_round(problem, Y, weights=np.zeros(problem.N), policy="dssra-no-queue", **kw)


def dssra_loss_weighted_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **kw) -> ds.RoundResult:
    """Alg. 4 minimising Σ w_n Γ_n (w = losses, or 1), latency only breaking ties."""
    weights = np.ones(problem.N) if losses is None else check_losses(problem, losses)
    drift = ds.RoundProblem(problem.scenario, problem.clusters, problem.uplink, problem.V, problem.Gamma_max,
                            problem.variant, "drift")
    res = ds.dssra_round(drift, Y, weights=weights, V=LOSS_ONLY_V, policy="dssra-loss-weighted", **kw)
    # report the round objective of the run's own Lyapunov variant
    return ds.build_result(problem, res.plans, res.channel, res.p_n_w, Y, "dssra-loss-weighted", res.iterations,
                           res.fallback, time.perf_counter() - res.solve_ms / 1e3)


def random_feasible_policy(problem: ds.RoundProblem, Y, rng: np.random.Generator, losses=None,
                           **options) -> ds.RoundResult:
    """Uniformly drawn feasible m, devices, order, split, matching and power."""
    started = time.perf_counter()
    plans = [_random_plan(dev, rng, n) for n, dev in enumerate(problem.clusters)]
    up = problem.uplink
    p_ub = rs.power_upper_bounds(up)
    cost = np.where(np.isnan(p_ub), np.inf, rng.uniform(size=p_ub.shape))
    matched = rs.match_channels(cost, rng.uniform(size=up.N))
    if matched is None:
        raise rs.infeasible_c11(up, p_ub)
    channel, _ = matched
    p = np.array([rng.uniform(0.0, 1.0) * p_ub[n, c] if c >= 0 else 0.0 for n, c in enumerate(channel)])
    p = np.where((channel >= 0) & (p <= 0), p_ub[np.arange(up.N), np.clip(channel, 0, None)], p)
    return ds.build_result(problem, plans, channel, p, Y, "random-feasible", started=started)


def _random_plan(dev: sg.ClusterDevices, rng: np.random.Generator, cluster: int, tries: int = 200) -> sg.SegmentPlan:
    """A uniformly drawn m, device set, order and split that meets C1, C2, C7, C9'."""
    sg.check_capacity(dev, cluster)
    for attempt in range(tries):
        m = int(rng.integers(1, dev.b + 1)) if attempt < tries // 2 else 1  # m = 1 needs the least energy
        terms = sg.m_terms(dev, m)
        S = int(rng.integers(1, min(dev.K, dev.L) + 1))
        order = [int(k) for k in rng.permutation(dev.K)[:S]]
        caps = np.array([sg.role_caps(terms, sg.LAST if pos == S - 1 else sg.NONLAST)[k] for pos, k in enumerate(order)])
        if np.any(caps < 1) or caps.sum() < dev.L:
            continue
        delta = np.zeros(dev.K, int)
        delta[order] = 1
        room = caps - 1
        for _ in range(dev.L - S):  # the remaining TEBs one by one to devices with room left
            options = np.nonzero(room > 0)[0]
            i = int(rng.choice(options))
            room[i] -= 1
            delta[order[i]] += 1
        return sg.SegmentPlan(tuple(int(v) for v in delta), tuple(order), m,
                              sg.pipeline_latency(dev, m, delta, order))
    # rejection failed: a random plan among the exact front's feasible ones (raises if none)
    front = sg.solve_segments(dev, cluster=cluster)
    feasible = [p for p in front.plans if p is not None]
    return feasible[int(rng.integers(len(feasible)))]
