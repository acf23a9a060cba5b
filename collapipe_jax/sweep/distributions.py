"""Distributions of the round latency τ(t) (Eq. 26) and the round energy over random channel and
device draws, for three families of decisions, and a dense ∂τ/∂p_n map: the sweep sized for an
accelerator (10^8 pairs at `--scale paper`).

Settings (as in the policy comparison, `sweep.policies.policy_scenario`, N = 3, J = 4):
paper-bert with the LoRA upload on Table II as published, and with the full encoder upload
(E_n^max raised to 1000 J). Decision families, each under both variants of the system model:

* ``uniform`` — `scenario.default_decision`: δ split evenly over the K devices in index order,
  m = 4, channel n for cluster n, p_n = P_n^max; the same decision on every draw.
* ``random``  — a random plan per pair (`random_decision`): S uniform in 1..min(K, L), the S
  devices and their order a uniformly random arrangement, δ a uniformly random composition of
  L into S positive parts, m uniform in 1..b, distinct random channels, p_n uniform in
  [P_n^max / 10, P_n^max]. It satisfies C1, C2, C6 and C8 by construction, not C7/C9'/C11'
  (their satisfaction is counted).
* ``dssra``   — DSSRA (Alg. 4, queues Y = 0) solved for every pair on its own draw by the device
  engine (`scheduling/device`, float32 inside the reduction), each variant its own decision; a
  draw with no feasible decision is counted (`unsolved`) and left out of the statistics. For
  comparison, the host solvers' DSSRA on R reference draws is listed with each decision's τ(t)
  on its own draw (`dssra-references`).

Pair i of a setting is drawn from counter-based random numbers: number w of pair i is the
threefry hash of (i, w) under the setting's key (`pair_uniforms`), mapped to a state exactly as
`scenario.draw_state` maps its uniforms (`state_from_uniforms`) and to a random plan or a table
row. Every family and variant sees the same states (paired comparisons; both variants evaluate
the same pairs; DSSRA, where a scale gives it fewer pairs, the first of them), and the numbers
do not depend on the chunk size, the device count or the number of processes. The pairs are drawn ON the devices, chunk by chunk, evaluated in the batch-minor
layout and reduced there (`system.sharded.chunked_reduction`): per pair τ(t) and E(t) = Σ_n
(E^com_n + E^pipe_n) go into 2^14-bin log10 histograms over [1e-6, 1e10] with exact sums, minima
and maxima, and C7/C9'/C11' are counted; nothing of size 10^8 exists anywhere. Quantiles come
from the histograms: each is within one bin ratio, 10^(16/2^14) ≈ 1.0023, of the exact order
statistic of rank ⌊q (n − 1)⌋.

The ∂τ/∂p_n map: the mean state and the uniform decision with every p_n = p and every I_i = I
on a grid, through `system.sharded.power_grad_sharded` (value and jax.grad); the table gives
Σ_n ∂τ/∂p_n, the derivative of τ(t) when all CUs change their power together (all clusters
tie at the mean state, and JAX splits the max's gradient evenly between ties).

Scales (pairs per setting and family, each evaluated under both variants):
``quick`` 2^15 (DSSRA, solved on every pair: its first 2^13), 147 456 pairs in all, 8 DSSRA
reference draws, a 32 × 32 map: about two minutes on two CPU cores shared with other work, most of
it DSSRA's compile and solves (2^15 solved pairs took 2 × 130 s there). ``paper`` 2^24,
100 663 296 pairs (2 × 10^8 evaluations), 64 reference draws, a 128 × 128 map: meant for a GPU or TPU; without one it still runs, after a
warning on stderr and an estimate of its duration from the first group's measured rate (1.3e5
to 4.3e5 pairs/s by family on two CPU cores busy with other work: about 8 minutes).
The chunk is sized to the device (`chunk_size`); the summary records the device kind and the
measured pairs/s.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p
from jax.sharding import NamedSharding, PartitionSpec

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.programs import program_cache
from collapipe_jax.scenario import RANGE_FIELDS, Decision, Scenario, SystemState, default_decision, mean_state
from collapipe_jax.scheduling.device.dssra import dssra_round
from collapipe_jax.scheduling.device.problem import EngineConfig
from collapipe_jax.scheduling.device.problem import round_problem as device_problem
from collapipe_jax.scheduling.device.run import to_decision
from collapipe_jax.scheduling.dssra import round_problem
from collapipe_jax.scheduling.policies import POLICIES, policy_rng
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep import plots
from collapipe_jax.sweep.policies import policy_scenario
from collapipe_jax.system import evaluate
from collapipe_jax.system.latency import VARIANTS
from collapipe_jax.system.sharded import BATCH_AXIS, batch_mesh, chunked_reduction, global_array, power_grad_sharded
from collapipe_jax.system.sharded import stack

NAME = "distributions"
FAMILIES = ("uniform", "random", "dssra")
QUANTITIES = ("tau_round_s", "energy_j")
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# log10 histogram: 2^14 bins over 16 decades, one under- and one overflow bin at the ends
LOG_LO, LOG_HI, BINS = -6.0, 10.0, 1 << 14
BIN_RATIO = 10.0 ** ((LOG_HI - LOG_LO) / BINS)
CPU_CHUNK = 8192  # the system benchmark's chunk: one chunk's intermediates stay in cache
MAX_CHUNK = 1 << 20
PAIR_BYTES = 4096  # rough working set of one pair in a chunk (draw, state, decision, metrics)
MAX_CHUNKS_PER_CALL = 64  # per device; a group's calls report progress and keep launches short
_STATE_STREAM, _REFERENCE_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    pairs: int  # per (setting, family), each evaluated under both variants
    references: int  # DSSRA reference draws per setting (solved under each variant)
    grid: int  # points per axis of the ∂τ/∂p_n map
    seed: int = 0
    chunk: int | None = None  # pairs per chunk; None: sized to the device (`chunk_size`)
    solved_pairs: int | None = None  # the DSSRA family's pairs, its first ones (None: `pairs`)
    families: tuple[str, ...] = FAMILIES  # the decision families drawn, in FAMILIES' order

    def __post_init__(self):
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"families: {unknown or 'none'} given; expected a non-empty subset of {FAMILIES}")


SCALE_CONFIGS = {
    "quick": DistributionConfig(pairs=1 << 15, references=8, grid=32, solved_pairs=1 << 13),
    "paper": DistributionConfig(pairs=1 << 24, references=64, grid=128),
}


def family_pairs(config: DistributionConfig, family: str) -> int:
    """Pairs of a family: DSSRA solves each of its pairs (the sweep's cost on a CPU), so a scale
    may give it fewer, pairs 0, 1, … as the other families: the same states."""
    return (config.solved_pairs or config.pairs) if family == "dssra" else config.pairs


def settings() -> list[tuple[str, Scenario]]:
    """paper-bert with N = 3, J = 4 as in the policy comparison: the LoRA upload on Table II as
    published, and the full encoder upload (E_n^max raised to 1000 J, which it needs)."""
    return [("paper-bert, lora:8, Table II", policy_scenario("lora:8", 3, 4)),
            ("paper-bert, full upload, E_n^max 1000 J", policy_scenario("full", 3, 4))]


# --------------------------------------------------------------------------- device


def device_info() -> dict:
    """The default backend: kind, platform, device and process counts, memory of a local device."""
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() or {}
    return {"kind": dev.device_kind, "platform": dev.platform, "devices": jax.device_count(),
            "processes": jax.process_count(), "memory_bytes": stats.get("bytes_limit")}


def chunk_size(info: dict, pairs: int) -> int:
    """Pairs per chunk: 8192 on the CPU (cache-sized); on an accelerator a power of two that
    keeps a chunk's working set within 1/16 of the device's memory, at most 2^20 (bench_system's
    measured plateau); never more than a device's share of `pairs`."""
    if info["platform"] == "cpu":
        chunk = CPU_CHUNK
    else:
        memory = info["memory_bytes"] or 16 * MAX_CHUNK * PAIR_BYTES
        chunk = min(MAX_CHUNK, 1 << max(10, int(math.log2(memory / (16 * PAIR_BYTES)))))
    share = -(-pairs // info["devices"])
    return max(1, min(chunk, 1 << max(0, (share - 1).bit_length())))


# --------------------------------------------------------------------------- draws


@dataclasses.dataclass(frozen=True)
class PairSpace:
    """What drawing a pair takes from a scenario: sizes, ranges and P_n^max. The constants travel
    in a base state (`mean_state`) passed as an argument, so settings that differ only in
    constants share one compiled reduction."""

    N: int
    K: int
    J: int
    L: int
    b: int
    P_max_n_w: float
    ranges: tuple[tuple[float, float], ...]  # scenario.RANGE_FIELDS, in order

    @classmethod
    def of(cls, s: Scenario) -> "PairSpace":
        return cls(s.N, s.K, s.J, s.L, s.b, s.P_max_n_w, tuple(getattr(s, f) for f in RANGE_FIELDS))

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:  # of the RANGE_FIELDS
        return ((self.N, self.K),) * 3 + ((self.N,), (self.J,), (self.J,))

    @property
    def state_words(self) -> int:
        """U(0, 1) numbers per state: f_k, ϕ_k, p_k [N, K], h_n [N], I_i, B_i [J]."""
        return sum(math.prod(shape) for shape in self.shapes)

    @property
    def channel_slots(self) -> int:
        return self.J + max(self.N - self.J, 0)  # slots ≥ J mean "no channel" (only when N > J)

    @property
    def decision_words(self) -> int:
        """U(0, 1) numbers per random decision: S [N], arrangement [N, K], cuts [N, L − 1],
        m [N], channel slots, p_n [N]."""
        return self.N * (3 + self.K + self.L - 1) + self.channel_slots


def state_from_uniforms(space: PairSpace, base: SystemState, u) -> SystemState:
    """One pair's state from `state_words` U(0, 1) numbers: every ranged quantity is low + (high −
    low) u in float32, `scenario.draw_state`'s own mapping; the constants are `base`'s."""
    ends = np.cumsum([0] + [math.prod(shape) for shape in space.shapes])
    ranged = {name: jnp.float32(lo) + (jnp.float32(hi) - jnp.float32(lo)) * u[a:b].reshape(shape)
              for name, (lo, hi), shape, a, b in zip(RANGE_FIELDS, space.ranges, space.shapes, ends[:-1], ends[1:])}
    return base.replace(f_hz=ranged["f_hz"], phi_flops_per_cycle=ranged["phi_flops_per_cycle"],
                        p_k_w=ranged["p_k_w"], h_n=ranged["h_n"], I_i_w=ranged["I_i_w"], B_U_hz=ranged["B_U_hz"])


def positions(u):
    """The rank of each u[..., k] among its row (ties broken by index): a uniformly random
    arrangement from uniform u, by comparisons instead of a sort (cheap under vmap)."""
    k = jnp.arange(u.shape[-1])
    before = (u[..., :, None] < u[..., None, :]) | ((u[..., :, None] == u[..., None, :]) & (k[:, None] < k))
    return jnp.sum(before, axis=-2)


def random_decision(space: PairSpace, u) -> Decision:
    """A random plan for every cluster (see the module docstring) from `decision_words` U(0, 1)
    numbers; one pair, unbatched."""
    s = space
    N, K, L = s.N, s.K, s.L
    ends = np.cumsum([0, N, N * K, N * (L - 1), N, s.channel_slots, N])
    u_s, u_order, u_cut, u_m, u_ch, u_p = (u[a:b] for a, b in zip(ends[:-1], ends[1:]))
    S = 1 + jnp.minimum(jnp.floor(u_s * min(K, L)), min(K, L) - 1).astype(jnp.int32)
    position = positions(u_order.reshape(N, K))  # the first S positions are scheduled, in order
    rank = jnp.where(position < S[:, None], position, -1)
    # S − 1 distinct cuts among the L − 1 gaps between TEBs: a uniformly random composition
    cut = (positions(u_cut.reshape(N, L - 1)) < (S - 1)[:, None]).astype(jnp.int32)
    stage_of_teb = jnp.concatenate([jnp.zeros((N, 1), jnp.int32), jnp.cumsum(cut, axis=1)], axis=1)  # [N, L]
    per_stage = jnp.sum(stage_of_teb[:, :, None] == jnp.arange(K), axis=1)  # [N, K]: TEBs of stage s
    delta = jnp.where(rank >= 0, jnp.take_along_axis(per_stage, jnp.maximum(rank, 0), axis=1), 0)
    m = 1 + jnp.minimum(jnp.floor(u_m * s.b), s.b - 1)
    slot_of = positions(u_ch)  # cluster n gets the slot at position n
    slots = jnp.arange(s.channel_slots)
    channel = jnp.sum(jnp.where(slot_of[None, :] == jnp.arange(N)[:, None], jnp.where(slots < s.J, slots, -1), 0),
                      axis=1)
    p = s.P_max_n_w / 10 + (s.P_max_n_w - s.P_max_n_w / 10) * u_p
    return Decision(delta=delta.astype(jnp.int32), rank=rank.astype(jnp.int32), m=m.astype(jnp.int32),
                    channel=channel.astype(jnp.int32), p_n_w=p.astype(jnp.float32))


def table_row(table: Decision, rows, u) -> Decision:
    """Row ⌊u · rows⌋ of a Decision with a leading axis (its first `rows` rows in use)."""
    row = jnp.minimum(jnp.floor(u * rows), rows - 1).astype(jnp.int32)
    return jax.tree.map(lambda x: x[row], table)


def stream_key(seed: int, stream: int, setting: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), setting)


def part_key(setting_key: jax.Array, part: int) -> jax.Array:
    """The key of the pairs' states (part 0) or decisions (part 1) in a setting."""
    return jax.random.fold_in(setting_key, part)


def pair_uniforms(key: jax.Array, index, words: int):
    """U[0, 1) numbers [words, n] for the pairs `index` [n]: number w of pair i is the threefry
    hash of the counter (i, w) under `key` (a raw uint32[2] key), turned into a float as
    `jax.random.uniform` does. Counter-based, so a pair's numbers depend only on the key and its
    index, not on the chunk, device or process that draws it; one hash per number, as
    `jax.random` with partitionable threefry, without a key per pair (10× the cost on a CPU)."""
    shape = (words, index.shape[0])
    i = jnp.broadcast_to(index.astype(jnp.uint32)[None, :], shape)
    # `+ 0 · i`: w then varies over a shard_map's devices like i does (the threefry loop's carry
    # must have one type)
    w = jnp.arange(words, dtype=jnp.uint32)[:, None] + jnp.uint32(0) * i
    high, low = threefry2x32_p.bind(key[0], key[1], i, w)
    mantissa = ((high ^ low) >> jnp.uint32(9)) | jnp.uint32(0x3F800000)  # a float in [1, 2)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0


# --------------------------------------------------------------------------- statistics on the device


def log_histogram(x, weight):
    """Counts of x in the log10 bins (index 0 below 10^LOG_LO, BINS + 1 above 10^LOG_HI)."""
    pos = (jnp.log10(jnp.where(weight, x, 1.0)) - LOG_LO) * (BINS / (LOG_HI - LOG_LO))
    index = jnp.clip(jnp.floor(pos) + 1, 0, BINS + 1).astype(jnp.int32)
    return jnp.zeros(BINS + 2, jnp.int32).at[index].add(weight.astype(jnp.int32))


def pair_statistics(state, decision, metrics, valid):
    """(sums, maxima) over a chunk's pairs (batch in the trailing axis) of τ(t), E(t), mean Γ_n and
    the constraints C7 (δ γ_0 ≤ γ^max), C9' (E_k ≤ E_k^max), C11' (E^com_n ≤ E_n^max)."""
    tau = metrics.tau_round_s
    energy = jnp.sum(metrics.E_com_j + metrics.E_pipe_j, axis=0)
    gamma = jnp.mean(metrics.Gamma, axis=0)
    finite = jnp.isfinite(tau) & jnp.isfinite(energy)
    use = valid & finite
    c7 = jnp.all(decision.delta * state.gamma0_bytes <= state.gamma_max_k_bytes, axis=(0, 1))
    c9 = jnp.all(metrics.E_sch_j <= state.E_max_k_j, axis=(0, 1))
    c11 = jnp.all(metrics.E_com_j <= state.E_max_n_j, axis=0)

    def count(mask):
        return jnp.sum(use & mask, dtype=jnp.int32)

    def total(x):
        return jnp.sum(jnp.where(use, x, 0.0))

    sums = {"pairs": count(True), "nonfinite": jnp.sum(valid & ~finite, dtype=jnp.int32),
            "C7": count(c7), "C9": count(c9), "C11": count(c11), "feasible": count(c7 & c9 & c11),
            "tau_round_s_sum": total(tau), "energy_j_sum": total(energy), "Gamma_sum": total(gamma),
            "tau_round_s_hist": log_histogram(tau, use), "energy_j_hist": log_histogram(energy, use)}
    maxima = {}
    for name, x in (("tau_round_s", tau), ("energy_j", energy)):
        maxima[f"{name}_max"] = jnp.max(jnp.where(use, x, -jnp.inf))
        maxima[f"{name}_negmin"] = jnp.max(jnp.where(use, -x, -jnp.inf))
    return sums, maxima


def draw_states(space: PairSpace, base: SystemState, key, index) -> SystemState:
    """The states of the pairs `index` [n] of a setting, batch in the trailing axis."""
    u = pair_uniforms(part_key(key, 0), index, space.state_words)
    return jax.vmap(lambda v: state_from_uniforms(space, base, v), in_axes=-1, out_axes=-1)(u)


def solved_decisions(space: PairSpace, state: SystemState) -> tuple[dict, dict]:
    """DSSRA (Y = 0) on every pair's own draw (batch in the trailing axis), under each variant:
    ({variant: Decision}, {variant: solved [n] bool})."""
    decisions, solved = {}, {}
    for variant in VARIANTS:
        config = EngineConfig(N=space.N, K=space.K, J=space.J, L=space.L, b=space.b, variant=variant,
                              fading=state.fading)

        def one(st, config=config):
            dec = dssra_round(device_problem(st, config), jnp.zeros(space.N, jnp.float32), jnp.float32(1.0), config)
            return to_decision(dec), dec.code == 0

        decisions[variant], solved[variant] = jax.vmap(one, in_axes=-1, out_axes=-1)(state)
    return decisions, solved


def draw_pairs(space: PairSpace, base: SystemState, key, index, random, tables, rows):
    """The pairs `index` [n] of a setting, batch in the trailing axis: (state, {variant:
    decision}). `random` (a bool, or a traced one: both kinds then share one compiled program):
    random plans, the same for both variants; else each variant's row of its table (`tables`
    and `rows`: {variant: Decision [R, ...]} and {variant: rows in use}), the same row index
    for both."""
    def random_plans():
        u = pair_uniforms(part_key(key, 1), index, space.decision_words)
        decision = jax.vmap(lambda v: random_decision(space, v), in_axes=-1, out_axes=-1)(u)
        return {variant: decision for variant in VARIANTS}

    def table_rows():
        u = pair_uniforms(part_key(key, 1), index, 1)[0]
        return {variant: jax.vmap(lambda v: table_row(tables[variant], rows[variant], v), out_axes=-1)(u)
                for variant in VARIANTS}

    state = draw_states(space, base, key, index)
    if isinstance(random, bool):
        return state, random_plans() if random else table_rows()
    return state, jax.lax.cond(random, random_plans, table_rows)


@program_cache(maxsize=None)
def group_reduction(space: PairSpace, chunk: int, mesh, solve: bool = False):
    """jit(f(starts, key, n_pairs, base, tables, rows, random)): per variant, the statistics of
    the pairs with indices in [start, start + chunk) ∩ [0, n_pairs) for every start, drawn
    (`draw_pairs`) and evaluated on the devices; both variants evaluate the same draws. `solve`:
    each pair's decision is DSSRA on its own draw (`solved_decisions`)."""
    def per_chunk(start, key, n_pairs, base, tables, rows, random):
        index = start + jnp.arange(chunk, dtype=jnp.int32)
        valid = index < n_pairs
        if solve:
            state = draw_states(space, base, key, index)
            decisions, solved = solved_decisions(space, state)
        else:
            state, decisions = draw_pairs(space, base, key, index, random, tables, rows)
            solved = {v: jnp.ones_like(valid) for v in VARIANTS}
        out = {v: pair_statistics(state, decisions[v], evaluate(state, decisions[v], v), valid & solved[v])
               for v in VARIANTS}
        for v in VARIANTS:
            out[v][0]["unsolved"] = jnp.sum(valid & ~solved[v], dtype=jnp.int32)
        return {v: o[0] for v, o in out.items()}, {v: o[1] for v, o in out.items()}

    return chunked_reduction(per_chunk, mesh, n_shared=6, check_vma=not solve)


def run_group(fn, mesh, key, base, tables, rows, random: bool, pairs: int, chunk: int) -> tuple[dict, dict]:
    """All pairs of one group through the reduction, in calls of at most MAX_CHUNKS_PER_CALL
    chunks per device; returns ({variant: host statistics}, timing)."""
    n_dev = mesh.size
    chunks = -(-pairs // chunk)
    per_call = n_dev * min(MAX_CHUNKS_PER_CALL, -(-chunks // n_dev))
    calls = -(-chunks // per_call)
    replicated = NamedSharding(mesh, PartitionSpec())
    shared = jax.tree.map(lambda x: global_array(np.asarray(x), replicated),
                          (key, np.int32(pairs), base, tables, rows, np.bool_(random)))
    starts = [global_array(np.arange(c * per_call, (c + 1) * per_call, dtype=np.int32) * chunk,
                           NamedSharding(mesh, PartitionSpec(BATCH_AXIS))) for c in range(calls)]
    started = time.perf_counter()
    compiled = fn.lower(starts[0], *shared).compile()
    compile_s = time.perf_counter() - started
    started = time.perf_counter()
    outs = [compiled(s, *shared) for s in starts]  # dispatched asynchronously, read below
    outs = [jax.tree.map(np.asarray, out) for out in outs]
    seconds = time.perf_counter() - started
    stats = {v: combine([(o[0][v], o[1][v]) for o in outs]) for v in VARIANTS}
    return stats, {"compile_s": compile_s, "seconds": seconds, "calls": calls, "chunks": calls * per_call}


def combine(outs: list) -> dict:
    """Host totals (int64/float64) of the calls' (sums, maxima)."""
    sums = {k: sum(np.asarray(o[0][k], np.float64 if "sum" in k else np.int64) for o in outs) for k in outs[0][0]}
    maxima = {k: max(float(o[1][k]) for o in outs) for k in outs[0][1]}
    return {**sums, **maxima}


# --------------------------------------------------------------------------- statistics on the host


def bin_edges(vmin: float, vmax: float) -> tuple[np.ndarray, np.ndarray]:
    """log10 (low, high) edges of the BINS + 2 bins; the outer bins reach the exact min and max."""
    width = (LOG_HI - LOG_LO) / BINS
    low = LOG_LO + width * (np.arange(BINS + 2) - 1.0)
    high = low + width
    low[0], high[0] = min(math.log10(vmin), LOG_LO), LOG_LO
    low[-1], high[-1] = LOG_HI, max(math.log10(vmax), LOG_HI)
    return low, high


def histogram_quantiles(counts, vmin: float, vmax: float, qs=QUANTILES) -> list[float]:
    """The q-quantiles of the histogrammed values: the order statistic of rank ⌊q (n − 1)⌋
    located in its bin, placed log-linearly inside the bin, clipped to [vmin, vmax] (exact for
    the first and the last). Within a ratio 10^((LOG_HI − LOG_LO) / BINS) of the order statistic
    when it lies inside [10^LOG_LO, 10^LOG_HI]."""
    counts = np.asarray(counts, np.int64)
    low, high = bin_edges(vmin, vmax)
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in qs:
        k = math.floor(q * (n - 1))
        if k in (0, n - 1):  # the extremes are known exactly
            out.append(float(vmin if k == 0 else vmax))
            continue
        j = int(np.searchsorted(cum, k, side="right"))
        inside = (k - (cum[j] - counts[j]) + 0.5) / counts[j]
        out.append(float(np.clip(10.0 ** (low[j] + inside * (high[j] - low[j])), vmin, vmax)))
    return out


def coarse_histogram(counts, vmin: float, vmax: float, bins: int = 60) -> list[dict]:
    """The occupied bins merged into at most `bins`: (low, high, count, density per decade)."""
    counts = np.asarray(counts, np.int64)
    low, high = bin_edges(vmin, vmax)
    used = np.nonzero(counts)[0]
    first, last = int(used[0]), int(used[-1])
    step = -(-(last - first + 1) // bins)
    n = counts.sum()
    rows = []
    for a in range(first, last + 1, step):
        b = min(a + step, last + 1) - 1
        c = int(counts[a : b + 1].sum())
        rows.append({"low": float(10.0 ** low[a]), "high": float(10.0 ** high[b]), "count": c,
                     "density_per_decade": c / n / max(high[b] - low[a], 1e-12)})
    return rows


def summary_row(stats: dict) -> dict:
    n = int(stats["pairs"])
    row = {"pairs": n, "nonfinite": int(stats["nonfinite"]), "unsolved": int(stats["unsolved"])}
    for name in QUANTITIES:
        vmin, vmax = -stats[f"{name}_negmin"], stats[f"{name}_max"]
        row[f"{name}_mean"] = float(stats[f"{name}_sum"] / n)
        row[f"{name}_min"], row[f"{name}_max"] = float(vmin), float(vmax)
        for q, v in zip(QUANTILES, histogram_quantiles(stats[f"{name}_hist"], vmin, vmax)):
            row[f"{name}_q{round(100 * q):02d}"] = v
    row["Gamma_mean"] = float(stats["Gamma_sum"] / n)
    for c in ("C7", "C9", "C11", "feasible"):
        row[f"frac_{c}"] = int(stats[c]) / n
    return row


# --------------------------------------------------------------------------- decisions to apply


def dssra_references(scenario: Scenario, states: list[SystemState], variant: str, seed: int):
    """DSSRA's decisions (Y = 0) on the reference draws, with each one's τ(t) and energy on its
    own draw; a draw without a feasible decision is listed and skipped."""
    decisions, rows = [], []
    for r, state in enumerate(states):
        try:
            result = POLICIES["dssra"](round_problem(scenario, state, variant), np.zeros(scenario.N),
                                       policy_rng(seed, r))
        except InfeasibleError as err:
            rows.append({"reference": r, "feasible": False, "note": str(err)})
            continue
        own = evaluate(state, result.decision, variant)
        decisions.append(result.decision)
        rows.append({"reference": r, "feasible": True, "tau_round_s": float(own.tau_round_s),
                     "energy_j": float(jnp.sum(own.E_com_j + own.E_pipe_j)),
                     "S": " ".join(str(p.S) for p in result.plans), "m": " ".join(str(p.m) for p in result.plans)})
    return (stack(decisions) if decisions else None), rows


def tiled(decision: Decision, rows: int) -> Decision:
    return jax.tree.map(lambda x: jnp.repeat(x[None], rows, axis=0), decision)


# --------------------------------------------------------------------------- the ∂τ/∂p_n map


def gradient_grid(scenario: Scenario, grid: int):
    """(states, decisions) over p ∈ (0, P^max] × I ∈ [I_lo / 10, 10 I_hi] (log), mean state,
    uniform decision, every p_n = p and every I_i = I; leading axis grid²."""
    s = scenario
    p = np.linspace(s.P_max_n_w / grid, s.P_max_n_w, grid)
    interference = np.geomspace(s.I_i_w[0] / 10, s.I_i_w[1] * 10, grid)
    P, I = (a.ravel() for a in np.meshgrid(p, interference, indexing="ij"))
    size = P.size
    states = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (size,) + np.shape(x)), mean_state(s))
    decisions = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (size,) + np.shape(x)), default_decision(s))
    states = states.replace(I_i_w=np.repeat(I[:, None], s.J, 1).astype(np.float32))
    decisions = decisions.replace(p_n_w=np.repeat(P[:, None], s.N, 1).astype(np.float32))
    return states, decisions, P, I


def gradient_map(label: str, scenario: Scenario, variant: str, grid: int, mesh, chunk: int) -> list[dict]:
    states, decisions, P, I = gradient_grid(scenario, grid)
    tau, grad = power_grad_sharded(states, decisions, variant, mesh=mesh, chunk=chunk)
    tau, grad = np.asarray(tau, float), np.asarray(grad, float).sum(axis=1)
    return [{"setting": label, "variant": variant, "p_n_w": float(p), "I_w": float(i), "tau_round_s": float(t),
             "dtau_dp_n": float(g)} for p, i, t, g in zip(P, I, tau, grad)]


# --------------------------------------------------------------------------- the sweep


def setting_inputs(config: DistributionConfig, s_index: int, scenario: Scenario) -> dict:
    """What the reduction takes for one setting: its key, `PairSpace`, base state, and per family
    the decision tables and rows in use ({variant: ...}); DSSRA solved on the reference draws
    (the pairs' distribution, from a stream of their own) under each variant."""
    space, base = PairSpace.of(scenario), mean_state(scenario)
    drawn = jax.jit(draw_states, static_argnums=0)(space, base, stream_key(config.seed, _REFERENCE_STREAM, s_index),
                                                   jnp.arange(config.references))
    ref_states = [jax.tree.map(lambda x: x[..., r], drawn) for r in range(config.references)]  # noqa: B023
    counts, references = {}, []
    for variant in VARIANTS:
        _, rows = dssra_references(scenario, ref_states, variant, config.seed)
        references += [{"variant": variant, **r} for r in rows]
        counts[variant] = sum(r["feasible"] for r in rows)
    uniform = ({v: tiled(default_decision(scenario), config.references) for v in VARIANTS},
               {v: np.int32(1) for v in VARIANTS})
    families = {"uniform": uniform, "random": uniform,  # random plans and DSSRA per draw ignore the table
                "dssra": uniform}
    return {"key": stream_key(config.seed, _STATE_STREAM, s_index), "space": space, "base": base,
            "families": families, "counts": counts, "references": references}


def compute_tables(config: DistributionConfig, progress=lambda n=1: None, mesh=None, estimate: bool = False) -> dict:
    """Every table of the sweep for `config`; `estimate`: print the expected duration to stderr
    after the first group (from its measured rate)."""
    mesh = batch_mesh() if mesh is None else mesh
    info = device_info()
    chunk = config.chunk or chunk_size(info, config.pairs)
    total = sum(family_pairs(config, f) for f in config.families) * len(settings())
    rows, hists, references, throughput, grad_rows = [], [], [], [], []
    for s_index, (label, scenario) in enumerate(settings()):
        inputs = setting_inputs(config, s_index, scenario)
        key, space, base, families, counts = (inputs[k] for k in ("key", "space", "base", "families", "counts"))
        references += [{"setting": label, **r} for r in inputs["references"]]
        for family in (f for f in FAMILIES if f in config.families):
            tables, used = families[family]
            stats, timing = run_group(group_reduction(space, chunk, mesh, solve=family == "dssra"), mesh, key, base,
                                      tables, used, family == "random", family_pairs(config, family), chunk)
            for variant in VARIANTS:
                rows.append({"setting": label, "family": family, "variant": variant, **summary_row(stats[variant])})
                for name in QUANTITIES:
                    st = stats[variant]
                    hists += [{"setting": label, "family": family, "variant": variant, "quantity": name, **h}
                              for h in coarse_histogram(st[f"{name}_hist"], -st[f"{name}_negmin"], st[f"{name}_max"])]
            pairs = rows[-1]["pairs"] + rows[-1]["nonfinite"]
            throughput.append({"setting": label, "family": family, "pairs": pairs,
                               "evaluations": pairs * len(VARIANTS), "chunk": chunk, **timing,
                               "pairs_per_s": pairs / timing["seconds"], "device_kind": info["kind"],
                               "platform": info["platform"], "devices": info["devices"],
                               "processes": info["processes"]})
            if estimate and len(throughput) == 1:
                rate = throughput[0]["pairs_per_s"]
                print(f"sweep {NAME}: {total:.3g} pairs at the {rate:.3g} pairs/s just measured on "
                      f"{info['platform']} take about {total / rate / 60:.1f} minutes", file=sys.stderr)
            progress(1)
        for variant in VARIANTS:
            grad_rows += gradient_map(label, scenario, variant, config.grid, mesh, chunk)
        progress(1)
    return {"distributions": rows, "histograms": hists, "dssra-references": references,
            "power-gradient-map": grad_rows, "throughput": throughput}


def compute(scale: str, work_dir, progress) -> dict:
    on_cpu = scale == "paper" and device_info()["platform"] == "cpu"
    if on_cpu:  # it still runs: two CPU cores take minutes, not hours
        print(f"sweep {NAME}: warning: --scale paper draws and evaluates 1e8 pairs and is meant for a GPU or "
              f"TPU, but JAX found only the CPU", file=sys.stderr)
    progress.expect(len(settings()) * (len(FAMILIES) + 1))  # a family's groups, then the gradient map
    return compute_tables(SCALE_CONFIGS[scale], progress, estimate=on_cpu)


# --------------------------------------------------------------------------- figures and findings

FAMILY_COLORS = {"uniform": "tab:blue", "random": "tab:gray", "dssra": "tab:red"}
VARIANT_STYLES = {"paper": "-", "consistent": "--"}
LABELS = {"tau_round_s": "round latency τ(t) [s]", "energy_j": "round energy Σ_n (E^com + E^pipe) [J]"}


def plot(tables: dict, out) -> None:
    hists = tables["histograms"]
    labels = list(dict.fromkeys(r["setting"] for r in tables["distributions"]))
    pairs = {r["setting"]: r["pairs"] for r in tables["distributions"]}
    fig, axes = plots.figure(len(labels), len(QUANTITIES), panel=(5.2, 3.4))
    for row_axes, label in zip(axes, labels):
        for ax, name in zip(row_axes, QUANTITIES):
            for family in FAMILIES:
                for variant in VARIANTS:
                    sel = [h for h in hists if h["setting"] == label and h["family"] == family
                           and h["variant"] == variant and h["quantity"] == name]
                    if not sel:
                        continue
                    x = [h["low"] for h in sel] + [sel[-1]["high"]]
                    y = [h["density_per_decade"] for h in sel]
                    ax.stairs(y, x, color=FAMILY_COLORS[family], linestyle=VARIANT_STYLES[variant],
                              linewidth=1.3, label=f"{family} decisions, {variant} variant")
            ax.set_xscale("log")
            plots.log_ticks(ax.xaxis)
            what = "round latency τ(t)" if name == "tau_round_s" else "round energy"
            plots.label(ax, f"{what}: {label}, {pairs.get(label, '?'):,} draws", LABELS[name],
                        "share of draws [per decade]")
    plots.figure_legend(fig, axes, ncols=len(FAMILIES),
                        title="Distributions of τ(t) and energy over random (state, decision) pairs")
    plots.note(fig, "Histograms on log-spaced bins, normalised to density per decade of the quantity; uniform: "
               "the default plan on every draw; random: a random plan per draw; dssra: one of DSSRA's decisions for "
               "a few reference draws, applied to each draw.")
    plots.save_figure(fig, out / "distributions.png")

    from matplotlib.colors import LogNorm

    grad = tables["power-gradient-map"]
    fig, axes = plots.figure(len(labels), len(VARIANTS), panel=(4.8, 3.4))
    for row_axes, label in zip(axes, labels):
        for ax, variant in zip(row_axes, VARIANTS):
            sel = [r for r in grad if r["setting"] == label and r["variant"] == variant]
            p = np.unique([r["p_n_w"] for r in sel])
            i = np.unique([r["I_w"] for r in sel])
            # rows are p-major (gradient_grid's meshgrid, indexing="ij")
            z = -np.array([r["dtau_dp_n"] for r in sel]).reshape(len(p), len(i)).T
            mesh = ax.pcolormesh(p, i, np.maximum(z, 1e-30), norm=LogNorm(), shading="auto")
            bar = fig.colorbar(mesh, ax=ax)
            bar.set_label("−Σ_n ∂τ/∂p_n [s/W]", fontsize=plots.FONT["label"])
            bar.ax.tick_params(labelsize=plots.FONT["tick"])
            ax.set_yscale("log")
            plots.label(ax, f"{label}, {variant} variant", "p_n (every CU) [W]", "I_i (every channel) [W]")
    plots.suptitle(fig, "Sensitivity of the round latency to the CUs' power, over power and interference "
                   "(mean state, default decision)")
    plots.save_figure(fig, out / "power-gradient-map.png")


def findings(tables: dict) -> dict:
    rows, throughput = tables["distributions"], tables["throughput"]
    pairs = sum(r["pairs"] for r in throughput)
    seconds = sum(r["seconds"] for r in throughput)
    first = throughput[0]
    device = {"kind": first["device_kind"], "platform": first["platform"], "devices": first["devices"],
              "processes": first["processes"], "chunk": first["chunk"]}
    notes = [f"{pairs:,} (state, decision) pairs drawn, evaluated and reduced on {device['devices']} × "
             f"{device['kind']} ({device['platform']}, {device['processes']} process(es)) at {pairs / seconds:.3g} "
             f"pairs/s (compilation excluded: {sum(r['compile_s'] for r in throughput):.1f} s)."]
    medians = {}
    for label in dict.fromkeys(r["setting"] for r in rows):
        for variant in VARIANTS:
            sel = {r["family"]: r for r in rows if r["setting"] == label and r["variant"] == variant}
            medians[f"{label}/{variant}"] = {f: r["tau_round_s_q50"] for f, r in sel.items()}
            refs = [r for r in tables["dssra-references"] if r["setting"] == label and r["variant"] == variant
                    and r["feasible"]]
            own_tau = np.median([r["tau_round_s"] for r in refs]) if refs else None
            own = f"; DSSRA's {len(refs)} decisions on their own draws: median {own_tau:.4g} s" if refs else ""
            parts = ", ".join(f"{f} {r['tau_round_s_q50']:.4g} s (feasible {100 * r['frac_feasible']:.3g}%)"
                              for f, r in sel.items())
            notes.append(f"{label}, {variant}: median τ(t) {parts}{own}.")
    grad = tables["power-gradient-map"]
    for label in dict.fromkeys(r["setting"] for r in grad):
        sel = [r for r in grad if r["setting"] == label]
        steep = min(sel, key=lambda r: r["dtau_dp_n"])
        flat = max(sel, key=lambda r: r["dtau_dp_n"])
        notes.append(f"{label}: Σ_n ∂τ/∂p_n over the (p_n, I_i) grid runs from {steep['dtau_dp_n']:.3g} s/W "
                     f"(p_n = {steep['p_n_w']:.3g} W, I_i = {steep['I_w']:.3g} W, {steep['variant']}) to "
                     f"{flat['dtau_dp_n']:.3g} s/W (p_n = {flat['p_n_w']:.3g} W, I_i = {flat['I_w']:.3g} W).")
    return {"pairs": pairs, "pairs_per_s": pairs / seconds, "device": device, "median_tau_round_s": medians,
            "quantile_resolution": BIN_RATIO, "findings": notes}


register(Sweep(NAME, compute, plot, findings))
