"""Every decision rule of the host registry (`scheduling/policies.py`) on the device, one round.

A rule is `rule(problem, Y, V, key, losses, config) -> dssra.RoundDecision`:
  problem  the round's `problem.RoundProblem` (working dtype)
  Y, V     the queues Y(t) [N] and the Lyapunov weight (data: one program serves a grid of V)
  key      the round's JAX key for the random choices (`run.policy_key(seed, t)`); the host's
           NumPy generator draws differently, so `random` agrees with the host in distribution,
           not draw for draw
  losses   the previous round's per-cluster losses [N] or None (static)
The rules and their reading are the host's (`scheduling/baselines.py`, `scheduling/frameworks.py`):
DSSRA and its ablations alternate Sub-1 and Sub-2 (`dssra.py`); the paper's baselines select
the uploading CUs and keep the default plan; the frameworks' fixed rules keep their plan and the
default channels and report what they break through the system model's charge.
`random-feasible` is host-only (a rejection sampler with no static bound on its draws).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from collapipe_jax.scheduling.device import constraints, resources, segments
from collapipe_jax.scheduling.device.dssra import (RoundDecision, c11_cluster, dssra_on_fronts, dssra_round, finish,
                                                   first_infeasible)
from collapipe_jax.scheduling.device.problem import EngineConfig, RoundProblem

LOSS_ONLY_V = 1e-9  # dssra-loss-weighted: latency only breaks ties (the host's baselines.LOSS_ONLY_V)


def front_of_plans(plan: segments.Plan, K: int) -> segments.Front:
    """Fronts holding only the given plans (leaves [N]) at their stage counts (the `uniform` rule)."""
    S = jnp.sum(plan.delta > 0, axis=-1)
    ok = (jnp.arange(K)[None, :] == (S - 1)[:, None]) & plan.ok[:, None]
    wide = lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], K) + x.shape[1:])  # noqa: E731
    return segments.Front(delta=wide(plan.delta), last=wide(plan.last), m=wide(plan.m),
                          tau=jnp.where(ok, wide(plan.tau), jnp.inf), ok=ok)


def top_clusters(score, count: int):
    """Mask of the `count` clusters with the highest score, ties to the lower index."""
    order = jnp.argsort(-score, stable=True)
    return jnp.zeros(score.shape, bool).at[order[:count]].set(True)


def _baseline(problem: RoundProblem, Y, V, config: EngineConfig, plans: segments.Plan, codes, selected,
              preference) -> RoundDecision:
    """The default plans with the selected CUs' default uploads (the host's baselines)."""
    up = problem.uplink
    p_ub = resources.power_upper_bounds(up)
    channel, p, ok = resources.default_uploads(up, p_ub, selected, preference)
    code, cluster = first_infeasible(codes)
    c11 = ~ok & (code == constraints.FEASIBLE)
    code = jnp.where(c11, constraints.C11, code)
    cluster = jnp.where(c11, c11_cluster(p_ub), cluster)
    return finish(problem, plans.delta, plans.last, plans.m, plans.tau, channel, p, Y, V, config, 1, code, cluster)


def _default_plans(problem: RoundProblem, config: EngineConfig, orders=None):
    N, K = config.N, config.K
    orders = jnp.broadcast_to(jnp.arange(K, dtype=jnp.int32), (N, K)) if orders is None else orders
    plan = lambda cl, order: segments.default_plan(cl, order, config.L, config.b, config.variant)  # noqa: E731
    return jax.vmap(plan)(problem.clusters, orders)


QUEUES, NO_QUEUE, LOSS_WEIGHTED = 0, 1, 2  # the knob of `dssra_family`


def dssra_family(problem, Y, V, key, losses, config, knob):
    """Alg. 4 and its two ablations in one function of a traced `knob` (one compiled program):
    QUEUES — DSSRA with the round's queues; NO_QUEUE — the queue terms off (min τ(t));
    LOSS_WEIGHTED — minimising Σ w_n Γ_n (w = losses, or 1) under the drift objective, latency
    only breaking ties, evaluated with the run's own objective. (Under Eq. 32's objective the
    loss-weighted rule solves with another objective: `dssra_loss_weighted` then has a program
    of its own.)"""
    ones = jnp.ones_like(Y) if losses is None else jnp.asarray(losses, Y.dtype)
    weights = jnp.where(knob == QUEUES, Y, jnp.where(knob == NO_QUEUE, 0.0, ones))
    V_solve = jnp.where(knob == LOSS_WEIGHTED, jnp.asarray(LOSS_ONLY_V, Y.dtype), V)
    return dssra_round(problem, Y, V, config, weights=weights, V_solve=V_solve)


def dssra(problem, Y, V, key, losses, config):
    """Alg. 4 (DSSRA) with the round's queues."""
    return dssra_round(problem, Y, V, config)


