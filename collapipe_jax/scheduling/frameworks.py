"""The training frameworks compared in the paper (§VI) and their fixed decision rules.

A framework says how a round trains (pipelined or not, federated or not) and which decision
rule schedules it; the rules below are policies of the one registry (`scheduling.policies`),
with its signature `(problem, Y, rng, losses=None, **options) -> RoundResult`.

  collapipe   the encoder segmented over the scheduled devices (GPipe), FL aggregation of the
              client models over the assigned channels; scheduled by DSSRA or another policy.
  vanilla-fl  no pipeline: every cluster trains the whole encoder on one device, chosen per
              round as the fastest (largest ϕ_k f_k) device whose memory fits all L TEBs (C7;
              when none does, as for BERT-base in Table II, the fastest device, and the round
              reports the C7 breach), m = 1; FL aggregation as above. (The paper's "whole
              encoder on the CU": the CU is modelled as the best device of the cluster, since
              Table II gives the CU no compute parameters of its own.)
  pipeline    the `default` decision (uniform δ over the K devices, m = 4, channel n for
              cluster n < J, p_n = P_max within C11'); each cluster trains its own encoder with
              no FL aggregation (no model upload: only the encoder output reaches the server,
              so the charged upload carries z^enc and not θ^enc); metrics are those of cluster
              0's model.
  titanic     TITANIC-like: automatic split with device selection by compute speed — the ⌈K/2⌉
              fastest devices (by ϕ_k f_k) form the pipeline in decreasing speed, L split in
              proportion to speed (largest remainder, within each device's memory, C7), m = 4,
              device-to-device (P2P) activations as in Eq. 11, no channel or power
              optimisation (channel n for cluster n < J, p_n = P_max within C11'); when the
              selected devices' memory cannot hold L, δ ∝ speed regardless (C7 reported).
              TITANIC's own partition/selection optimiser and its resource model are not
              reproduced.

One set of constraints for every framework: the fixed rules transmit at P_n^max capped by C11'
exactly as DSSRA's powers are (`resources.power_upper_bounds`: the largest p ≤ P_max whose
upload energy stays within E_n^max), and place TEBs within memory (C7) where the rule chooses
(vanilla-fl, titanic). What a fixed rule cannot meet — C9' at its fixed m, C7 of the uniform
split, C11' where no power at all meets the budget (then it transmits at P_max) — is reported
by the host round for that round (`violations`); the decisions are built with `strict=False`.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from collapipe_jax.scenario import even_split
from collapipe_jax.scheduling import dssra as ds
from collapipe_jax.scheduling import resources as rs
from collapipe_jax.scheduling import segments as sg


@dataclasses.dataclass(frozen=True)
class Framework:
    """How a framework trains and who decides its rounds.

    policy: the registry name of its decision rule (None: the run's `--policy`, DSSRA by
    default); pipelined: GPipe over the scheduled devices (False: one device holds all L TEBs);
    federated: the client models are uploaded and averaged (False: every cluster keeps its own
    encoder and only the encoder output goes up, so no θ^enc is charged).
    """

    name: str
    policy: str | None
    pipelined: bool = True
    federated: bool = True


FRAMEWORKS = {
    "collapipe": Framework("collapipe", None),
    "vanilla-fl": Framework("vanilla-fl", "vanilla-fl", pipelined=False),
    "pipeline": Framework("pipeline", "default", federated=False),
    "titanic": Framework("titanic", "titanic"),
}
DEFAULT_MICRO_BATCHES = 4  # m of the fixed decisions (paper §VI: GPipe with m = 4)


def device_speed(dev: sg.ClusterDevices) -> np.ndarray:
    """ϕ_k f_k, FLOPs per second of each device."""
    return dev.phi * dev.f_hz


def teb_capacity(dev: sg.ClusterDevices) -> np.ndarray:
    """The most TEBs (at most L) each device's memory holds (C7: δ_k γ_0 ≤ γ_k^max)."""
    with np.errstate(divide="ignore"):
        per_device = dev.gamma_max_bytes / dev.gamma0_bytes if dev.gamma0_bytes > 0 else np.full(dev.K, np.inf)
    return np.floor(np.minimum(per_device, dev.L)).astype(int)


