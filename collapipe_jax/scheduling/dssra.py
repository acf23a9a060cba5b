"""DSSRA (Alg. 4): per round, alternate Sub-1 (segments, Alg. 2) and Sub-2 (channels and power,
Alg. 3) until the queues' next values Y_n(t+1) stop changing; the queues persist across rounds.

Round objective (lyapunov.py): V·τ(t) + Σ_n Y_n·Γ_n (``drift``) or V·τ(t) + Σ_n Y_n (S_n + p_n)
(``paper``, Eq. 32), τ(t) = max_n (τ_pipe_n + τ^up_n) (Eq. 26), τ_pipe_n under the problem's
variant: Eq. 15 as printed (``paper``) or the GPipe makespan (``consistent``), segments.py.

Sub-1 inside Alg. 4: each cluster's exact front (best plan per stage count S, segments.py) is
solved once per round: it does not depend on channels or powers. Given Sub-2's channels and
upload delays, the per-cluster choice of S is then exact by enumerating the bottleneck value
(the max couples the clusters; each cluster takes the cheapest Y-term among its plans that fit
under it). With the ``paper`` objective the best power itself depends on the bottleneck
(p_n = the least power that meets it), so that step keeps the channels but lets the powers
follow (`choose_stage_counts_paper`). Sub-2 given the plans is resources.solve_resources.
Each step is optimal given the other block, so the objective never increases; the alternation
stops at a fixed point (then Y(t+1) has settled too) and is run from two starts (every
cluster's fastest plan, and its fewest stages), keeping the better. Tests compare it with the
exhaustive optimum over all stage-count vectors.

Everything here is host NumPy in float64; `check_decision` re-checks C1–C11' on what is
returned, and an instance with no feasible decision raises InfeasibleError naming the
constraint and cluster (C7, C9', C11'), never a violating decision or a NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from collapipe_jax.errors import ValidationError
from collapipe_jax.scenario import Decision, Scenario, SystemState, make_decision
from collapipe_jax.scheduling import lyapunov as lyap
from collapipe_jax.scheduling import resources as rs
from collapipe_jax.scheduling import segments as sg
from collapipe_jax.system.latency import check_variant


@dataclasses.dataclass(frozen=True)
class RoundProblem:
    """One round's scheduling problem on the host (float64), built from a SystemState."""

    scenario: Scenario
    clusters: tuple[sg.ClusterDevices, ...]
    uplink: rs.Uplink
    V: float
    Gamma_max: float
    variant: str = "paper"
    lyapunov: str = "drift"

    @property
    def N(self) -> int:
        return len(self.clusters)


def round_problem(scenario: Scenario, state: SystemState, variant: str = "paper", lyapunov: str = "drift",
                  V: float | None = None) -> RoundProblem:
    """Host copy of one round's draw plus the scenario's L, V, Γ^max."""
    check_variant(variant)
    lyap.check_lyapunov(lyapunov)
    V = scenario.V if V is None else V
    if not (np.isfinite(V) and V >= 0):
        raise ValidationError("V", "must be a finite number >= 0", V)
    a = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    f = lambda x: float(np.asarray(x))  # noqa: E731
    r_dd = sg.d2d_rate(a(state.p_k_w), f(state.h_dd), f(state.I_dd_w), f(state.B_dd_hz), f(state.N0_w_per_hz))
    clusters = tuple(
        sg.ClusterDevices(
            f_hz=a(state.f_hz)[n], phi=a(state.phi_flops_per_cycle)[n], p_k_w=a(state.p_k_w)[n], r_dd_bps=r_dd[n],
            gamma_max_bytes=a(state.gamma_max_k_bytes)[n], E_max_j=a(state.E_max_k_j)[n],
            L=scenario.L, b=scenario.b, o_fwd=f(state.o_fwd_flops), o_bwd=f(state.o_bwd_flops),
            z_bits=f(state.z_bits), g_bits=f(state.g_bits), gamma0_bytes=f(state.gamma0_bytes),
            kappa=f(state.kappa), variant=variant, iterations=float(np.asarray(state.local_steps)[n]))
        for n in range(scenario.N))
    uplink = rs.Uplink(
        h_n=a(state.h_n), I_i_w=a(state.I_i_w), B_U_hz=a(state.B_U_hz), P_max_n_w=a(state.P_max_n_w),
        E_max_n_j=a(state.E_max_n_j), N0_w_per_hz=f(state.N0_w_per_hz),
        bits=f(state.theta_enc_bits) + f(state.z_enc_bits), theta_bits=f(state.theta_enc_bits),
        C_noise=f(state.C_noise), beta=f(state.beta),
        eta=f(state.eta), phi_seg=f(state.phi_seg), fading=state.fading)
    return RoundProblem(scenario, clusters, uplink, float(V), float(scenario.Gamma_max), variant, lyapunov)


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """A policy's decision for one round with its host-side evaluation.

    `.decision` is the `Decision` pytree (jnp arrays) for the system model and the trainer,
    built on first use (its constraints were already checked on the host).
    """

    scenario: Scenario
    plans: tuple[sg.SegmentPlan, ...]
    channel: np.ndarray  # [N] −1 = none
    p_n_w: np.ndarray  # [N]
    tau_pipe_s: np.ndarray  # [N]
    tau_up_s: np.ndarray  # [N]
    tau_round_s: float
    Gamma: np.ndarray  # [N]
    objective: float  # the round objective with the queues Y passed in
    iterations: int = 1
    fallback: bool = False
    solve_ms: float = 0.0
    policy: str = "dssra"

    @functools.cached_property
    def decision(self) -> Decision:
        delta = np.array([pl.delta for pl in self.plans], int)
        return make_decision(self.scenario, delta, [pl.m for pl in self.plans], self.channel, self.p_n_w,
                             orders=[list(pl.order) for pl in self.plans])


