"""Scenarios (the paper's Table II), per-round random draws, and scheduling decisions.

A `Scenario` holds the ranges and constants of one experimental setting in SI units
(bits, seconds, W, J, Hz, FLOPs, bytes). Presets are written below in the paper's units and
converted once, here. Each round the channel state and device capabilities are drawn
uniformly within the ranges with `jax.random` (`draw_state`), giving a `SystemState` pytree
that the system model (`collapipe_jax.system`) evaluates together with a `Decision`.

Readings of Table II (docs/design.md §3): N0 = −174 dBm/Hz; h_dd = −30 dB; h_n ∈ [−0.12, −0.08] dB
(linear ≈ 0.97–0.98); f_k in GHz, ϕ_k in FLOPs per cycle; GB read as 1e9 bytes.
The model-size inputs z^s, g^s, z^enc, θ^enc and γ_0 are not in Table II: they are computed
from the model config (`collapipe_jax.models.cost`); o_l = o'_l = 2e6 FLOPs are Table II's.

What a CU uploads is the segments' *tunable* parameters θ̂ (Alg. 1, line 23; docs/design.md §3):
`tunable = "full"` uploads the whole encoder (`theta_enc_bits`), `"lora:R"` only rank-R LoRA
adapters on the query and value projections of every TEB in fp32, L · 2 · R (d + d) · 32 bits
(BERT-base, R = 8: 9.44 Mbit). The state's θ^enc is the uploaded size (`uploaded_theta_bits`);
z^enc does not change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from collapipe_jax.choices import PRESETS, TUNABLE_HELP  # noqa: F401 (re-exported)
from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_json
from collapipe_jax.models import cost
from collapipe_jax.models.config import MODEL_PRESETS, model_preset
from collapipe_jax.options import FLOAT32_TINY, INT32_MAX, MEMORY_SHARE, as_finite_float, float32_problem, memory_budget

RANGE_FIELDS = ("f_hz", "phi_flops_per_cycle", "p_k_w", "h_n", "I_i_w", "B_U_hz")
FADING = ("mean", "rayleigh")


def db_to_linear(db: float) -> float:
    return 10.0 ** (db / 10.0)


def dbm_to_watt(dbm: float) -> float:
    return 10.0 ** (dbm / 10.0) / 1000.0


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One experimental setting, SI units. Ranges are (low, high) for uniform per-round draws."""

    name: str = "custom"
    model: str = "paper-bert"  # the model config the size inputs were computed from
    N: int = 3  # clusters
    K: int = 6  # devices per cluster
    J: int = 4  # uplink channels
    L: int = 12  # Transformer encoder blocks (TEBs)
    b: int = 64  # batch size per cluster and pipeline iteration
    local_steps: int = 1  # E: pipeline iterations (local steps) per round, one upload (Alg. 1's local epochs)
    # per-round random ranges
    f_hz: tuple[float, float] = (0.1e9, 0.8e9)  # device CPU frequency f_k
    phi_flops_per_cycle: tuple[float, float] = (10.0, 24.0)  # ϕ_k
    p_k_w: tuple[float, float] = (0.07, 0.1)  # device D2D transmit power p_k
    h_n: tuple[float, float] = (db_to_linear(-0.12), db_to_linear(-0.08))  # CU→server gain
    I_i_w: tuple[float, float] = (0.06, 0.08)  # interference on uplink channel i
    B_U_hz: tuple[float, float] = (0.4e6, 0.6e6)  # bandwidth of uplink channel i
    # constants
    h_dd: float = db_to_linear(-30.0)
    I_dd_w: float = 5e-10
    B_dd_hz: float = 0.5e6
    N0_w_per_hz: float = dbm_to_watt(-174.0)
    P_max_n_w: float = 0.5
    P_max_k_w: float = 0.18
    E_max_n_j: float = 10.0
    E_max_k_j: float = 5.0
    gamma_max_n_bytes: float = 3e9
    gamma_max_k_bytes: float = 1.5e9
    # model-size inputs (per TEB, per sample unless said otherwise)
    o_fwd_flops: float = 2e6
    o_bwd_flops: float = 2e6
    z_bits: float = 0.0
    g_bits: float = 0.0
    z_enc_bits: float = 0.0
    theta_enc_bits: float = 0.0
    gamma0_bytes: float = 0.0
    kappa: float = 1e-28  # effective switched capacitance (Eq. 14/16)
    # convergence bound (Eq. 23-28) and Lyapunov parameters
    beta: float = 1.0  # smoothness constant
    eta: float = 0.1  # learning rate in the bound
    phi_seg: float = 1.0  # per-segment gradient-dissimilarity constant ϕ
    C_noise: float = 0.01  # C of ε(p) = C / (p h + I)
    Gamma_max: float = 0.03
    V: float = 10.0
    fading: str = "mean"  # Eq. 10 expectation: mean gain plugged in, or Rayleigh quadrature
    tunable: str = "full"  # what a CU uploads: the whole encoder, or rank-R LoRA adapters ("lora:R")

    def __post_init__(self):
        validate_scenario(self)

    def replace(self, **changes) -> "Scenario":
        return dataclasses.replace(self, **changes)

    @property
    def uploaded_theta_bits(self) -> float:
        """θ^enc as uploaded (Eq. 11, 12): the whole encoder, or the LoRA adapters of `tunable`."""
        rank = tunable_rank(self.tunable)
        if rank is None:
            return self.theta_enc_bits
        return cost.lora_param_bits(model_preset(self.model).replace(n_enc_layers=self.L), rank)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in RANGE_FIELDS:
            out[key] = list(out[key])
        return out

    def to_json(self, path: str | os.PathLike) -> None:
        """Write atomically (temporary file, then rename)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scenario":
        if not isinstance(data, dict):
            raise ValidationError("scenario", "must be a JSON object", type(data).__name__)
        known = {f.name for f in dataclasses.fields(cls)}
        base = {}
        if "preset" in data:
            if not isinstance(data["preset"], str):
                raise ValidationError("preset", f"must be a preset name, one of {list(PRESETS)}", data["preset"])
            base = scenario_preset(data["preset"]).to_dict()
            base["name"] = f"{data['preset']} (modified)"
        unknown = sorted(set(data) - known - {"preset"})
        if unknown:
            raise ValidationError("scenario", f"unknown field(s) {unknown}; the valid fields, closest first: "
                                              f"{', '.join(closest_first(unknown[0], sorted(known | {'preset'})))}")
        merged = {**base, **{k: v for k, v in data.items() if k != "preset"}}
        for key in RANGE_FIELDS:
            if key in merged:
                merged[key] = _as_range(key, merged[key])
        return cls(**merged)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Scenario":
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValidationError("scenario", "is not a regular file" if path.exists() else "file does not exist",
                                  str(path))
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except json.JSONDecodeError as err:
            raise ValidationError("scenario", f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
        except UnicodeDecodeError as err:
            raise ValidationError("scenario", f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        except ValueError as err:  # an integer past Python's 4,300-digit conversion limit
            why = str(err).split(":")[0]
            raise ValidationError("scenario", f"{path}: a number is too long to read ({why})") from None
        except RecursionError:
            raise ValidationError("scenario", f"{path}: JSON nested too deeply") from None
        except OSError as err:
            raise ValidationError("scenario", f"{path}: cannot be read ({err.strerror})") from None
        return cls.from_dict(data)


def closest_first(name: str, names: list[str]) -> list[str]:
    """Every name of `names`, the closest to `name` first (difflib's similarity, case-blind)."""
    import difflib

    score = {n: difflib.SequenceMatcher(None, name.lower(), n.lower()).ratio() for n in names}
    return sorted(names, key=lambda n: -score[n])


def _as_range(name: str, value) -> tuple[float, float]:
    """A range is one number (low = high) or a [low, high] pair of finite numbers: no strings,
    no nulls, no booleans (JSON `true` is not 1)."""
    pair = [value, value] if not isinstance(value, (list, tuple)) else list(value)
    numbers = [as_finite_float(v) for v in pair]
    if len(pair) != 2 or any(v is None for v in numbers):
        raise ValidationError(name, "must be a finite number or a [low, high] pair of finite numbers", value)
    return (numbers[0], numbers[1])


def tunable_rank(tunable) -> int | None:
    """None for "full", R for "lora:R"; anything else is a ValidationError naming `tunable`."""
    return cost.parse_tunable(tunable)


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= INT32_MAX:
        raise ValidationError(name, f"must be an integer in [1, {INT32_MAX}]", value)


def _check_number(name: str, value, *, positive: bool = False, nonnegative: bool = False) -> None:
    """A finite number that survives the conversion to float32 (the state's dtype, `_state`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValidationError(name, "must be a number", value)
    x = as_finite_float(value)
    if x is None:
        raise ValidationError(name, "must be finite", value)
    if positive and x <= 0:
        raise ValidationError(name, "must be > 0", value)
    if nonnegative and x < 0:
        raise ValidationError(name, "must be >= 0", value)
    if (problem := float32_problem(x)) is not None:
        raise ValidationError(name, f"must be representable in float32: {problem}", value)


# Size guard (docs/design.md §8): the largest per-round host working sets, in bytes, as functions of
# the scenario's dimensions. A scenario must fit every command's round, so the estimate takes
# the largest of each:
#   devices   ~1 kB per device (N·K): the round's state, decision and result records as Python
#             floats and JSON text (measured: `latency --json` peaks 0.77 GB at N = 40000, K = 6,
#             0.55 GB at N = 2000);
#   matching  the Hungarian channel matching (scheduling.resources.match_channels) holds a
#             float64 [N, max(N, J)] matrix and ~3 copies (finite mask, stand-in, padding);
#   segments  the vectorised stage-count DP (scheduling.segments._segment_dp, consistent
#             variant, K > 7) holds float64 [nT, L+1, D, K+1, 2] with nT <= 2K(L+1) bounds and
#             D <= L TEBs per device.
BYTES_PER_DEVICE = 1024


def round_memory(N: int, K: int, J: int, L: int) -> dict[str, int]:
    """Estimated bytes of the round's largest host working sets (see above)."""
    return {
        "devices": N * K * BYTES_PER_DEVICE,
        "channel matching": 4 * 8 * N * max(N, J),
        "segment DP": 8 * (2 * K * (L + 1)) * (L + 1) * L * (K + 1) * 2,
    }


def check_size(N: int, K: int, J: int, L: int, field: str = "scenario size") -> None:
    """One-line error when a round of this size would not fit the memory budget."""
    need = round_memory(N, K, J, L)
    total, limit = sum(need.values()), memory_budget()
    if total > limit:
        largest = max(need, key=need.get)
        raise ValidationError(field, f"N={N}, K={K}, J={J}, L={L} need about {total / 1e9:.3g} GB per round "
                                     f"({largest} {need[largest] / 1e9:.3g} GB), more than the limit of "
                                     f"{limit / 1e9:.3g} GB (1/{MEMORY_SHARE} of this machine's memory)")


def check_rounds(s: "Scenario", rounds: int, field: str = "rounds") -> None:
    """A run that keeps every round's records (`schedule`: the draws and the decision, ~1 kB per
    device and round) must fit the memory budget too."""
    need, limit = rounds * s.N * s.K * BYTES_PER_DEVICE, memory_budget()
    if need > limit:
        raise ValidationError(field, f"{rounds} rounds of N={s.N} x K={s.K} devices keep about {need / 1e9:.3g} GB "
                                     f"of records, more than the limit of {limit / 1e9:.3g} GB (1/{MEMORY_SHARE} of "
                                     f"this machine's memory)", rounds)


def validate_scenario(s: Scenario) -> None:
    """Every field checked at the boundary; raises ValidationError naming the field."""
    if not isinstance(s.name, str):
        raise ValidationError("name", "must be a string", s.name)
    if not isinstance(s.model, str) or s.model not in MODEL_PRESETS:
        raise ValidationError("model", f"must be a known model config, one of {sorted(MODEL_PRESETS)}", s.model)
    for name in ("N", "K", "J", "L", "b", "local_steps"):
        _check_positive_int(name, getattr(s, name))
    for name in RANGE_FIELDS:
        value = getattr(s, name)
        if not isinstance(value, tuple) or len(value) != 2:
            raise ValidationError(name, "must be a (low, high) pair", value)
        for v in value:
            _check_number(name, v, positive=True)
        if value[0] > value[1]:
            raise ValidationError(name, "low must be <= high", value)
    for name in ("h_dd", "B_dd_hz", "N0_w_per_hz", "P_max_n_w", "P_max_k_w", "E_max_n_j", "E_max_k_j",
                 "gamma_max_n_bytes", "gamma_max_k_bytes", "o_fwd_flops", "kappa", "beta", "eta",
                 "phi_seg", "C_noise", "Gamma_max"):
        _check_number(name, getattr(s, name), positive=True)
    for name in ("I_dd_w", "o_bwd_flops", "z_bits", "g_bits", "z_enc_bits", "theta_enc_bits",
                 "gamma0_bytes", "V"):
        _check_number(name, getattr(s, name), nonnegative=True)
    if not isinstance(s.fading, str) or s.fading not in FADING:
        raise ValidationError("fading", f"must be one of {list(FADING)}", s.fading)
    if tunable_rank(s.tunable) is not None and s.model not in MODEL_PRESETS:
        raise ValidationError("tunable", f"lora:R needs the scenario's model to be one of {sorted(MODEL_PRESETS)} "
                                         "(its width gives the adapter size)", s.model)
    if s.p_k_w[1] > s.P_max_k_w:
        raise ValidationError("p_k_w", f"upper end must be <= P_max_k_w={s.P_max_k_w}", s.p_k_w)
    check_size(s.N, s.K, s.J, s.L)


def scenario_from_model(model: str, **overrides) -> Scenario:
    """A Table II scenario whose size inputs (z, g, z^enc, θ^enc, γ_0) come from a model config.

    L defaults to the model's encoder depth. o_l, o'_l stay Table II's 2e6 FLOPs unless
    overridden (pass `o_from_model=True` to use the model's analytic FLOPs instead).
    """
    cfg = model_preset(model)
    o_from_model = overrides.pop("o_from_model", False)
    b = int(overrides.get("b", Scenario.b))
    sizes = cost.model_size_inputs(cfg, b)
    fields = {
        "model": model,
        "L": cfg.n_enc_layers,
        "z_bits": sizes["z_bits"],
        "g_bits": sizes["g_bits"],
        "z_enc_bits": sizes["z_enc_bits"],
        "theta_enc_bits": sizes["theta_enc_bits"],
        "gamma0_bytes": sizes["gamma0_bytes"],
    }
    if o_from_model:
        fields["o_fwd_flops"] = sizes["o_fwd_flops"]
        fields["o_bwd_flops"] = sizes["o_bwd_flops"]
    fields.update(overrides)
    return Scenario(**fields)


def scenario_preset(name: str) -> Scenario:
    """Table II presets: `paper-transformer` (6+6 blocks, L = 6) and `paper-bert` (L = 12)."""
    if name == "paper-bert":
        return scenario_from_model("paper-bert", name="paper-bert")
    if name == "paper-transformer":
        return scenario_from_model("paper-transformer", name="paper-transformer")
    raise ValidationError("preset", "unknown preset, choose one of ['paper-bert', 'paper-transformer']", name)


def load_scenario(preset: str | None = None, path: str | os.PathLike | None = None,
                  tunable: str | None = None) -> Scenario:
    """`--scenario FILE.json` wins over `--preset`; the default is `paper-bert`.

    A JSON file may name a base `"preset"` and override any field; `tunable` (None: the
    scenario's) overrides what is uploaded (`--tunable`).
    """
    base = scenario_preset("paper-bert" if preset is None else preset)  # a bad name is an error even when unused
    scenario = Scenario.from_json(path) if path is not None else base
    return scenario if tunable is None else scenario.replace(tunable=tunable)


# --------------------------------------------------------------------------- state


@struct.dataclass
class SystemState:
    """One round's channel state and device capabilities plus the scenario's constants (SI).

    Per-device arrays are [N, K]; per-channel arrays are [J]; per-cluster arrays are [N].
    Every leaf is a jnp array so that a batch of states can be stacked and vmapped.
    """

    f_hz: jax.Array  # [N, K]
    phi_flops_per_cycle: jax.Array  # [N, K]
    p_k_w: jax.Array  # [N, K]
    h_n: jax.Array  # [N] linear
    I_i_w: jax.Array  # [J]
    B_U_hz: jax.Array  # [J]
    gamma_max_k_bytes: jax.Array  # [N, K]
    E_max_k_j: jax.Array  # [N, K]
    E_max_n_j: jax.Array  # [N]
    P_max_n_w: jax.Array  # [N]
    h_dd: jax.Array
    I_dd_w: jax.Array
    B_dd_hz: jax.Array
    N0_w_per_hz: jax.Array
    b: jax.Array  # batch size (float, so b / m is a real number as in the paper)
    local_steps: jax.Array  # [N] E_n: pipeline iterations of cluster n this round
    o_fwd_flops: jax.Array
    o_bwd_flops: jax.Array
    z_bits: jax.Array
    g_bits: jax.Array
    z_enc_bits: jax.Array
    theta_enc_bits: jax.Array
    gamma0_bytes: jax.Array
    kappa: jax.Array
    beta: jax.Array
    eta: jax.Array
    phi_seg: jax.Array
    C_noise: jax.Array
    fading: str = struct.field(pytree_node=False, default="mean")


def _state(s: Scenario, f, phi, pk, h, I, B) -> SystemState:
    full = lambda v, shape: jnp.full(shape, v, dtype=jnp.float32)  # noqa: E731
    scalar = lambda v: jnp.asarray(v, dtype=jnp.float32)  # noqa: E731
    return SystemState(
        f_hz=f, phi_flops_per_cycle=phi, p_k_w=pk, h_n=h, I_i_w=I, B_U_hz=B,
        gamma_max_k_bytes=full(s.gamma_max_k_bytes, (s.N, s.K)),
        E_max_k_j=full(s.E_max_k_j, (s.N, s.K)),
        E_max_n_j=full(s.E_max_n_j, (s.N,)),
        P_max_n_w=full(s.P_max_n_w, (s.N,)),
        h_dd=scalar(s.h_dd), I_dd_w=scalar(s.I_dd_w), B_dd_hz=scalar(s.B_dd_hz),
        N0_w_per_hz=scalar(s.N0_w_per_hz), b=scalar(s.b), local_steps=full(s.local_steps, (s.N,)),
        o_fwd_flops=scalar(s.o_fwd_flops), o_bwd_flops=scalar(s.o_bwd_flops),
        z_bits=scalar(s.z_bits), g_bits=scalar(s.g_bits), z_enc_bits=scalar(s.z_enc_bits),
        theta_enc_bits=scalar(s.uploaded_theta_bits), gamma0_bytes=scalar(s.gamma0_bytes),
        kappa=scalar(s.kappa), beta=scalar(s.beta), eta=scalar(s.eta), phi_seg=scalar(s.phi_seg),
        C_noise=scalar(s.C_noise), fading=s.fading,
    )


def draw_state(scenario: Scenario, key: jax.Array) -> SystemState:
    """One round's draw: every ranged quantity uniform in its [low, high] (seeded)."""
    s = scenario
    keys = jax.random.split(key, 6)

    def uniform(k, rng, shape):
        return jax.random.uniform(k, shape, jnp.float32, rng[0], rng[1])

    return _state(
        s,
        uniform(keys[0], s.f_hz, (s.N, s.K)),
        uniform(keys[1], s.phi_flops_per_cycle, (s.N, s.K)),
        uniform(keys[2], s.p_k_w, (s.N, s.K)),
        uniform(keys[3], s.h_n, (s.N,)),
        uniform(keys[4], s.I_i_w, (s.J,)),
        uniform(keys[5], s.B_U_hz, (s.J,)),
    )


def mean_state(scenario: Scenario) -> SystemState:
    """Every ranged quantity at the middle of its range (no randomness)."""
    s = scenario
    mid = lambda rng, shape: jnp.full(shape, 0.5 * (rng[0] + rng[1]), jnp.float32)  # noqa: E731
    return _state(s, mid(s.f_hz, (s.N, s.K)), mid(s.phi_flops_per_cycle, (s.N, s.K)),
                  mid(s.p_k_w, (s.N, s.K)), mid(s.h_n, (s.N,)), mid(s.I_i_w, (s.J,)),
                  mid(s.B_U_hz, (s.J,)))


def round_key(seed: int, round_index: int) -> jax.Array:
    """The key of round t's draw: independent of how many rounds ran before (resumable)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), round_index)


# --------------------------------------------------------------------------- decisions


@struct.dataclass
class Decision:
    """X(t) = [m, S, δ, order, I, p] for all clusters (docs/design.md §1).

    delta[n, k]: TEBs on device k of cluster n (Σ_k = L); rank[n, k]: position of device k in
    cluster n's pipeline order (0 first), −1 where delta = 0; m[n]: micro-batches; channel[n]:
    uplink channel of cluster n, −1 for none this round; p_n_w[n]: the CU's transmit power.
    S_n = #{k : delta[n, k] > 0}.
    """

    delta: jax.Array  # int32 [N, K]
    rank: jax.Array  # int32 [N, K]
    m: jax.Array  # int32 [N]
    channel: jax.Array  # int32 [N]
    p_n_w: jax.Array  # float32 [N]


def ranks_from_orders(delta: np.ndarray, orders: list[list[int]] | None) -> np.ndarray:
    """rank[n, k] from pipeline orders (lists of device indices); default: index order."""
    delta = np.asarray(delta)
    N, K = delta.shape
    rank = -np.ones((N, K), dtype=np.int32)
    for n in range(N):
        order = [k for k in range(K) if delta[n, k] > 0] if orders is None else list(orders[n])
        for pos, k in enumerate(order):
            rank[n, k] = pos
    return rank


def orders_of(decision: Decision) -> list[list[int]]:
    """Each cluster's scheduled devices in pipeline order."""
    rank = np.asarray(decision.rank)
    return [[int(k) for k in np.argsort(rank[n]) if rank[n, k] >= 0] for n in range(rank.shape[0])]


def make_decision(scenario: Scenario, delta, m, channel, p_n_w, orders=None) -> Decision:
    """Build and validate a decision from host values (delta [N, K]; m, channel, p_n [N])."""
    s = scenario
    delta = _whole("delta", delta)
    if delta.ndim == 1:
        delta = np.broadcast_to(delta, (s.N, delta.shape[0]))
    m = _whole("m", m)
    m = np.broadcast_to(m, (s.N,)) if m.ndim == 0 else m
    p = _reals("p_n", p_n_w)
    p = np.broadcast_to(p, (s.N,)) if p.ndim == 0 else p
    channel = _whole("channel", channel)
    _validate_arrays(s, delta, orders, m, channel, p)
    return Decision(
        delta=jnp.asarray(delta, jnp.int32),
        rank=jnp.asarray(ranks_from_orders(delta, orders), jnp.int32),
        m=jnp.asarray(m, jnp.int32),
        channel=jnp.asarray(channel, jnp.int32),
        p_n_w=jnp.asarray(p, jnp.float32),
    )


def even_split(L: int, K: int, S: int | None = None) -> list[int]:
    """δ of the uniform split: L TEBs over the first S of K devices (all K by default), as
    even as integers allow, the remainder one each to the first devices."""
    S = K if S is None else S
    base, extra = divmod(L, S)
    return [base + (1 if k < extra else 0) if k < S else 0 for k in range(K)]


def default_decision(scenario: Scenario) -> Decision:
    """Uniform δ over the K devices (remainder to the first ones), index order, m = 4,
    channel n for cluster n < J (none for the rest), p_n = P_n^max."""
    s = scenario
    row = even_split(s.L, s.K)
    channel = [n if n < s.J else -1 for n in range(s.N)]
    return make_decision(s, [row] * s.N, min(4, s.b), channel, s.P_max_n_w)


def _reals(name: str, values) -> np.ndarray:
    """Host float64 array of a decision input; a ragged, non-numeric or overflowing input is a
    one-line error."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(name, "must be numbers (one value or one per cluster)", values) from None


def _whole(name: str, values) -> np.ndarray:
    """Integer decision input within int32 (the decision's dtype), as int64 on the host."""
    x = _reals(name, values)
    if not np.all(np.isfinite(x)) or np.any(x != np.round(x)) or np.any(np.abs(x) > INT32_MAX):
        raise ValidationError(name, f"must be whole numbers within int32 (|x| <= {INT32_MAX})", x.tolist())
    return x.astype(np.int64)


def _validate_arrays(s: Scenario, delta, orders, m, channel, p) -> None:
    if delta.shape != (s.N, s.K):
        raise ValidationError("delta", f"must have N={s.N} rows of K={s.K} values", list(delta.shape))
    if np.any(delta < 0):
        raise ValidationError("delta", "must be >= 0", delta.tolist())
    sums = delta.sum(axis=1)
    for n in range(s.N):
        if sums[n] != s.L:
            raise ValidationError("delta", f"row {n} must sum to L={s.L} (C1)", delta[n].tolist())
    if orders is not None:
        if len(orders) != s.N:
            raise ValidationError("order", f"must give N={s.N} orders", len(orders))
        for n in range(s.N):
            scheduled = sorted(int(k) for k in range(s.K) if delta[n, k] > 0)
            if sorted(int(k) for k in orders[n]) != scheduled:
                raise ValidationError("order", f"cluster {n} must list each device with delta > 0 exactly once",
                                      list(orders[n]))
    if m.shape != (s.N,):
        raise ValidationError("m", f"must have N={s.N} values", m.tolist())
    if not np.all(np.isfinite(m.astype(float))) or np.any(m != np.round(m)) or np.any(m < 1) or np.any(m > s.b):
        raise ValidationError("m", f"must be integers in [1, b={s.b}]", m.tolist())
    if channel.shape != (s.N,):
        raise ValidationError("channel", f"must have N={s.N} values", channel.tolist())
    if np.any(channel != np.round(channel)) or np.any(channel < -1) or np.any(channel >= s.J):
        raise ValidationError("channel", f"must be -1 (none) or a channel index in [0, J={s.J})", channel.tolist())
    used = channel[channel >= 0]
    if len(set(used.tolist())) != len(used):
        raise ValidationError("channel", "a channel may serve at most one cluster (C6)", channel.tolist())
    if p.shape != (s.N,):
        raise ValidationError("p_n", f"must have N={s.N} values", p.tolist())
    if not np.all(np.isfinite(p)):
        raise ValidationError("p_n", "must be finite", p.tolist())
    if np.any(p < 0) or np.any(p > s.P_max_n_w):
        raise ValidationError("p_n", f"must be in [0, P_max_n={s.P_max_n_w}] W (C8)", p.tolist())
    if np.any((p != 0) & (p < FLOAT32_TINY)):
        raise ValidationError("p_n", f"must be 0 or >= {FLOAT32_TINY:.4g} W (smaller powers underflow float32)",
                              p.tolist())
    if np.any((channel >= 0) & (p <= 0)):
        raise ValidationError("p_n", "must be > 0 for a cluster with a channel", p.tolist())