def default_channels(problem: ds.RoundProblem) -> tuple[np.ndarray, np.ndarray]:
    """Channel n for cluster n < J (none for the rest), p_n = P_max capped by C11' (no other
    optimisation); P_max where no power meets C11' (the host round reports the breach)."""
    N, J = problem.N, problem.uplink.J
    channel = np.array([n if n < J else -1 for n in range(N)])
    p_ub = rs.power_upper_bounds(problem.uplink)
    p = [(problem.uplink.P_max_n_w[n] if np.isnan(p_ub[n, c]) else p_ub[n, c]) if c >= 0 else 0.0
         for n, c in enumerate(channel)]
    return channel, np.asarray(p)


def fixed_plan(dev: sg.ClusterDevices, delta, order, m: int) -> sg.SegmentPlan:
    delta = tuple(int(v) for v in delta)
    order = tuple(int(k) for k in order)
    m = min(m, dev.b)
    return sg.SegmentPlan(delta, order, m, sg.pipeline_latency(dev, m, delta, order))


def fixed_result(problem: ds.RoundProblem, plans, name: str, started: float) -> ds.RoundResult:
    channel, p = default_channels(problem)
    return ds.build_result(problem, plans, channel, p, np.zeros(problem.N), name, started=started, strict=False)


def default_policy(problem: ds.RoundProblem, Y=None, rng=None, losses=None, *, stages: int | None = None,
                   micro_batches: int | None = None, **options) -> ds.RoundResult:
    """No optimisation: uniform δ over the first S devices in index order (all K by default),
    m = 4 (or the given m), default channels. Fixing S and m makes the learning-vs-(S, m) runs."""
    started = time.perf_counter()
    plans = []
    for dev in problem.clusters:
        delta = even_split(dev.L, dev.K, min(stages or dev.K, dev.K, dev.L))
        plans.append(fixed_plan(dev, delta, [k for k in range(dev.K) if delta[k] > 0],
                                micro_batches or DEFAULT_MICRO_BATCHES))
    return fixed_result(problem, plans, "default", started)


def fastest_fitting_device(dev: sg.ClusterDevices) -> int:
    """The device with the largest ϕ_k f_k whose memory holds all L TEBs (C7); the fastest of
    all when none does (the decision then breaks C7, which the host round reports)."""
    fits = teb_capacity(dev) >= dev.L
    return int(np.argmax(np.where(fits, device_speed(dev), -np.inf) if fits.any() else device_speed(dev)))


def vanilla_fl_policy(problem: ds.RoundProblem, Y=None, rng=None, losses=None, **options) -> ds.RoundResult:
    """VanillaFL: all L TEBs on the fastest device that fits them, m = 1, default channels."""
    started = time.perf_counter()
    plans = []
    for n, dev in enumerate(problem.clusters):
        k = fastest_fitting_device(dev)
        delta = np.zeros(dev.K, int)
        delta[k] = dev.L
        plans.append(fixed_plan(dev, delta, [k], 1))
    return fixed_result(problem, plans, "vanilla-fl", started)


def proportional_split(L: int, speed: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """δ ∝ speed by largest remainder, each δ_k ≤ cap_k (memory), Σ δ = L; without the caps when
    they cannot hold L (the decision breaks C7, which the host round reports)."""
    if cap.sum() < L:
        cap = np.full_like(cap, L)
    share = L * speed / speed.sum()
    delta = np.minimum(np.floor(share).astype(int), cap)
    while delta.sum() < L:  # hand out the rest by largest remainder among devices with room
        room = delta < cap
        k = int(np.argmax(np.where(room, share - delta, -np.inf)))
        delta[k] += 1
    return delta


def titanic_policy(problem: ds.RoundProblem, Y=None, rng=None, losses=None, **options) -> ds.RoundResult:
    """TITANIC-like: the ⌈K/2⌉ fastest devices in decreasing speed, δ ∝ speed within memory."""
    started = time.perf_counter()
    plans = []
    for dev in problem.clusters:
        speed = device_speed(dev)
        n_sel = min(dev.L, math.ceil(dev.K / 2))
        chosen = np.argsort(-speed, kind="stable")[:n_sel]
        delta = np.zeros(dev.K, int)
        delta[chosen] = proportional_split(dev.L, speed[chosen], teb_capacity(dev)[chosen])
        plans.append(fixed_plan(dev, delta, [int(k) for k in chosen if delta[k] > 0], DEFAULT_MICRO_BATCHES))
    return fixed_result(problem, plans, "titanic", started)
