"""The training frameworks compared in the paper (§VI) and their fixed decision rules.

A framework says how a round trains (pipelined or not, federated or not) and which decision
rule schedules it; the rules below are policies of the one registry (`scheduling.policies`),
with its signature `(problem, Y, rng, losses=None, **options) -> RoundResult`.

  collapipe   the encoder segmented over the scheduled devices (GPipe), FL aggregation of the
              client models over the assigned channels; scheduled by DSSRA or another policy.
  vanilla-fl  no pipeline: every cluster trains the whole encoder on one device, chosen per
              round as the fastest (largest ϕ_k f_k) device whose memory fits all L TEBs (C7),
              m = 1; FL aggregation as above. (The paper's "whole encoder on the CU": the CU is
              modelled as the best device of the cluster, since Table II gives the CU no
              compute parameters of its own.)
  pipeline    the `default` decision (uniform δ over the K devices, m = 4, channel n for
              cluster n < J, p_n = P_max); each cluster trains its own encoder with no FL
              aggregation (no model upload: only the encoder output reaches the server, so the
              charged upload carries z^enc and not θ^enc); metrics are those of cluster 0's model.
  titanic     TITANIC-like: automatic split with device selection by compute speed — the ⌈K/2⌉
              fastest devices (by ϕ_k f_k) form the pipeline in decreasing speed, L split in
              proportion to speed (largest remainder, within each device's memory, C7), m = 4,
              device-to-device (P2P) activations as in Eq. 11, no channel or power
              optimisation (channel n for cluster n < J, p_n = P_max). TITANIC's own
              partition/selection optimiser and its resource model are not reproduced.

The fixed rules do not optimise power, so their decisions may break C9'/C11'; they are built
with `strict=False` and the host round reports each breach (`violations`).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.scenario import even_split
from collapipe_jax.scheduling import dssra as ds
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
    """Channel n for cluster n < J (none for the rest) at p_n = P_max: no optimisation."""
    N, J = problem.N, problem.uplink.J
    channel = np.array([n if n < J else -1 for n in range(N)])
    return channel, np.where(channel >= 0, problem.uplink.P_max_n_w, 0.0)


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


def fastest_fitting_device(dev: sg.ClusterDevices, cluster: int) -> int:
    """The device with the largest ϕ_k f_k whose memory holds all L TEBs (C7)."""
    fits = teb_capacity(dev) >= dev.L
    if not fits.any():
        raise InfeasibleError({"constraint": "C7", "cluster": cluster,
                               "message": f"no device of cluster {cluster} holds all L={dev.L} TEBs (C7)"})
    return int(np.argmax(np.where(fits, device_speed(dev), -np.inf)))


def vanilla_fl_policy(problem: ds.RoundProblem, Y=None, rng=None, losses=None, **options) -> ds.RoundResult:
    """VanillaFL: all L TEBs on the fastest device that fits them, m = 1, default channels."""
    started = time.perf_counter()
    plans = []
    for n, dev in enumerate(problem.clusters):
        k = fastest_fitting_device(dev, n)
        delta = np.zeros(dev.K, int)
        delta[k] = dev.L
        plans.append(fixed_plan(dev, delta, [k], 1))
    return fixed_result(problem, plans, "vanilla-fl", started)


def proportional_split(L: int, speed: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """δ ∝ speed by largest remainder, each δ_k ≤ cap_k (memory), Σ δ = L."""
    if cap.sum() < L:
        raise InfeasibleError({"constraint": "C7", "message": f"the selected devices cannot hold L={L} TEBs (C7)"})
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