def dssra_no_queue(problem, Y, V, key, losses, config):
    """Alg. 4 with the queue terms off (min τ(t))."""
    return dssra_round(problem, Y, V, config, weights=jnp.zeros_like(Y))


def dssra_loss_weighted(problem, Y, V, key, losses, config):
    """Alg. 4 minimising Σ w_n Γ_n (w = losses, or 1) under the drift objective, latency only
    breaking ties; evaluated with the run's own objective."""
    weights = jnp.ones_like(Y) if losses is None else jnp.asarray(losses, Y.dtype)
    return dssra_round(problem, Y, V, config, weights=weights, V_solve=jnp.asarray(LOSS_ONLY_V, Y.dtype),
                       solve_config=dataclasses.replace(config, lyapunov="drift"))


def uniform(problem, Y, V, key, losses, config):
    """CollaPipe w/o segment scheduling: the default plan's δ and m, DSSRA's channels and power."""
    plans, codes = _default_plans(problem, config)
    return dssra_on_fronts(problem, front_of_plans(plans, config.K), codes, Y, V, config)


RANDOM, LOSS_ONLY, DELAY_ONLY = 0, 1, 2  # the knob of `paper_baselines`


def paper_baselines(problem, Y, V, key, losses, config, knob):
    """§VI's three baselines in one function of a traced `knob` (so that one compiled program
    serves all three): RANDOM — J CUs at random, each with a random device order, a random
    matching; LOSS_ONLY — the J CUs with the highest local training loss (without losses: the
    queues Y_n, the model's measure of a cluster falling behind); DELAY_ONLY — the J CUs with the
    lowest local training delay (τ^pipe of the default plan). The rest is the default plan."""
    N, K, J = config.N, config.K, config.J
    count = min(N, J)
    k_order, k_select, k_pref = jax.random.split(key, 3)
    is_random = knob == RANDOM
    shuffled = jax.vmap(lambda k: jax.random.permutation(k, K))(jax.random.split(k_order, N)).astype(jnp.int32)
    orders = jnp.where(is_random, shuffled, jnp.arange(K, dtype=jnp.int32)[None, :])
    plans, codes = _default_plans(problem, config, orders)
    drawn = jnp.zeros(N, bool).at[jax.random.permutation(k_select, N)[:count]].set(True)
    loss = Y if losses is None else jnp.asarray(losses, Y.dtype)
    ranked = top_clusters(jnp.where(knob == LOSS_ONLY, loss, -plans.tau), count)
    selected = jnp.where(is_random, drawn, ranked)
    preference = jnp.where(is_random, jax.random.uniform(k_pref, (N, J), Y.dtype),
                           resources.default_preference(selected, J))
    return _baseline(problem, Y, V, config, plans, codes, selected, preference)


def random(problem, Y, V, key, losses, config):
    """§VI Random Scheduling (`paper_baselines`)."""
    return paper_baselines(problem, Y, V, key, losses, config, RANDOM)


def loss_only(problem, Y, V, key, losses, config):
    """§VI Loss-only Driven Scheduling (`paper_baselines`)."""
    return paper_baselines(problem, Y, V, key, losses, config, LOSS_ONLY)