# --------------------------------------------------------------------------- host evaluation


def evaluate_host(problem: RoundProblem, plans, channel, p_n_w, Y) -> dict:
    """τ_pipe, τ^up, τ, Γ and the round objective of a decision (float64 mirror of the model).

    τ_pipe is recomputed from each plan under the problem's variant (Eq. 15 as printed or the
    GPipe makespan), not read from the plan, so a plan built elsewhere is charged correctly."""
    up = problem.uplink
    channel = np.asarray(channel)
    p = np.asarray(p_n_w, float)
    tau_pipe = np.array([sg.pipeline_latency(dev, pl.m, pl.delta, pl.order) for dev, pl in zip(problem.clusters, plans)])
    tau_up = np.array([float(rs.upload_delay(up, p[n], n, channel[n])) if channel[n] >= 0 else 0.0
                       for n in range(problem.N)])
    S = np.array([pl.S for pl in plans])
    gamma = rs.convergence_gap(up, S, p, channel)
    tau_round = float(np.max(tau_pipe + tau_up))
    obj = lyap.round_objective(problem.lyapunov, problem.V, tau_round, Y, gamma, S, p)
    return dict(tau_pipe=tau_pipe, tau_up=tau_up, tau_round=tau_round, Gamma=gamma, objective=obj, S=S)


def check_decision(problem: RoundProblem, plans, channel, p_n_w) -> list[dict]:
    """Every constraint C1, C2, C6, C7, C8, C9', C11' on a decision; [] when all hold."""
    out = []
    up = problem.uplink
    channel = np.asarray(channel)
    p = np.asarray(p_n_w, float)
    for n, (dev, plan) in enumerate(zip(problem.clusters, plans)):
        for name in sg.plan_violations(dev, plan.m, plan.delta, plan.order):
            out.append({"constraint": name, "cluster": n})
        if not (1 <= plan.m <= dev.b):
            out.append({"constraint": "m", "cluster": n})
    used = channel[channel >= 0]
    if len(set(used.tolist())) != len(used) or np.any(channel >= up.J) or np.any(channel < -1):
        out.append({"constraint": "C6", "cluster": None})
    for n in range(problem.N):
        if not np.isfinite(p[n]) or p[n] < 0 or p[n] > up.P_max_n_w[n]:
            out.append({"constraint": "C8", "cluster": n})
        if channel[n] >= 0:
            if p[n] <= 0 or float(rs.upload_energy(up, p[n], n, channel[n])) > up.E_max_n_j[n]:
                out.append({"constraint": "C11'", "cluster": n})
    return out


def build_result(problem: RoundProblem, plans, channel, p_n_w, Y, policy: str, iterations: int = 1,
                 fallback: bool = False, started: float | None = None, strict: bool = True) -> RoundResult:
    """Check, evaluate and package a decision. `strict`: a violated constraint is a bug of the
    policy (optimising policies stay inside the feasible set); the frameworks' fixed rules pass
    False and their breaches are reported by the host round instead."""
    channel = np.asarray(channel, int)
    p = np.where(channel >= 0, np.asarray(p_n_w, float), 0.0)
    bad = check_decision(problem, plans, channel, p) if strict else []
    if bad:  # pragma: no cover - every optimising policy builds decisions inside the feasible set
        raise RuntimeError(f"{policy} produced a decision violating {bad}")
    ev = evaluate_host(problem, plans, channel, p, Y)
    if not (np.isfinite(ev["objective"]) and np.all(np.isfinite(ev["Gamma"]))):  # pragma: no cover
        raise RuntimeError(f"{policy} produced a non-finite evaluation")
    ms = 0.0 if started is None else (time.perf_counter() - started) * 1e3
    return RoundResult(problem.scenario, tuple(plans), channel, p, ev["tau_pipe"], ev["tau_up"], ev["tau_round"],
                       ev["Gamma"], ev["objective"], iterations, fallback, ms, policy)


