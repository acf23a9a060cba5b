"""Schedules on the device: T rounds in order (`lax.scan`, the queues carried), one independent
schedule per seed (`vmap`), the seeds sharded over every device and process (`system.sharded`).

Each round is the host round (`scheduling/host_round.py`) step for step: draw the round's state
from (seed, t) on the device (`scenario.draw_state`, float32 as on the host), decide with a rule
of `policies.DEVICE_POLICIES` in the working dtype, charge the decision with the system model
(`system.evaluate`, float32 as on the host), split each cluster's time into computation, D2D and
upload, flag the constraints it breaks (C7, C9', C11'), and update the queues (Eq. 29:
Y ← max(Y + Γ_n − Γ^max, 0)). A round with no feasible decision (where the host raises
InfeasibleError) stops that seed's schedule: its code, round and cluster are reported and its
later rounds are not charged (the other seeds go on).

A user's rule (`scheduling/user_policy.py`, given as FILE.py:FUNCTION or a `UserPolicy`) is a
program of its own: its decision is charged the same way, never infeasible, and what it breaks
is flagged by `user_policy.decision_flags` (the eight names of `USER_VIOLATIONS`, which the
result then carries as `violation_names`); a non-finite power in any round is an error.

`run_schedules` returns NumPy arrays with a leading seed axis; `runs_json` turns them into the
`schedule --seeds` JSON contract (docs/design.md §6).
"""

from __future__ import annotations

import dataclasses
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.errors import ValidationError
from collapipe_jax.programs import program_cache
from collapipe_jax.scenario import RANGE_FIELDS, Decision, Scenario, draw_state, round_key
from collapipe_jax.scheduling import user_policy
from collapipe_jax.scheduling.device import constraints
from collapipe_jax.scheduling.device.dssra import RoundDecision
from collapipe_jax.scheduling.device.policies import DEVICE_POLICIES, program_of, program_rule
from collapipe_jax.scheduling.device.problem import EngineConfig, round_problem
from collapipe_jax.system import evaluate, sharded
from collapipe_jax.system.latency import pipeline_compute_latency

POLICY_STREAM = 0x5EED  # folded into the round's key: the rule's random choices, apart from the draw
VIOLATIONS = ("C7", "C9'", "C11'")  # what a charged decision may break (the fixed rules only)
DTYPES = ("float64", "float32")
CPU_CHUNK, ACCELERATOR_CHUNK = 64, 8192


# the scenario's numbers a draw reads (`scenario.draw_state`); they travel as data, so that one
# compiled program serves every scenario of the same shape (uploads, models, budgets)
DRAWN_FIELDS = tuple(RANGE_FIELDS) + (
    "gamma_max_k_bytes", "E_max_k_j", "E_max_n_j", "P_max_n_w", "h_dd", "I_dd_w", "B_dd_hz", "N0_w_per_hz",
    "local_steps", "o_fwd_flops", "o_bwd_flops", "z_bits", "g_bits", "z_enc_bits", "uploaded_theta_bits",
    "gamma0_bytes", "kappa", "beta", "eta", "phi_seg", "C_noise")


def scenario_numbers(scenario: Scenario) -> dict[str, np.ndarray]:
    """The numbers of a scenario that its draws read, as float64 arrays (ranges as [2])."""
    return {name: np.asarray(getattr(scenario, name), np.float64) for name in DRAWN_FIELDS}


def scenario_view(shape: "Shape", numbers: dict):
    """What `draw_state` reads of a scenario: the static sizes and the traced numbers."""
    return types.SimpleNamespace(N=shape.N, K=shape.K, J=shape.J, L=shape.L, b=shape.b, fading=shape.fading,
                                 **numbers)


def policy_key(seed, t):
    """The key of round t's random choices (`random`): a pure function of (seed, t)."""
    return jax.random.fold_in(round_key(seed, t), POLICY_STREAM)


def to_decision(dec: RoundDecision) -> Decision:
    """The `Decision` pytree the system model charges: ranks from (δ, last) — the scheduled
    devices other than the last in index order, then the last one."""
    K = dec.delta.shape[-1]
    idx = jnp.arange(K)
    scheduled = dec.delta > 0
    is_last = idx[None, :] == dec.last[:, None]
    others = scheduled & ~is_last
    rank = jnp.where(others, jnp.cumsum(others, axis=1) - 1, -1)
    rank = jnp.where(is_last & scheduled, jnp.sum(others, axis=1, keepdims=True), rank)
    return Decision(delta=dec.delta, rank=rank.astype(jnp.int32), m=dec.m, channel=dec.channel,
                    p_n_w=dec.p_n_w.astype(jnp.float32))


