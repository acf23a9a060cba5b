"""The host part of one round (docs/design.md §1), shared by `collapipe train` and `collapipe schedule`:

  1. draw the channel state and device capabilities  (scenario.draw_state, seeded by (seed, t))
  2. decide X(t) = [m, S, δ, order, I, p]              (a policy of scheduling.policies)
  3. charge latency, energy, ε and Γ of X(t)           (system.evaluate: Eq. 10–16, 25–28, 33),
     split each cluster's time into computation, D2D   (system.report.time_split)
     and upload, and list the constraints it breaks    (C7, C9', C11'); a NaN or infinite charge
     stops the run with one line naming it (docs/design.md §8)
  4. update the Lyapunov queues                        (Eq. 29: Y ← max(Y + Γ_n − Γ^max, 0))

Everything is a pure function of (context, t, Y, losses), so a resumed run repeats it exactly.
The round's small jitted computations (the draw, the system model) run on the host's CPU
device, so that on a GPU/TPU they do not queue behind the training step: the trainer decides
round t+1 while the accelerator runs round t.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.errors import InfeasibleError, NonFiniteError
from collapipe_jax.io import first_non_finite
from collapipe_jax.scenario import Decision, Scenario, SystemState, draw_state, round_key
from collapipe_jax.scheduling import lyapunov
from collapipe_jax.scheduling.dssra import RoundResult, round_problem
from collapipe_jax.scheduling.policies import POLICIES, policy_rng
from collapipe_jax.system import Metrics, evaluate
from collapipe_jax.system.report import constraint_violations, metrics_dict, time_split

draw = jax.jit(draw_state, static_argnums=0)


@functools.lru_cache(maxsize=1)
def host_device():
    """The CPU device, where the host round computes (None when JAX runs without a CPU backend)."""
    try:
        return jax.devices("cpu")[0]
    except RuntimeError:
        return None


@dataclasses.dataclass(frozen=True)
class HostContext:
    """What stays fixed over the rounds of a run.

    uploads_model: False for a framework without FL aggregation (PipeLine): the CU uploads only
    the encoder output, so θ^enc is not charged (the state's theta_enc_bits is zeroed before the
    policy sees it).
    """

    scenario: Scenario
    policy: str = "dssra"  # a registry name, or a user's rule (`user_policy.UserPolicy`)
    seed: int = 0
    variant: str = "paper"
    lyapunov: str = "drift"
    V: float | None = None  # None: the scenario's
    solver: str = "exact"
    m_rule: str = "stationary"
    uploads_model: bool = True
    local_steps: tuple[int, ...] | None = None  # E_n per cluster (None: the scenario's E for every cluster)
    stages: int | None = None  # S and m of the `default` policy's fixed plan (None: all K devices, m = 4)
    micro_batches: int | None = None


@dataclasses.dataclass(frozen=True)
class HostRound:
    t: int
    state: SystemState  # the round's draw, as charged
    result: RoundResult  # the policy's decision with its host (float64) evaluation
    metrics: Metrics  # the system model's charge of the decision (float32, jitted)
    violations: list[dict]  # constraints the decision breaks (empty for the constrained policies)
    split: dict  # time_split: per-cluster computation / D2D / upload times and the round's largest
    Y: np.ndarray  # queues the decision was made with
    Y_next: np.ndarray  # Eq. 29
    host_ms: float  # wall time of steps 1–4

    @property
    def decision(self) -> Decision:
        return self.result.decision


def run_host_round(ctx: HostContext, t: int, Y, losses=None) -> HostRound:
    """Steps 1–4 for round t with queues Y(t) and the previous round's losses (None: none)."""
    with jax.default_device(host_device()):
        return _host_round(ctx, t, Y, losses)


def _host_round(ctx: HostContext, t: int, Y, losses) -> HostRound:
    started = time.perf_counter()
    sc = ctx.scenario
    state = draw(sc, round_key(ctx.seed, t))
    if not ctx.uploads_model:
        state = state.replace(theta_enc_bits=state.theta_enc_bits * 0.0)
    if ctx.local_steps is not None:
        state = state.replace(local_steps=jnp.asarray(ctx.local_steps, jnp.float32))
    problem = round_problem(sc, state, ctx.variant, ctx.lyapunov, ctx.V)
    Y = np.asarray(Y, np.float64)
    if not isinstance(ctx.policy, str):  # a user's JAX rule (scheduling/user_policy.py), jitted on the host
        return _user_round(ctx, t, Y, state, problem, started)
    try:
        plan = {k: v for k, v in (("stages", ctx.stages), ("micro_batches", ctx.micro_batches)) if v is not None}
        result = POLICIES[ctx.policy](problem, Y, policy_rng(ctx.seed, t), losses, solver=ctx.solver,
                                      m_rule=ctx.m_rule, **plan)
    except InfeasibleError as err:
        report = dict(err.report, round=t, policy=ctx.policy)
        report["message"] = f"round {t}: {err.report.get('message', err)}"
        raise InfeasibleError(report) from None
    metrics = evaluate(state, result.decision, ctx.variant)
    if (bad := first_non_finite(metrics_dict(metrics))) is not None:  # never charge or queue a NaN
        raise NonFiniteError(f"round {t}: {bad[0]}", bad[1])
    violations = constraint_violations(state, result.decision, metrics)
    Y_next = lyapunov.update_queues(Y, np.asarray(metrics.Gamma, np.float64), sc.Gamma_max)
    split = time_split(result.decision, metrics, ctx.variant)
    return HostRound(t, state, result, metrics, violations, split, Y, Y_next, 1e3 * (time.perf_counter() - started))


def _user_round(ctx: HostContext, t: int, Y, state, problem, started) -> HostRound:
    """Steps 2–4 for a user's rule: its decision with every constraint it breaks in `violations`
    (C1–C11', `user_policy.decision_flags`), never an InfeasibleError."""
    from collapipe_jax.scheduling import user_policy
    from collapipe_jax.scheduling.device.problem import EngineConfig
    from collapipe_jax.scheduling.device.run import policy_key

    config = EngineConfig.of(ctx.scenario, variant=ctx.variant, lyapunov=ctx.lyapunov)
    result, violations = user_policy.host_round_result(ctx.policy, problem, state, Y, ctx.seed, t,
                                                       policy_key(ctx.seed, t), config)
    metrics = evaluate(state, result.decision, ctx.variant)
    if (bad := first_non_finite(metrics_dict(metrics))) is not None:
        raise NonFiniteError(f"round {t}: {bad[0]}", bad[1])
    Y_next = lyapunov.update_queues(Y, np.asarray(metrics.Gamma, np.float64), ctx.scenario.Gamma_max)
    split = time_split(result.decision, metrics, ctx.variant)
    return HostRound(t, state, result, metrics, violations, split, Y, Y_next, 1e3 * (time.perf_counter() - started))