def delay_only(problem, Y, V, key, losses, config):
    """§VI Delay-only Driven Scheduling (`paper_baselines`)."""
    return paper_baselines(problem, Y, V, key, losses, config, DELAY_ONLY)


def _fixed(problem, Y, V, config, plans: segments.Plan) -> RoundDecision:
    """A framework's fixed plans on the default channels at P_max capped by C11'; evaluated with
    Y = 0 as on the host; what the plans break is reported by the charge, not here."""
    up = problem.uplink
    channel, p = resources.default_channels(up, resources.power_upper_bounds(up))
    return finish(problem, plans.delta, plans.last, plans.m, plans.tau, channel, p, jnp.zeros_like(Y), V, config)


def default(problem, Y, V, key, losses, config):
    """No optimisation (PipeLine's decision): uniform δ over the first S devices, m = 4."""
    rule = lambda cl: segments.default_rule_plan(cl, config.L, config.b, config.variant,  # noqa: E731
                                                 config.stages, config.micro_batches)
    return _fixed(problem, Y, V, config, jax.vmap(rule)(problem.clusters))


def vanilla_fl(problem, Y, V, key, losses, config):
    """VanillaFL: all L TEBs on the fastest device that fits them, m = 1."""
    rule = lambda cl: segments.vanilla_fl_plan(cl, config.L, config.b, config.variant)  # noqa: E731
    return _fixed(problem, Y, V, config, jax.vmap(rule)(problem.clusters))


def titanic(problem, Y, V, key, losses, config):
    """TITANIC-like: the ⌈K/2⌉ fastest devices in decreasing speed, δ ∝ speed within memory."""
    rule = lambda cl: segments.titanic_plan(cl, config.L, config.b, config.variant)  # noqa: E731
    return _fixed(problem, Y, V, config, jax.vmap(rule)(problem.clusters))


DEVICE_POLICIES = {
    "dssra": dssra,
    "random": random,
    "loss-only": loss_only,
    "delay-only": delay_only,
    "uniform": uniform,
    "dssra-no-queue": dssra_no_queue,
    "dssra-loss-weighted": dssra_loss_weighted,
    "default": default,
    "vanilla-fl": vanilla_fl,
    "titanic": titanic,
}
# rules that share one compiled program: policy → (family, knob); the family takes the knob as data
FAMILIES = {"paper-baselines": paper_baselines, "dssra-family": dssra_family}
SHARED_PROGRAM = {"random": ("paper-baselines", RANDOM), "loss-only": ("paper-baselines", LOSS_ONLY),
                  "delay-only": ("paper-baselines", DELAY_ONLY)}
SHARED_PROGRAM_DRIFT = {"dssra": ("dssra-family", QUEUES), "dssra-no-queue": ("dssra-family", NO_QUEUE),
                        "dssra-loss-weighted": ("dssra-family", LOSS_WEIGHTED)}


def program_of(policy, lyapunov: str) -> tuple[str, int]:
    """(the compiled program's rule, its knob) of a policy: a family where one serves it; a
    user's rule (`scheduling/user_policy.UserPolicy`) is its own program."""
    if not isinstance(policy, str):
        return policy, 0
    shared = dict(SHARED_PROGRAM, **(SHARED_PROGRAM_DRIFT if lyapunov == "drift" else {}))
    return shared.get(policy, (policy, 0))


def program_rule(name: str):
    """The rule of a program name: a family (taking the knob) or a registry rule (ignoring it)."""
    if name in FAMILIES:
        return FAMILIES[name]
    rule = DEVICE_POLICIES[name]
    return lambda problem, Y, V, key, losses, config, knob: rule(problem, Y, V, key, losses, config)


# the rules whose decisions the host checks strictly (C1–C11' or InfeasibleError)
CONSTRAINED = ("dssra", "random", "loss-only", "delay-only", "uniform", "dssra-no-queue", "dssra-loss-weighted")