# --------------------------------------------------------------------------- Sub-1 choice of S


def s_term_coefficient(problem: RoundProblem) -> float:
    """Y_n is multiplied by coef · S_n: β η² ϕ/2 (drift, Eq. 28) or 1 (paper, Eq. 32)."""
    up = problem.uplink
    return 0.5 * up.beta * up.eta**2 * up.phi_seg if problem.lyapunov == "drift" else 1.0


def choose_stage_counts(fronts, tau_up, weights, V, coef) -> list[int]:
    """Exact min over S-vectors of V max_n (F_n[S_n] + τ^up_n) + Σ_n w_n coef S_n (Sub-1 given Sub-2).

    Enumerate the bottleneck T over all F_n[S] + τ^up_n; for each T every cluster takes, among
    its plans under T, the least w coef S (ties: the faster plan); the first best T wins. The
    plans under T are a prefix of the cluster's plans in latency order, so each cluster's choice
    per prefix is found once (a running arg-min over its K plans) and each T only counts the
    plans under it (a binary search per cluster): O(N K · N log K), not O((N K)²).
    """
    N = len(fronts)
    K = len(fronts[0].plans)
    lat = np.full((N, K), np.inf)
    for n, front in enumerate(fronts):
        for i, p in enumerate(front.plans):
            if p is not None:
                lat[n, i] = p.tau_pipe_s + tau_up[n]
    S = np.arange(1, K + 1)
    cost = np.asarray(weights, float)[:, None] * coef * S[None, :]
    order = np.argsort(lat, axis=1, kind="stable")  # equal latencies: lower S first, as an argmin
    ls = np.take_along_axis(lat, order, axis=1)
    cs = np.take_along_axis(cost, order, axis=1)
    pre_i = np.zeros((N, K), int)  # prefix j: the cheapest of the j + 1 fastest, the faster on ties
    for j in range(1, K):
        prev = pre_i[:, j - 1]
        pre_i[:, j] = np.where(cs[:, j] < cs[np.arange(N), prev], j, prev)
    pre_c = np.take_along_axis(cs, pre_i, axis=1)
    pre_lat = np.take_along_axis(ls, pre_i, axis=1)
    bounds = np.unique(lat[np.isfinite(lat)])
    fitting = np.stack([np.searchsorted(ls[n], bounds, side="right") for n in range(N)])  # [N, T]
    usable = np.all(fitting > 0, axis=0)  # else some cluster has no plan this fast
    j = np.clip(fitting - 1, 0, K - 1)
    pick_lat = np.take_along_axis(pre_lat, j, axis=1).T  # [T, N], rows contiguous as the sums below
    pick_cost = np.ascontiguousarray(np.take_along_axis(pre_c, j, axis=1).T)
    totals = V * np.max(pick_lat, axis=1) + np.sum(pick_cost, axis=1)
    best = int(np.argmin(np.where(usable, totals, np.inf)))  # the first best T
    return [int(order[n, pre_i[n, j[n, best]]]) for n in range(N)]


