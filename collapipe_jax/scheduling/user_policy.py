"""A researcher's own scheduling rule: one JAX function, run by both engines (docs/extending.md).

The rule's signature is the stable, user-facing one; it names nothing of the engine's internals
(free to change):

    rule(inputs: RoundInputs) -> Decision

`RoundInputs` carries the round's draw (`scenario.SystemState`, float32), the queues Y(t) [N]
and V in the working dtype, the round index t, a PRNG key for the rule's random choices (a pure
function of (seed, t): both engines give a rule the same key), the static sizes N, K, J, L, b
and the system-model variant, and three helpers of the uplink (Eq. 10, Eq. 12 and the highest
power meeting C8 ∧ C11'). The rule returns the system model's own `scenario.Decision`: delta
[N, K] integer, rank [N, K] integer (−1 where delta = 0; `index_order(delta)` gives the index
order), m [N] integer, channel [N] integer (−1 = none), p_n_w [N] float. Powers of clusters
without a channel are taken as 0.

`--engine device` scans the rule over rounds and vmaps it over seeds (`scheduling/device/run.py`);
`--engine host` jits it and calls it one round at a time (`host_round.py`), with no NumPy twin.
Both charge the decision with the system model and flag, per round, what it breaks with ONE
function (`decision_flags`: C1, C2, the range of m, C6, C7, C8, C9', C11'); the flags are
reported as `violations` (rounds per constraint and seed), as for the frameworks' fixed rules.
A user rule never makes a round infeasible: what it breaks is reported, and it is charged as
given. A rule that cannot be loaded, has the wrong signature, or returns the wrong structure,
shapes, dtypes or a non-finite power is one `ValidationError` naming the policy.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import pathlib
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.errors import ValidationError
from collapipe_jax.scenario import Decision, SystemState

# what a user rule's decisions are checked against (docs/design.md §3, "Constraints"); "m": 1 ≤ m ≤ b
USER_VIOLATIONS = ("C1", "C2", "m", "C6", "C7", "C8", "C9'", "C11'")


def is_user_policy(spec) -> bool:
    """A policy given as FILE.py:FUNCTION or package.module:function (not a registry name)."""
    return isinstance(spec, UserPolicy) or (isinstance(spec, str) and ":" in spec)


# --------------------------------------------------------------------------- what a rule sees


@dataclasses.dataclass(frozen=True)
class RoundInputs:
    """What a user rule gets for one round (docs/extending.md).

    state  the round's draw and the scenario's constants (`scenario.SystemState`, float32, SI):
           f_hz, phi_flops_per_cycle, p_k_w, gamma_max_k_bytes, E_max_k_j [N, K]; h_n, P_max_n_w,
           E_max_n_j, local_steps [N]; I_i_w, B_U_hz [J]; scalars (gamma0_bytes, z_bits, ...)
    Y      the Lyapunov queues Y(t) [N] (working dtype: float64 by default)
    V      the Lyapunov weight (scalar)
    t      the round index (int32 scalar)
    key    a JAX PRNG key for the rule's random choices, a pure function of (seed, t)
    N, K, J, L, b   the static sizes (clusters, devices per cluster, channels, TEBs, batch)
    variant         the system model's variant ("paper" | "consistent")
    """

    state: SystemState
    Y: jax.Array
    V: jax.Array
    t: jax.Array
    key: jax.Array
    N: int
    K: int
    J: int
    L: int
    b: int
    variant: str = "paper"

    @functools.cached_property
    def _uplink(self):
        from collapipe_jax.scheduling.device.problem import EngineConfig, round_problem

        config = EngineConfig(N=self.N, K=self.K, J=self.J, L=self.L, b=self.b, variant=self.variant,
                              fading=self.state.fading)
        return round_problem(self.state, config).uplink

    def _pairs(self, fn, p):
        up = self._uplink
        p = jnp.broadcast_to(jnp.asarray(p, up.h_n.dtype), (self.N, self.J))
        n, j = jnp.arange(self.N)[:, None], jnp.arange(self.J)[None, :]
        return fn(up, p, n, j)

    def upload_delay(self, p) -> jax.Array:
        """τ^up [N, J] (Eq. 10–11) of every cluster on every channel at power p (scalar, [N, 1] or [N, J])."""
        from collapipe_jax.scheduling.device.resources import upload_delay

        return self._pairs(upload_delay, p)

    def upload_energy(self, p) -> jax.Array:
        """E^com [N, J] (Eq. 12) of every cluster on every channel at power p."""
        from collapipe_jax.scheduling.device.resources import upload_energy

        return self._pairs(upload_energy, p)

    def max_power(self) -> jax.Array:
        """[N, J]: the highest p ≤ P_n^max whose upload energy meets E_n^max (C8 ∧ C11'), NaN
        where no power does."""
        from collapipe_jax.scheduling.device.resources import power_upper_bounds

        return power_upper_bounds(self._uplink)


def index_order(delta) -> jax.Array:
    """rank [N, K] of the pipeline order "scheduled devices in index order" (−1 unscheduled)."""
    scheduled = jnp.asarray(delta) > 0
    return jnp.where(scheduled, jnp.cumsum(scheduled, axis=-1) - 1, -1).astype(jnp.int32)


def even_delta(L: int, K: int, N: int) -> jax.Array:
    """δ [N, K]: L TEBs over all K devices as evenly as integers allow (`scenario.even_split`)."""
    from collapipe_jax.scenario import even_split

    return jnp.broadcast_to(jnp.asarray(even_split(L, K), jnp.int32), (N, K))


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class UserPolicy:
    """A loaded rule: `spec` as given (its name in every report) and the function. Hashable:
    it keys the engines' program caches, so a policy loaded once compiles once per shape."""

    spec: str
    fn: Callable = dataclasses.field(compare=True, repr=False)

    def __str__(self) -> str:
        return self.spec


def _bad(spec: str, what: str) -> ValidationError:
    return ValidationError("policy", f"{spec}: {what}")


def _module_of_file(spec: str, path: str):
    file = pathlib.Path(path)
    if not file.is_file():
        raise _bad(spec, f"no such file {path!r}")
    name = "collapipe_user_policy_" + hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise _bad(spec, f"cannot be loaded: SyntaxError at line {err.lineno}: {err.msg}") from None
    except Exception as err:  # noqa: BLE001 - whatever the user's file raises is named, never a traceback
        raise _bad(spec, f"cannot be loaded: {type(err).__name__}: {err}") from None
    sys.modules[name] = module
    return module


def _module_of_name(spec: str, dotted: str):
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as err:
        raise _bad(spec, f"no module named {err.name!r} (give FILE.py:FUNCTION or package.module:function)") from None
    except Exception as err:  # noqa: BLE001
        raise _bad(spec, f"cannot be imported: {type(err).__name__}: {err}") from None


def load_policy(spec: str) -> UserPolicy:
    """The rule named by FILE.py:FUNCTION (the file is run once per process), or by
    package.module:function (looked up on every call, so that `__main__:function` follows a
    notebook's redefinition; an unchanged function keeps its compiled programs)."""
    where, _, name = str(spec).rpartition(":")
    if not where or not name.isidentifier():
        raise _bad(spec, "must be FILE.py:FUNCTION or package.module:function")
    if where.endswith(".py") or "/" in where:
        return _file_policy(spec, where, name)
    return _policy_of(spec, _module_of_name(spec, where), name)


@functools.lru_cache(maxsize=32)
def _file_policy(spec: str, where: str, name: str) -> UserPolicy:
    return _policy_of(spec, _module_of_file(spec, where), name)


def _policy_of(spec: str, module, name: str) -> UserPolicy:
    fn = getattr(module, name, None)
    if fn is None:
        names = [k for k, v in vars(module).items()
                 if inspect.isfunction(v) and v.__module__ == module.__name__ and not k.startswith("_")]
        from collapipe_jax.scenario import closest_first

        raise _bad(spec, f"has no function {name!r} (functions there, the closest first: "
                         f"{', '.join(closest_first(name, names)) or 'none'})")
    if not callable(fn):
        raise _bad(spec, f"{name!r} is not a function")
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        raise _bad(spec, "must take one argument, the round's RoundInputs: def rule(inputs) -> Decision") from None
    except ValueError:  # a builtin without a signature: tried when traced
        pass
    return UserPolicy(str(spec), fn)


def as_policy(policy) -> UserPolicy:
    return policy if isinstance(policy, UserPolicy) else load_policy(policy)


# --------------------------------------------------------------------------- calling a rule


FIELDS = ("delta", "rank", "m", "channel", "p_n_w")


def decide(policy: UserPolicy, inputs: RoundInputs) -> Decision:
    """The rule's decision, checked for structure, shapes and dtypes (at trace time) and
    normalised: integers int32, p_n_w float32 (what the system model charges) and 0 for a
    cluster without a channel."""
    try:
        out = policy.fn(inputs)
    except ValidationError:
        raise
    except Exception as err:  # noqa: BLE001 - a user's error becomes one line naming the policy
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise _bad(policy.spec, f"raised {type(err).__name__}: {text}") from None
    if not isinstance(out, Decision):
        raise _bad(policy.spec, f"must return a collapipe_jax.Decision(delta, rank, m, channel, p_n_w), "
                                f"not {type(out).__name__}")
    N, K = inputs.N, inputs.K
    shapes = {"delta": (N, K), "rank": (N, K), "m": (N,), "channel": (N,), "p_n_w": (N,)}
    values = {}
    for name in FIELDS:
        x = getattr(out, name)
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = jnp.asarray(x)
        if tuple(x.shape) != shapes[name]:
            raise _bad(policy.spec, f"returned {name} of shape {tuple(x.shape)}, expected {shapes[name]}")
        want = jnp.floating if name == "p_n_w" else jnp.integer
        if not jnp.issubdtype(x.dtype, want):
            raise _bad(policy.spec, f"returned {name} of dtype {x.dtype}, expected "
                                    f"{'a float' if name == 'p_n_w' else 'an integer'} dtype")
        values[name] = x
    channel = values["channel"].astype(jnp.int32)
    return Decision(delta=values["delta"].astype(jnp.int32), rank=values["rank"].astype(jnp.int32),
                    m=values["m"].astype(jnp.int32), channel=channel,
                    p_n_w=jnp.where(channel >= 0, values["p_n_w"], 0.0).astype(jnp.float32))


def round_inputs(state, Y, V, t, key, config) -> RoundInputs:
    """What the rule sees of a round (`config`: the engine's static sizes and variant)."""
    return RoundInputs(state=state, Y=Y, V=V, t=jnp.asarray(t, jnp.int32), key=key, N=config.N, K=config.K,
                       J=config.J, L=config.L, b=config.b, variant=config.variant)


def check_policy_shapes(policy: UserPolicy, scenario, config) -> None:
    """Trace the rule once on the scenario's shapes (no computation): a wrong structure, shape or
    dtype, or a rule that cannot be traced, is an error before any engine runs it."""
    from collapipe_jax.scenario import draw_state, round_key

    def one():
        state = draw_state(scenario, round_key(0, 0))
        dt = jnp.zeros(()).dtype
        return decide(policy, round_inputs(state, jnp.zeros(config.N, dt), jnp.asarray(1.0, dt), 0,
                                           jax.random.PRNGKey(0), config))

    jax.eval_shape(one)


def decision_flags(state: SystemState, decision: Decision, metrics, L: int, b: int) -> jax.Array:
    """bool [N, 8]: per cluster, whether the decision breaks each of USER_VIOLATIONS — C1
    (Σ_k δ_k = L, δ ≥ 0), C2 (the order is a permutation of the S scheduled devices), m in
    [1, b], C6 (a channel in [−1, J), no channel shared), C7 (δ_k γ_0 ≤ γ_k^max), C8
    (0 ≤ p_n ≤ P_n^max, p_n > 0 with a channel), C9' (E_k ≤ E_k^max), C11' (E^com_n ≤ E_n^max).
    One function for both engines (docs/design.md §3)."""
    delta, rank, channel, p = decision.delta, decision.rank, decision.channel, decision.p_n_w
    N, K = delta.shape
    J = state.I_i_w.shape[-1]
    scheduled = delta > 0
    S = jnp.sum(scheduled, axis=1)
    c1 = (jnp.sum(delta, axis=1) != L) | jnp.any(delta < 0, axis=1)
    positions = (rank[:, :, None] == jnp.arange(K)[None, None, :]) & scheduled[:, :, None]
    c2 = jnp.any(jnp.sum(positions, axis=1) != (jnp.arange(K)[None, :] < S[:, None]), axis=1)
    c2 |= jnp.any(~scheduled & (rank != -1), axis=1)
    m_bad = (decision.m < 1) | (decision.m > b)
    shared = jnp.sum((channel[:, None] == channel[None, :]) & (channel[:, None] >= 0), axis=1) > 1
    c6 = shared | (channel < -1) | (channel >= J)
    c7 = jnp.any(scheduled & (delta * state.gamma0_bytes > state.gamma_max_k_bytes), axis=1)
    c8 = (p < 0) | (p > state.P_max_n_w) | ((channel >= 0) & (p <= 0))
    c9 = jnp.any(metrics.E_sch_j > state.E_max_k_j, axis=1)
    c11 = (channel >= 0) & (metrics.E_com_j > state.E_max_n_j)
    return jnp.stack([c1, c2, m_bad, c6, c7, c8, c9, c11], axis=1)


def finite_power(decision: Decision) -> jax.Array:
    return jnp.all(jnp.isfinite(decision.p_n_w))


# --------------------------------------------------------------------------- the host engine


def charged_objective(config, V, Y, decision: Decision, metrics):
    """The round objective of a charged decision under the run's Lyapunov reading: V τ(t) +
    Σ_n Y_n Γ_n (drift) or V τ(t) + Σ_n Y_n (S_n + p_n) (paper, Eq. 32), in Y's dtype."""
    dt = Y.dtype
    if config.lyapunov == "drift":
        weight = metrics.Gamma.astype(dt)
    else:
        weight = jnp.sum(decision.delta > 0, axis=1).astype(dt) + decision.p_n_w.astype(dt)
    return V * metrics.tau_round_s.astype(dt) + jnp.sum(Y * weight)


def charged_round(policy: UserPolicy, state, Y, V, t, key, config):
    """(decision, metrics, flags [N, 8], objective) of one round: the rule, the system model's
    charge (float32, as every rule's), `decision_flags` and the objective. Both engines run it."""
    from collapipe_jax.system import evaluate

    decision = decide(policy, round_inputs(state, Y, V, t, key, config))
    metrics = evaluate(state, decision, config.variant)
    flags = decision_flags(state, decision, metrics, config.L, config.b)
    return decision, metrics, flags, charged_objective(config, V, Y, decision, metrics)


@functools.lru_cache(maxsize=32)
def _host_program(policy: UserPolicy, config):
    """jit(`charged_round`) for the host engine (cached per policy and config)."""
    return jax.jit(lambda *args: charged_round(policy, *args, config))


def host_round_result(policy: UserPolicy, problem, state, Y, seed: int, t: int, key, config):
    """(RoundResult, violations) of one round on the host engine: the rule jitted on the host's
    CPU (float64, as the host's solvers), its decision packaged as the host's `dssra.RoundResult`
    with the system model's charge; what it breaks is in `violations` (one entry per cluster
    and constraint), never an error. `key`: the round's `run.policy_key(seed, t)`, as on the device."""
    from collapipe_jax.scheduling.dssra import RoundResult
    from collapipe_jax.scheduling.segments import SegmentPlan

    started = time.perf_counter()
    with jax.enable_x64(True):
        fn = _host_program(policy, config)
        out = fn(state, jnp.asarray(Y, jnp.float64), jnp.float64(problem.V), jnp.int32(t), key)
        decision, metrics, flags, objective = jax.tree.map(np.asarray, out)
    if not np.all(np.isfinite(decision.p_n_w)):
        raise _bad(policy.spec, f"returned a non-finite p_n_w {decision.p_n_w.tolist()} (seed {seed}, round {t})")
    orders = [tuple(int(k) for k in np.argsort(row, kind="stable") if row[k] >= 0) for row in decision.rank]
    plans = tuple(SegmentPlan(tuple(int(d) for d in decision.delta[n]), orders[n], int(decision.m[n]),
                              float(metrics.tau_pipe_s[n])) for n in range(problem.N))
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    result = RoundResult(problem.scenario, plans, decision.channel.astype(int), f64(decision.p_n_w),
                         f64(metrics.tau_pipe_s), f64(metrics.tau_up_s), float(metrics.tau_round_s),
                         f64(metrics.Gamma), float(objective), 1, False, (time.perf_counter() - started) * 1e3,
                         policy.spec)
    # the decision as the rule returned it (the host's make_decision would refuse a breach of C1/C6/C8)
    result.__dict__["decision"] = Decision(*(jnp.asarray(getattr(decision, f)) for f in FIELDS))
    violations = [{"constraint": name, "cluster": int(n)}
                  for n in range(problem.N) for name, bad in zip(USER_VIOLATIONS, flags[n]) if bad]
    return result, violations


# --------------------------------------------------------------------------- the device engine


def check_device_result(policy: UserPolicy, totals: dict, seeds) -> None:
    """A non-finite power in any seed's round: one error naming the first such seed and round."""
    bad = np.asarray(totals["nonfinite_round"])
    if np.any(bad >= 0):
        i = int(np.argmax(bad >= 0))
        raise _bad(policy.spec, f"returned a non-finite p_n_w (seed {int(np.asarray(seeds)[i])}, round {int(bad[i])})")