def charge(state, decision: Decision, variant: str):
    """The system model's charge of a decision (float32, as the host round) with its time split
    (system.report.time_split) and the constraints it breaks (constraint_violations)."""
    metrics = evaluate(state, decision, variant)
    scheduled = decision.delta > 0
    last = scheduled & (decision.rank == jnp.sum(scheduled, axis=1, keepdims=True) - 1)
    cmp = pipeline_compute_latency(metrics.tau_cmp_s, decision.m.astype(jnp.float32), scheduled, last, variant)
    broken = jnp.stack([
        jnp.any(decision.delta * state.gamma0_bytes > state.gamma_max_k_bytes),
        jnp.any(metrics.E_sch_j > state.E_max_k_j),
        jnp.any(metrics.E_com_j > state.E_max_n_j),
    ])
    return metrics, cmp, metrics.tau_pipe_s - cmp, broken


def schedule_one(scenario, program: str, config: EngineConfig, rounds: int, seed, V, Gamma_max, knob=0):
    """One seed's schedule of `rounds` rounds: a pytree of per-round arrays [T, ...] and totals.
    `scenario`: a `Scenario`, or what `scenario_view` makes of its numbers; `program`, `knob`: a
    rule's program and its knob (`policies.program_of`)."""
    user = None if isinstance(program, str) else program  # a user's rule (scheduling/user_policy.py)
    rule = program_rule(program) if user is None else None
    dt = jnp.asarray(V).dtype

    def step(carry, t):
        Y, alive, carried_code, code_round, code_cluster = carry
        state = draw_state(scenario, round_key(seed, t))
        if not config.uploads_model:  # PipeLine: no FL aggregation, only z^enc goes up
            state = state.replace(theta_enc_bits=state.theta_enc_bits * 0.0)
        if user is None:
            dec = rule(round_problem(state, config), Y, V, policy_key(seed, t), None, config, knob)
            decision = to_decision(dec)
            metrics, cmp, dd, broken = charge(state, decision, config.variant)
            code, cluster, objective, iterations = dec.code, dec.code_cluster, dec.objective, dec.iterations
            p_n_w = dec.p_n_w
            extra = {}
        else:  # never infeasible: what the decision breaks is flagged (user_policy.decision_flags)
            decision, _, flags, objective = user_policy.charged_round(user, state, Y, V, t, policy_key(seed, t),
                                                                      config)
            metrics, cmp, dd, _ = charge(state, decision, config.variant)
            broken = jnp.any(flags, axis=0)
            code, cluster, iterations = jnp.int32(constraints.FEASIBLE), jnp.int32(-1), jnp.int32(1)
            p_n_w = decision.p_n_w.astype(dt)
            extra = {"finite": user_policy.finite_power(decision) | ~alive}
        Y_next = jnp.maximum(Y + metrics.Gamma.astype(dt) - Gamma_max, 0.0)
        failed = alive & (code != constraints.FEASIBLE)
        charged = alive & ~failed
        keep = lambda new, old: jnp.where(charged, new, old)  # noqa: E731
        record = dict(
            charged=charged, S=jnp.sum(decision.delta > 0, axis=1), m=decision.m, delta=decision.delta,
            rank=decision.rank, channel=decision.channel, p_n_w=p_n_w, tau_pipe_s=metrics.tau_pipe_s,
            tau_up_s=metrics.tau_up_s, tau_pipe_cmp_s=cmp, tau_pipe_dd_s=dd,
            round_cmp_s=jnp.where(charged, jnp.max(cmp), 0.0), round_dd_s=jnp.where(charged, jnp.max(dd), 0.0),
            round_up_s=jnp.where(charged, jnp.max(metrics.tau_up_s), 0.0),
            tau_round_s=jnp.where(charged, metrics.tau_round_s, 0.0), Y=Y, Y_next=keep(Y_next, Y),
            Gamma=metrics.Gamma, objective=objective, iterations=iterations, broken=broken & charged, **extra)
        carry = (keep(Y_next, Y), charged, jnp.where(failed, code, carried_code), jnp.where(failed, t, code_round),
                 jnp.where(failed, cluster, code_cluster))
        return carry, record

    N = config.N
    init = (jnp.zeros(N, dt), jnp.bool_(True), jnp.int32(constraints.FEASIBLE), jnp.int32(-1), jnp.int32(-1))
    (Y, _, code, code_round, code_cluster), per_round = jax.lax.scan(step, init, jnp.arange(rounds, dtype=jnp.int32))
    f64 = lambda x: x.astype(dt)  # noqa: E731  the totals add float32 charges in the working dtype, as the host does in float
    totals = dict(total_latency_s=jnp.sum(f64(per_round["tau_round_s"])),
                  total_cmp_s=jnp.sum(f64(per_round["round_cmp_s"])), total_dd_s=jnp.sum(f64(per_round["round_dd_s"])),
                  total_up_s=jnp.sum(f64(per_round["round_up_s"])), final_Y=Y, code=code, code_round=code_round,
                  code_cluster=code_cluster, max_Y=jnp.max(per_round["Y_next"]),
                  violation_rounds=jnp.sum(per_round["broken"], axis=0),
                  mean_Gamma=jnp.sum(jnp.where(per_round["charged"], jnp.mean(per_round["Gamma"], axis=-1), 0.0))
                  / jnp.maximum(jnp.sum(per_round["charged"]), 1))
    if user is not None:  # the first round whose decision had a non-finite power (−1: none)
        finite = per_round.pop("finite")
        totals["nonfinite_round"] = jnp.where(jnp.all(finite), -1, jnp.argmin(finite)).astype(jnp.int32)
    return totals, per_round


