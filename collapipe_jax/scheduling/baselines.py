"""Baseline scheduling policies (paper §VI), on the host.

Every policy has the registry's signature (`scheduling.policies`):
`(problem, Y, rng, losses=None, **options) -> RoundResult`; `.decision` is the `Decision` pytree
the system model and the trainer take. Every decision satisfies C1–C11' (checked in
`dssra.build_result`); an instance where none exists raises InfeasibleError.

* ``random``     — random m ∈ [1, b], a random feasible device set, pipeline order and split
                   of the L TEBs, a random feasible channel matching, p_n uniform in (0, p_ub].
* ``delay-only`` — minimises the round latency τ(t) alone (Alg. 4 with the queue terms off).
* ``loss-only``  — minimises Σ_n w_n Γ_n alone, w_n = the caller's per-cluster training
                   losses; in a pure scheduling run (no losses) the proxy is w_n = 1, i.e. the
                   convergence bound Γ_n (Eq. 28) itself stands for the loss. Latency only
                   breaks ties (V = 1e-9).
* ``uniform``    — CollaPipe without segment scheduling ("w/o SS"): δ split evenly over all K
                   devices in index order (remainder to the first ones), m by Alg. 2's
                   stationary rule for that split, channels and power by DSSRA's Sub-2.
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


def random_policy(problem: ds.RoundProblem, Y, rng: np.random.Generator, losses=None, **options) -> ds.RoundResult:
    started = time.perf_counter()
    plans = [_random_plan(dev, rng, n) for n, dev in enumerate(problem.clusters)]
    up = problem.uplink
    p_ub = rs.power_upper_bounds(up)
    cost = np.where(np.isnan(p_ub), np.inf, rng.uniform(size=p_ub.shape))
    matched = rs.match_channels(cost, rng.uniform(size=up.N))
    if matched is None:
        raise rs._infeasible_c11(up, p_ub)
    channel, _ = matched
    p = np.array([rng.uniform(0.0, 1.0) * p_ub[n, c] if c >= 0 else 0.0 for n, c in enumerate(channel)])
    p = np.where((channel >= 0) & (p <= 0), p_ub[np.arange(up.N), np.clip(channel, 0, None)], p)
    return ds.build_result(problem, plans, channel, p, Y, "random", started=started)


def _random_plan(dev: sg.ClusterDevices, rng: np.random.Generator, cluster: int, tries: int = 200) -> sg.SegmentPlan:
    """A uniformly drawn m, device set, order and split that meets C1, C2, C7, C9'."""
    sg._check_capacity(dev, cluster)
    for attempt in range(tries):
        m = int(rng.integers(1, dev.b + 1)) if attempt < tries // 2 else 1  # m = 1 needs the least energy
        terms = sg.m_terms(dev, m)
        S = int(rng.integers(1, min(dev.K, dev.L) + 1))
        order = [int(k) for k in rng.permutation(dev.K)[:S]]
        caps = np.array([sg._caps(terms, sg.LAST if pos == S - 1 else sg.NONLAST)[k] for pos, k in enumerate(order)])
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


def delay_only_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **kw) -> ds.RoundResult:
    return ds.dssra_round(problem, Y, weights=np.zeros(problem.N), policy="delay-only", **kw)


def loss_only_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **kw) -> ds.RoundResult:
    weights = np.ones(problem.N) if losses is None else np.asarray(losses, float)
    if weights.shape != (problem.N,) or not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValidationError("losses", f"must be N={problem.N} finite numbers >= 0", np.asarray(losses).tolist())
    drift = ds.RoundProblem(problem.scenario, problem.clusters, problem.uplink, problem.V, problem.Gamma_max,
                            problem.variant, "drift")
    res = ds.dssra_round(drift, Y, weights=weights, V=LOSS_ONLY_V, policy="loss-only", **kw)
    # report the round objective of the run's own Lyapunov variant
    return ds.build_result(problem, res.plans, res.channel, res.p_n_w, Y, "loss-only", res.iterations,
                           res.fallback, time.perf_counter() - res.solve_ms / 1e3)


def uniform_policy(problem: ds.RoundProblem, Y, rng=None, losses=None, **kw) -> ds.RoundResult:
    started = time.perf_counter()
    fronts = []
    for n, dev in enumerate(problem.clusters):
        plan = uniform_plan(dev, n)
        plans = [None] * dev.K
        plans[plan.S - 1] = plan
        fronts.append(sg.SegmentFront(tuple(plans), (plan.m,)))
    res = ds.dssra_round(problem, Y, fronts=fronts, policy="uniform", **kw)
    return ds.build_result(problem, res.plans, res.channel, res.p_n_w, Y, "uniform", res.iterations,
                           res.fallback, started)


def uniform_plan(dev: sg.ClusterDevices, cluster: int, max_steps: int = 8) -> sg.SegmentPlan:
    """Even split over all devices (index order), m by the stationary rule (Eq. 38) iterated."""
    delta = tuple(even_split(dev.L, dev.K))
    order = tuple(k for k in range(dev.K) if delta[k] > 0)
    m = sg._initial_m(dev)
    seen = set()
    while m not in seen and len(seen) < max_steps:
        seen.add(m)
        plan = sg.SegmentPlan(delta, order, m, sg.pipeline_latency(dev, m, delta, order))
        nxt = sg.better_integer_neighbour(dev, plan, sg.stationary_m(dev, plan))
        if nxt is None or nxt == m:
            break
        m = nxt
    for candidate in (m, 1):  # m = 1 needs the least energy
        bad = sg.plan_violations(dev, candidate, delta, order)
        if not bad:
            return sg.SegmentPlan(delta, order, candidate, sg.pipeline_latency(dev, candidate, delta, order))
    raise InfeasibleError({
        "constraint": bad[0], "cluster": cluster,
        "message": f"cluster {cluster}: the uniform split {list(delta)} violates {', '.join(bad)} (policy uniform)",
    })