def choose_stage_counts_paper(fronts, up: rs.Uplink, channel, p_ub, weights, V, grid: int = 4000) -> list[int]:
    """Sub-1 for the ``paper`` objective with the channels fixed but the powers free.

    With Y_n (S_n + p_n) the best power of an uploading cluster is the least one meeting the
    bottleneck T, p_n = p_req(T − τ_pipe_n(S_n)), so holding p fixed (as the drift step does)
    would hide that a slower cluster lets the others transmit less. For each T on a dense grid
    every cluster independently takes the S minimising Y_n (S + p_req) under T; the best T wins.
    """
    N = len(fronts)
    K = len(fronts[0].plans)
    channel = np.asarray(channel)
    w = np.asarray(weights, float)
    F = np.array([[p.tau_pipe_s if p is not None else np.inf for p in f.plans] for f in fronts])  # [N, K]
    up_min = np.array([float(rs.upload_delay(up, p_ub[n, channel[n]], n, channel[n])) if channel[n] >= 0 else 0.0
                       for n in range(N)])
    floor = F + up_min[:, None]  # the fastest each (cluster, S) can finish
    T_lo = float(np.max(np.min(floor, axis=1)))
    finite = floor[np.isfinite(floor)]
    T_hi = max(float(finite.max()), T_lo) * 4.0 + 1.0
    T = np.unique(np.concatenate([finite[finite >= T_lo], T_lo + (T_hi - T_lo) * np.geomspace(1e-6, 1.0, grid)]))
    S = np.arange(1, K + 1, dtype=float)
    cost = np.full((N, K, T.size), np.inf)
    for n in range(N):
        for i in range(K):
            if not np.isfinite(F[n, i]):
                continue
            fits = T >= floor[n, i]
            if channel[n] >= 0:
                budget = np.where(fits, T - F[n, i], 1.0)
                p = rs.power_for_delay(up, budget, n, channel[n], p_cap=p_ub[n, channel[n]])
                cost[n, i] = np.where(fits & np.isfinite(p), w[n] * (S[i] + np.nan_to_num(p, posinf=0.0)), np.inf)
            else:
                cost[n, i] = np.where(fits, w[n] * S[i], np.inf)
    best_s = np.argmin(cost, axis=1)  # [N, T]
    total = V * T + np.sum(np.min(cost, axis=1), axis=0)
    j = int(np.argmin(total))
    return [int(best_s[n, j]) for n in range(N)]


# --------------------------------------------------------------------------- Alg. 4


def solve_fronts(problem: RoundProblem, solver: str = "exact", m_rule: str = "stationary"):
    return [sg.solve_segments(dev, m_rule=m_rule, solver=solver, cluster=n) for n, dev in enumerate(problem.clusters)]


def dssra_round(problem: RoundProblem, Y, solver: str = "exact", m_rule: str = "stationary",
                max_iter: int = 10, weights=None, V: float | None = None, policy: str = "dssra",
                fronts=None) -> RoundResult:
    """Alg. 4 for one round: Sub-1 ⇄ Sub-2 until neither changes the decision (so Y(t+1) has
    settled); each step is exact given the other, so the objective never increases.

    `weights` replace Y inside the optimisation (baselines use it), `V` overrides problem.V.
    """
    started = time.perf_counter()
    Y = np.asarray(Y, float)
    w = Y if weights is None else np.asarray(weights, float)
    V = problem.V if V is None else float(V)
    fronts = solve_fronts(problem, solver, m_rule) if fronts is None else fronts
    p_ub = rs.power_upper_bounds(problem.uplink)
    coef = s_term_coefficient(problem)
    # two starts (block-coordinate descent can stop at a local optimum when the max couples
    # the clusters): every cluster's fastest plan, and every cluster's fewest stages
    fastest = [int(np.argmin([p.tau_pipe_s if p is not None else np.inf for p in f.plans])) for f in fronts]
    fewest = [min(i for i, p in enumerate(f.plans) if p is not None) for f in fronts]
    fallback, iterations, best = False, 0, None
    for start in ([fastest] if fewest == fastest else [fastest, fewest]):
        pick = start
        for _ in range(max_iter):
            iterations += 1
            plans = [fronts[n].plans[pick[n]] for n in range(problem.N)]
            tau_pipe = np.array([p.tau_pipe_s for p in plans])
            S = np.array([p.S for p in plans])
            res = rs.solve_resources(problem.uplink, tau_pipe, S, w, V, problem.lyapunov, p_ub=p_ub)
            fallback |= res.fallback
            ev = evaluate_host(problem, plans, res.channel, res.p_n_w, w)
            obj = lyap.round_objective(problem.lyapunov, V, ev["tau_round"], w, ev["Gamma"], S, res.p_n_w)
            if best is None or obj < best[0]:
                best = (obj, plans, res.channel, res.p_n_w)
            if problem.lyapunov == "paper":
                new_pick = choose_stage_counts_paper(fronts, problem.uplink, res.channel, p_ub, w, V)
            else:
                new_pick = choose_stage_counts(fronts, res.tau_up_s, w, V, coef)
            if new_pick == pick:
                # a fixed point: Sub-2 would return the same channels and powers, so the
                # decision and with it Y(t+1) = max(Y + Γ − Γ^max, 0) have settled. (Y(t+1)
                # alone is no test: clipped at 0 it can repeat while the decision improves.)
                break
            pick = new_pick
    it = iterations
    _, plans, channel, p = best
    return build_result(problem, plans, channel, p, Y, policy, it, fallback, started)