@dataclasses.dataclass(frozen=True)
class Shape:
    """A scenario's sizes: what its programs' shapes depend on."""

    N: int
    K: int
    J: int
    L: int
    b: int
    fading: str

    @classmethod
    def of(cls, s: Scenario) -> "Shape":
        return cls(s.N, s.K, s.J, s.L, s.b, s.fading)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one compiled program runs: every seed of a batch shares it (and any scenario of
    the same shape: the scenario's numbers are data)."""

    shape: Shape
    program: str  # a registry rule, or a family of rules told apart by a knob (`policies.program_of`)
    config: EngineConfig
    rounds: int
    keep: tuple[str, ...] = ()  # the per-round arrays that leave the device (the totals always do)


@program_cache(maxsize=64)  # the seeded sweeps of one `sweep all` hold ~36 programs
def _program(spec: RunSpec, mesh, x64: bool):  # x64 keys the cache: a program traced in float64 is another program
    """jit(shard_map(lax.map(vmap over a chunk of seeds))) for one spec (cached per mesh)."""
    def per_chunk(batch):  # (seeds, V, Γ^max, knobs, scenario numbers), each [chunk, ...]: the chunk axis last
        seeds, V, Gamma_max, knobs, numbers = batch

        def one(seed, v, g, knob, nums):
            view = scenario_view(spec.shape, nums)
            totals, per_round = schedule_one(view, spec.program, spec.config, spec.rounds, seed, v, g, knob)
            return totals, {key: per_round[key] for key in spec.keep}
        return jax.vmap(one, in_axes=-1, out_axes=-1)(seeds, V, Gamma_max, knobs, numbers)

    return jax.jit(sharded.map_chunks(per_chunk, mesh, check_vma=False))


def check_policy(policy) -> None:
    if not user_policy.is_user_policy(policy) and policy not in DEVICE_POLICIES:
        raise ValidationError("policy", f"must be one of {sorted(DEVICE_POLICIES)} on the device engine "
                                        "(random-feasible is host-only)", policy)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValidationError("dtype", f"must be one of {list(DTYPES)}", dtype)


PER_ROUND = ("charged", "S", "m", "delta", "rank", "channel", "p_n_w", "tau_pipe_s", "tau_up_s", "tau_pipe_cmp_s",
             "tau_pipe_dd_s", "round_cmp_s", "round_dd_s", "round_up_s", "tau_round_s", "Y", "Y_next", "Gamma",
             "objective", "iterations", "broken")


def run_schedules(scenario: Scenario, policy: str, seeds, rounds: int, config: EngineConfig | None = None,
                  V=None, per_round: bool | tuple[str, ...] = False, dtype: str = "float64", mesh=None,
                  chunk: int | None = None, Gamma_max=None):
    """One schedule per seed (and per V when V is an array of the seeds' length): a dict of NumPy
    arrays with a leading seed axis (`totals`) and, with `per_round` (True: every key of
    PER_ROUND, or a tuple of them), [seeds, T, ...] arrays in `rounds`. `chunk`: seeds vectorised
    together on a device (default: 64 on a CPU, where larger chunks spill the caches — measured in
    bench_engine —, 8,192 on an accelerator)."""
    check_policy(policy)
    check_dtype(dtype)
    config = EngineConfig.of(scenario) if config is None else config
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    B = seeds.size
    V = np.broadcast_to(np.asarray(scenario.V if V is None else V, np.float64), (B,))
    G = np.broadcast_to(np.asarray(scenario.Gamma_max if Gamma_max is None else Gamma_max, np.float64), (B,))
    chunk = chunk or (CPU_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK)
    keep = PER_ROUND if per_round is True else tuple(per_round or ())
    if not set(keep) <= set(PER_ROUND):
        raise ValidationError("per_round", f"must name arrays among {list(PER_ROUND)}", keep)
    if user_policy.is_user_policy(policy):  # loaded once per spec, its shapes checked before compiling
        policy = user_policy.as_policy(policy)
        user_policy.check_policy_shapes(policy, scenario, config)
    program, knob = program_of(policy, config.lyapunov)
    spec = RunSpec(Shape.of(scenario), program, config, int(rounds), keep)
    x64 = dtype == "float64"
    mesh = sharded.batch_mesh() if mesh is None else mesh
    with jax.enable_x64(x64):
        fn = _program(spec, mesh, x64)
        float_t = np.float64 if x64 else np.float32
        numbers = {k: np.broadcast_to(v.astype(float_t), (B,) + v.shape) for k, v in scenario_numbers(scenario).items()}
        knobs = np.full(B, knob, np.int32)
        batch = (seeds.astype(np.int64 if x64 else np.uint32), V.astype(float_t), G.astype(float_t), knobs, numbers)
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharded.BATCH_AXIS))
        totals, rounds_out = sharded.run_chunked(fn, sharding, mesh, batch, chunk)
        totals, rounds_out = jax.tree.map(np.asarray, (totals, rounds_out))
    if isinstance(policy, user_policy.UserPolicy):
        user_policy.check_device_result(policy, totals, seeds)
        return {"totals": totals, "rounds": rounds_out, "violation_names": user_policy.USER_VIOLATIONS}
    return {"totals": totals, "rounds": rounds_out}


