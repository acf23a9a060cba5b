"""DSSRA (Alg. 4) on the device: the host's `scheduling/dssra.dssra_round`, term for term, as a
pure JAX function of one round (the caller vmaps it over rounds and seeds).

Sub-1's fronts (the best plan per stage count S of every cluster, `segments.solve_segments`) are
solved once per round; then, from two starts (every cluster's fastest plan, and its fewest
stages), Sub-2 (`resources.solve_resources`: channels and powers given the plans) and Sub-1's
choice of S given Sub-2 (`resources.choose_stage_counts`, or `choose_stage_counts_paper` for
Eq. 32's objective, where the powers follow the bottleneck) alternate in a bounded
`lax.while_loop` until the choice of S repeats; the best round objective seen wins (strictly
smaller replaces, so the first start wins ties, as on the host).

Infeasibility is data: `code` (constraints.FEASIBLE / C7 / C9 / C11) and the first cluster
concerned, in the host's order (Sub-1's C7/C9' by cluster index, then Sub-2's C11'), where the
host raises InfeasibleError.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from collapipe_jax.scheduling.device import constraints, resources, segments
from collapipe_jax.scheduling.device.problem import EngineConfig, RoundProblem


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RoundDecision:
    """A rule's decision for one round, with the engine's own (working-dtype) evaluation.

    delta[n, k] TEBs on device k; the pipeline order is the scheduled devices other than
    `last` in index order, then `last` (as every host plan); channel −1 = none."""

    delta: jax.Array  # [N, K] int32
    last: jax.Array  # [N] int32
    m: jax.Array  # [N] int32
    channel: jax.Array  # [N] int32
    p_n_w: jax.Array  # [N]
    tau_pipe_s: jax.Array  # [N]
    tau_up_s: jax.Array  # [N]
    objective: jax.Array  # the round objective with the queues Y
    iterations: jax.Array  # int32: Alg. 4's Sub-1 ⇄ Sub-2 steps (1 for the rules that do not alternate)
    code: jax.Array  # int32: constraints.FEASIBLE or the constraint with no feasible decision
    code_cluster: jax.Array  # int32: the first cluster concerned (−1: none)

    @property
    def S(self):
        return jnp.sum(self.delta > 0, axis=-1)


def s_term_coefficient(up: resources.Uplink, lyapunov: str):
    """Y_n multiplies coef · S_n: β η² ϕ/2 (drift, Eq. 28) or 1 (paper, Eq. 32)."""
    return 0.5 * up.beta * up.eta**2 * up.phi_seg if lyapunov == "drift" else jnp.ones_like(up.beta)


def round_objective(lyapunov: str, up: resources.Uplink, V, tau_pipe, S, channel, p, w):
    """V·τ(t) + Σ_n w_n Γ_n (drift) or V·τ(t) + Σ_n w_n (S_n + p_n) (paper, Eq. 32); τ(t) =
    max_n (τ_pipe_n + τ^up_n(p_n)) (Eq. 26). Returns (objective, τ^up [N], Γ [N])."""
    n = jnp.arange(S.shape[0])
    j = jnp.clip(channel, 0, None)
    tau_up = jnp.where(channel >= 0, resources.upload_delay(up, jnp.where(channel >= 0, p, 1.0), n, j), 0.0)
    gamma = resources.convergence_gap(up, S, p, channel)
    weight = gamma if lyapunov == "drift" else S + p
    return V * jnp.max(tau_pipe + tau_up) + jnp.sum(w * weight), tau_up, gamma


def first_infeasible(codes):
    """(code, cluster) of the first cluster with a non-zero code, (FEASIBLE, −1) if none."""
    bad = codes != constraints.FEASIBLE
    first = jnp.argmax(bad)
    return jnp.where(bad.any(), codes[first], constraints.FEASIBLE), jnp.where(bad.any(), first, -1)


def c11_cluster(p_ub):
    """The cluster the host's C11' report names first: the first with no feasible power on any
    channel, else cluster 0 (`resources.infeasible_c11`)."""
    bad = jnp.all(jnp.isnan(p_ub), axis=1)
    return jnp.where(bad.any(), jnp.argmax(bad), 0)


def solve_fronts(problem: RoundProblem, config: EngineConfig):
    """Sub-1 for every cluster: (Front with leaves [N, K, ...], codes [N])."""
    solve = lambda cl: segments.solve_segments(cl, config.L, config.b, config.variant,  # noqa: E731
                                               m_rule=config.m_rule)
    return jax.vmap(solve)(problem.clusters)


def alternate(problem: RoundProblem, fronts: segments.Front, Y, w, V, config: EngineConfig, p_ub=None):
    """Alg. 4's alternation over given fronts (leaves [N, K]): the best (objective under `w`,
    pick [N], Resources) over both starts, the total number of steps and whether Sub-2 found a
    matching for every pick it was given."""
    up = problem.uplink
    p_ub = resources.power_upper_bounds(up) if p_ub is None else p_ub
    F = jnp.where(fronts.ok, fronts.tau, jnp.inf)  # [N, K]
    N, K = F.shape
    rows = jnp.arange(N)
    coef = s_term_coefficient(up, config.lyapunov)
    fastest = jnp.argmin(F, axis=1).astype(jnp.int32)
    fewest = jnp.argmax(fronts.ok, axis=1).astype(jnp.int32)

    def step(pick):
        tau_pipe = F[rows, pick]
        S = (pick + 1).astype(F.dtype)
        res = resources.solve_resources(up, tau_pipe, S, w, V, config.lyapunov, p_ub)
        p = jnp.where(res.channel >= 0, res.p_n_w, 0.0)
        obj, _, _ = round_objective(config.lyapunov, up, V, tau_pipe, S, res.channel, p, w)
        if config.lyapunov == "paper":
            new = resources.choose_stage_counts_paper(F, up, res.channel, p_ub, w, V)
        else:
            new = resources.choose_stage_counts(F, res.tau_up_s, w, V, coef)
        return res, jnp.where(res.ok, obj, jnp.inf), new.astype(jnp.int32)

    # both starts in ONE loop, so that Sub-2 and the choice of S are traced once (each copy of
    # a matching and its loops costs compile time): a step of the current start per iteration;
    # when a start's run ends (its choice of S repeats, Sub-2 fails, or max_iter steps), the
    # second start begins where it differs from the first, and the runs' best are compared
    # (the second replaces the first only when strictly better, as on the host)
    same = jnp.all(fastest == fewest)
    select = lambda c, a, b: jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)  # noqa: E731

    def cond(carry):
        return ~carry[0]

    def body(carry):
        finished, phase, pick, it, run_best, run_ok, total, best, ok = carry
        res, obj, new = step(pick)
        better = (it == 0) | (obj < run_best[0])  # a run's first step is its best so far
        run_best = select(better, (obj, pick, res), run_best)
        run_ok = run_ok & res.ok
        it = it + 1
        run_done = jnp.all(new == pick) | ~res.ok | (it >= config.max_iter)
        # at the end of the first run: it is the best; at the end of the second: the better
        first_end = run_done & (phase == 0)
        second_end = run_done & (phase == 1)
        replace = first_end | (second_end & (run_best[0] < best[0]))
        best = select(replace, run_best, best)
        ok = jnp.where(first_end, run_ok, jnp.where(second_end, ok & run_ok, ok))
        to_second = first_end & ~same
        finished = (first_end & same) | second_end
        pick = jnp.where(to_second, fewest, new)
        phase = jnp.where(to_second, 1, phase)
        it = jnp.where(to_second, 0, it)
        run_ok = run_ok | to_second
        return finished, phase, pick, it, run_best, run_ok, total + 1, best, ok

    dt = up.h_n.dtype
    res0 = resources.Resources(channel=jnp.full(N, -1, jnp.int32), p_n_w=jnp.zeros(N, dt), tau_up_s=jnp.zeros(N, dt),
                               objective=jnp.asarray(jnp.inf, dt), ok=jnp.bool_(False))
    blank = (jnp.asarray(jnp.inf, F.dtype), fastest, res0)
    init = (jnp.bool_(False), jnp.int32(0), fastest, jnp.int32(0), blank, jnp.bool_(True), jnp.int32(0), blank,
            jnp.bool_(True))
    _, _, _, _, _, _, iterations, (obj, pick, res), ok = jax.lax.while_loop(cond, body, init)
    return (obj, pick, res), iterations, ok


def finish(problem: RoundProblem, delta, last, m, tau_pipe, channel, p, Y, V, config: EngineConfig,
           iterations=1, code=constraints.FEASIBLE, code_cluster=-1) -> RoundDecision:
    """Package a decision with its evaluation under the round's queues Y (the host's
    `build_result`): powers of clusters without a channel are 0; τ_pipe comes with the plans."""
    channel = jnp.asarray(channel, jnp.int32)
    p = jnp.where(channel >= 0, p, 0.0)
    S = jnp.sum(delta > 0, axis=-1).astype(tau_pipe.dtype)
    obj, tau_up, _ = round_objective(config.lyapunov, problem.uplink, V, tau_pipe, S, channel, p, Y)
    return RoundDecision(delta=jnp.asarray(delta, jnp.int32), last=jnp.asarray(last, jnp.int32),
                         m=jnp.asarray(m, jnp.int32), channel=channel, p_n_w=p, tau_pipe_s=tau_pipe,
                         tau_up_s=tau_up, objective=obj, iterations=jnp.asarray(iterations, jnp.int32),
                         code=jnp.asarray(code, jnp.int32), code_cluster=jnp.asarray(code_cluster, jnp.int32))


def pick_plans(fronts: segments.Front, pick):
    """(δ [N, K], last [N], m [N], τ_pipe [N]) of the plans `pick` [N] (row S − 1 of each front)."""
    rows = jnp.arange(pick.shape[0])
    return (fronts.delta[rows, pick], fronts.last[rows, pick], fronts.m[rows, pick],
            jnp.where(fronts.ok, fronts.tau, jnp.inf)[rows, pick])


def dssra_on_fronts(problem: RoundProblem, fronts: segments.Front, codes, Y, V, config: EngineConfig,
                    weights=None, V_solve=None, solve_config: EngineConfig | None = None) -> RoundDecision:
    """Alg. 4 over given fronts; `weights` replace Y inside the optimisation, `V_solve` V and
    `solve_config` the objective (the ablations); the result is evaluated with Y, V, `config`."""
    w = Y if weights is None else weights
    V_solve = V if V_solve is None else V_solve
    p_ub = resources.power_upper_bounds(problem.uplink)
    (obj, pick, res), iterations, all_ok = alternate(problem, fronts, Y, w, V_solve, solve_config or config, p_ub)
    code, cluster = first_infeasible(codes)
    # Sub-2 without a matching for min(N, J) clusters: C11' (the host raises it for the whole round)
    c11 = ~all_ok & (code == constraints.FEASIBLE)
    code = jnp.where(c11, constraints.C11, code)
    cluster = jnp.where(c11, c11_cluster(p_ub), cluster)
    delta, last, m, tau_pipe = pick_plans(fronts, pick)
    return finish(problem, delta, last, m, tau_pipe, res.channel, res.p_n_w, Y, V, config, iterations, code, cluster)


def dssra_round(problem: RoundProblem, Y, V, config: EngineConfig, weights=None, V_solve=None,
                solve_config: EngineConfig | None = None) -> RoundDecision:
    """Alg. 4 for one round (Sub-1 fronts, then the alternation): the host's `dssra_round`."""
    fronts, codes = solve_fronts(problem, config)
    return dssra_on_fronts(problem, fronts, codes, Y, V, config, weights, V_solve, solve_config)