def runs_json(result: dict, seeds, scenario: Scenario, per_round: bool = False) -> list[dict]:
    """The `schedule --seeds` records, one per seed: seed, total_latency_s, final_Y, violations
    (rounds per constraint the decisions broke), infeasible (null, or the constraint, cluster
    and round where no feasible decision existed; the totals and queues of such a seed are null,
    as on the host engine)."""
    t = result["totals"]
    names = result.get("violation_names", VIOLATIONS)
    out = []
    for i, seed in enumerate(np.asarray(seeds).reshape(-1)):
        code = int(t["code"][i])
        infeasible = None if code == constraints.FEASIBLE else {
            "constraint": constraints.name(code), "cluster": int(t["code_cluster"][i]),
            "round": int(t["code_round"][i])}
        # an infeasible seed stopped charging at its infeasible round: its partial sums are no
        # run's totals, so they are null, as the host engine reports them (the table shows '-')
        done = infeasible is None
        record = {
            "seed": int(seed),
            **{key: float(t[key][i]) if done else None
               for key in ("total_latency_s", "total_cmp_s", "total_dd_s", "total_up_s", "max_Y")},
            "final_Y": [float(v) for v in t["final_Y"][i]] if done else None,
            "violations": [{"constraint": name, "rounds": int(n)}
                           for name, n in zip(names, t["violation_rounds"][i]) if n > 0],
            "infeasible": infeasible,
        }
        if per_round:
            record["rounds"] = rounds_json(result["rounds"], i, names)
        out.append(record)
    return out


def rounds_json(per_round: dict, i: int, names=VIOLATIONS) -> list[dict]:
    """Seed i's charged rounds in the keys of `schedule`'s per-round records."""
    r = jax.tree.map(lambda x: x[i], per_round)
    out = []
    for t in range(r["charged"].shape[0]):
        if not r["charged"][t]:
            break
        rank = r["rank"][t]
        out.append({
            "round": t, "S": r["S"][t].tolist(), "m": r["m"][t].tolist(), "delta": r["delta"][t].tolist(),
            "order": [[int(k) for k in np.argsort(row) if row[k] >= 0] for row in rank],
            "channel": [int(c) if c >= 0 else None for c in r["channel"][t]],
            "p_n_w": r["p_n_w"][t].astype(float).tolist(),
            **{key: r[key][t].astype(float).tolist() for key in
               ("tau_pipe_s", "tau_up_s", "tau_pipe_cmp_s", "tau_pipe_dd_s", "Y", "Y_next", "Gamma")},
            **{key: float(r[key][t]) for key in ("round_cmp_s", "round_dd_s", "round_up_s", "tau_round_s", "objective")},
            "iterations": int(r["iterations"][t]),
            "violations": [{"constraint": name} for name, b in zip(names, r["broken"][t]) if b],
        })
    return out


def timed_run(*args, **kwargs):
    """`run_schedules` with its wall time in seconds (compile included)."""
    started = time.perf_counter()
    out = run_schedules(*args, **kwargs)
    return out, time.perf_counter() - started
