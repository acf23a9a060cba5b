"""`collapipe train`: federated CollaPipe training on a real task (Alg. 1 with Alg. 4 per round).

Host loop, per round t (DESIGN.md §1):
  1. draw the channel state and device capabilities  (scenario.draw_state, seeded by (seed, t))
  2. decide X(t) = [m, S, δ, order, I, p]              (DSSRA or a baseline policy, on the host)
  3. run the jitted federated round                   (federated.rounds: vmap over the N clusters,
                                                        GPipe encoder per cluster, noisy upload,
                                                        FedAvg; per-cluster layouts are data)
  4. charge latency and energy of X(t)                 (system.evaluate: Eq. 10–16, 26, 33)
  5. update the Lyapunov queues Y_n                    (Eq. 29: Y ← max(Y + Γ_n − Γ^max, 0))
  6. evaluate, log, checkpoint (orbax, atomically)

Frameworks (the paper's baselines; what each approximates):
  collapipe   the encoder segmented over the scheduled devices (δ, order from the policy; GPipe
              with shard_map), FL aggregation of the client models over the assigned channels.
  vanilla-fl  no pipeline: every cluster trains the whole encoder on one device, chosen per round
              as the fastest (largest ϕ_k f_k) device whose memory fits all L TEBs (C7), m = 1;
              latency = all L TEBs on that device + the upload; FL aggregation as above. (The
              paper's "whole encoder on the CU": the CU is modelled as the best device of the
              cluster, since Table II gives the CU no compute parameters of its own.)
  pipeline    uniform δ over the K devices, m = 4, each cluster trains its own encoder with no FL
              aggregation (no model upload: only the encoder output goes to the server, so the
              charged upload carries z^enc and not θ^enc); metrics are those of cluster 0's model.
  titanic     TITANIC-like: automatic split with device selection by compute speed — the ⌈K/2⌉
              fastest devices (by ϕ_k f_k) form the pipeline in decreasing speed, L split in
              proportion to speed (largest remainder, within each device's memory, C7), m = 4,
              device-to-device (P2P) activations as in Eq. 11, no channel or power optimisation
              (channel n for cluster n < J, p_n = P_max). TITANIC's own partition/selection
              optimiser and its resource model are not reproduced.

Numerics vs schedule: synchronous GPipe computes exactly the unpipelined gradient, whatever m is
(tests/test_gpipe.py), so the jitted program uses one static number of micro-batches
(--micro-batches) for every cluster, while each cluster's scheduled m enters the latency and
energy charged by the system model. S, δ and the order are data: stage layouts padded to the
round's largest S and δ (a program is compiled per distinct (S_max, δ_max) and cached).
`--no-pipeline` trains the same model with the unsegmented encoder (reference).

Determinism / resume: the state draw, the batches (tasks.batching.round_indices), the upload
noise and the random policy are pure functions of (seed, t), so a run resumed from the checkpoint
of round t continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable

import numpy as np

from collapipe_jax.errors import InfeasibleError, ValidationError

FRAMEWORKS = ("collapipe", "vanilla-fl", "pipeline", "titanic")
# collapipe's schedulers: DSSRA and the baselines of scheduling/baselines.py ("uniform" = CollaPipe
# w/o segment scheduling: even δ, DSSRA's channels and power), plus "default": no optimisation at
# all (even δ, m = 4, channel n for cluster n < J, p_n = P_max; scenario.default_decision).
POLICIES = ("dssra", "uniform", "random", "loss-only", "delay-only", "default")
MODEL_SIZES = ("tiny", "small", "paper")
TASK_MODEL = {"multi30k": "translation", "ner": "ner", "toutiao": "sentence"}
TASK_SCENARIO = {"multi30k": "paper-transformer", "ner": "paper-bert", "toutiao": "paper-bert"}


class NonFiniteLossError(ValidationError):
    """Training diverged: a round's loss is NaN or infinite (the last good checkpoint is kept)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: str = "toutiao"
    framework: str = "collapipe"
    model: str = "tiny"
    policy: str | None = None  # None: the framework's own (collapipe → dssra)
    no_pipeline: bool = False
    rounds: int = 2
    batch: int = 8
    lr: float = 0.05
    clusters: int | None = None  # N; default the scenario's
    micro_batches: int = 4  # static GPipe micro-batches of the compiled program
    cluster_chunk: int | None = None  # vmap the clusters in groups of this size (None: all at once)
    seed: int = 0
    data_dir: str | None = None
    max_examples: int | None = None
    max_eval_examples: int | None = 200
    eval_every: int = 1
    non_iid: bool = False
    dirichlet_alpha: float = 0.5
    variant: str = "paper"
    lyapunov: str = "drift"
    noise_mode: str = "relative"
    V: float | None = None
    preset: str | None = None
    scenario: str | None = None
    seq_len: int | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    log_dir: str | None = None
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        check = lambda ok, field, constraint, value: None if ok else _raise(field, constraint, value)  # noqa: E731
        check(self.task in TASK_MODEL, "task", f"must be one of {sorted(TASK_MODEL)}", self.task)
        check(self.framework in FRAMEWORKS, "framework", f"must be one of {list(FRAMEWORKS)}", self.framework)
        check(self.model in MODEL_SIZES, "model", f"must be one of {list(MODEL_SIZES)}", self.model)
        check(self.policy is None or self.policy in POLICIES, "policy", f"must be one of {list(POLICIES)}", self.policy)
        for name in ("rounds", "batch", "micro_batches", "eval_every"):
            v = getattr(self, name)
            check(isinstance(v, int) and v >= 1, name.replace("_", "-"), "must be an integer >= 1", v)
        check(self.cluster_chunk is None or (isinstance(self.cluster_chunk, int) and self.cluster_chunk >= 1),
              "cluster-chunk", "must be an integer >= 1", self.cluster_chunk)
        check(self.clusters is None or (isinstance(self.clusters, int) and self.clusters >= 1), "clusters",
              "must be an integer >= 1", self.clusters)
        check(math.isfinite(self.lr) and self.lr > 0, "lr", "must be a finite number > 0", self.lr)
        check(self.variant in ("paper", "consistent"), "variant", "must be paper or consistent", self.variant)
        check(self.lyapunov in ("drift", "paper"), "lyapunov", "must be drift or paper", self.lyapunov)
        check(self.noise_mode in ("relative", "absolute"), "noise-mode", "must be relative or absolute", self.noise_mode)
        check(self.micro_batches <= self.batch, "micro-batches", f"must be <= batch={self.batch}", self.micro_batches)
        check(self.V is None or (math.isfinite(self.V) and self.V >= 0), "V", "must be a finite number >= 0", self.V)
        if self.framework != "collapipe" and self.policy not in (None,):
            _raise("policy", f"only the collapipe framework takes a policy ({self.framework} has its own)", self.policy)

    @property
    def resolved_policy(self) -> str:
        return {"collapipe": self.policy or "dssra", "vanilla-fl": "vanilla-fl", "pipeline": "default",
                "titanic": "titanic"}[self.framework]

    def fingerprint(self) -> str:
        """What a resumed run must share with the run that wrote the checkpoint."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("rounds", "checkpoint_dir", "resume", "log_dir", "progress", "cache_dir", "data_dir")}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def _raise(field, constraint, value):
    raise ValidationError(field, constraint, value)


# --------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Setup:
    cfg: TrainConfig
    task: Any  # tasks.TaskData
    model_cfg: Any  # ModelConfig
    scenario: Any  # Scenario
    clusters: list  # index arrays per cluster
    weights: np.ndarray  # D_n


def model_config_for(task_name: str, size: str, vocab_size: int, seq_len: int | None):
    from collapipe_jax.models.config import model_preset

    name = size if size != "paper" else TASK_SCENARIO[task_name]
    cfg = model_preset(name)
    return cfg.replace(vocab_size=int(vocab_size), seq_len=int(seq_len or cfg.seq_len))


def build_setup(cfg: TrainConfig) -> Setup:
    from collapipe_jax.models import cost
    from collapipe_jax.models.config import model_preset
    from collapipe_jax.scenario import load_scenario
    from collapipe_jax.tasks import load_task
    from collapipe_jax.tasks.batching import split_clusters

    base_model = model_preset(cfg.model if cfg.model != "paper" else TASK_SCENARIO[cfg.task])
    seq_len = cfg.seq_len or base_model.seq_len
    task = load_task(cfg.task, seq_len=seq_len, data_dir=cfg.data_dir, vocab_size=base_model.vocab_size,
                     max_examples=cfg.max_examples, max_eval_examples=cfg.max_eval_examples, seed=cfg.seed,
                     cache_dir=cfg.cache_dir)
    model_cfg = model_config_for(cfg.task, cfg.model, task.vocab_size, seq_len)
    if cfg.scenario or cfg.preset:
        base = load_scenario(cfg.preset, cfg.scenario)
    else:
        base = load_scenario(TASK_SCENARIO[cfg.task])
    overrides = {"L": model_cfg.n_enc_layers, "b": cfg.batch, "model": model_cfg.name,
                 **{k: v for k, v in cost.model_size_inputs(model_cfg, cfg.batch).items()
                    if k not in ("o_fwd_flops", "o_bwd_flops")}}  # o_l, o'_l stay Table II's
    if cfg.clusters is not None:
        overrides["N"] = cfg.clusters
    if cfg.V is not None:
        overrides["V"] = cfg.V
    scenario = base.replace(**overrides)
    clusters = split_clusters(task.n_train, scenario.N, seed=cfg.seed, labels=task.partition_labels,
                              non_iid=cfg.non_iid, alpha=cfg.dirichlet_alpha)
    weights = np.array([len(c) for c in clusters], np.float32)
    return Setup(cfg, task, model_cfg, scenario, clusters, weights)


# --------------------------------------------------------------------------- policies (host side)


PolicyFn = Callable[[Any, np.ndarray, np.ndarray | None, int], Any]  # (state, Y, losses, t) -> Decision


def fastest_fitting_device(scenario, state) -> np.ndarray:
    """Per cluster, the device with the largest ϕ_k f_k whose memory holds all L TEBs (C7)."""
    speed = np.asarray(state.phi_flops_per_cycle) * np.asarray(state.f_hz)
    fits = scenario.L * scenario.gamma0_bytes <= np.asarray(state.gamma_max_k_bytes)
    if not np.all(fits.any(axis=1)):
        n = int(np.flatnonzero(~fits.any(axis=1))[0])
        raise InfeasibleError({"constraint": "C7", "cluster": n,
                               "message": f"no device of cluster {n} holds all L={scenario.L} TEBs (C7)"})
    return np.argmax(np.where(fits, speed, -np.inf), axis=1)


def vanilla_fl_decision(scenario, state):
    from collapipe_jax.scenario import default_decision, make_decision

    base = default_decision(scenario)
    k = fastest_fitting_device(scenario, state)
    delta = np.zeros((scenario.N, scenario.K), np.int64)
    delta[np.arange(scenario.N), k] = scenario.L
    return make_decision(scenario, delta, 1, np.asarray(base.channel), np.asarray(base.p_n_w))


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


def titanic_decision(scenario, state):
    from collapipe_jax.scenario import default_decision, make_decision

    base = default_decision(scenario)
    speed = np.asarray(state.phi_flops_per_cycle) * np.asarray(state.f_hz)
    cap = np.floor(np.asarray(state.gamma_max_k_bytes) / max(scenario.gamma0_bytes, 1e-30)).astype(int)
    n_sel = min(scenario.L, math.ceil(scenario.K / 2))
    delta = np.zeros((scenario.N, scenario.K), np.int64)
    orders = []
    for n in range(scenario.N):
        chosen = np.argsort(-speed[n], kind="stable")[:n_sel]
        delta[n, chosen] = proportional_split(scenario.L, speed[n, chosen], cap[n, chosen])
        orders.append([int(k) for k in chosen if delta[n, k] > 0])
    return make_decision(scenario, delta, min(4, scenario.b), np.asarray(base.channel), np.asarray(base.p_n_w), orders)


def make_policy(name: str, scenario, seed: int, variant: str = "paper", lyapunov: str = "drift") -> PolicyFn:
    """The decision rule of a round: (state, Y, last per-cluster losses or None, t) -> Decision."""
    from collapipe_jax.scenario import default_decision

    if name == "default":
        decision = default_decision(scenario)
        return lambda state, Y, losses, t: decision
    if name == "vanilla-fl":
        return lambda state, Y, losses, t: vanilla_fl_decision(scenario, state)
    if name == "titanic":
        return lambda state, Y, losses, t: titanic_decision(scenario, state)
    return scheduler_policy(name, scenario, seed, variant, lyapunov)


def scheduler_policy(name: str, scenario, seed: int, variant: str, lyapunov: str) -> PolicyFn:
    """DSSRA (Alg. 4) or one of its baselines (scheduling.baselines), solved on the host each round.

    The loss-only baseline gets the real per-cluster training losses of the previous round (none
    in round 0: it then uses its documented proxy). The random baseline draws from a generator
    seeded by (seed, t), so a resumed run makes the same decisions.
    """
    from collapipe_jax.scheduling import baselines, dssra

    solve = baselines.POLICIES[name]

    def policy(state, Y, losses, t):
        problem = dssra.round_problem(scenario, state, variant, lyapunov)
        rng = np.random.default_rng([seed, t, 0xD55A])
        return solve(problem, np.asarray(Y, float), rng, losses=losses).decision

    return policy


# --------------------------------------------------------------------------- model and round


@functools.lru_cache(maxsize=32)
def compiled_round(pipelined: bool, n_micro: int, n_stages: int, lr: float, noise_mode: str, independent: bool,
                   cluster_chunk: int | None = None):
    """The jitted round for one program shape, shared by every run in the process (a resumed or
    repeated run reuses the compiled executable)."""
    import optax

    from collapipe_jax.federated.rounds import make_round

    sgd = optax.sgd(lr)
    return make_round(loss_fn_for(pipelined, n_micro, n_stages), sgd, sgd, noise_mode=noise_mode, independent=independent,
                      cluster_chunk=cluster_chunk)


def loss_fn_for(pipelined: bool, n_micro: int, n_stages: int):
    """loss_fn(client, server, batch, layout) -> (loss_sum, weight_sum) of the split model."""
    from collapipe_jax.models import split
    from collapipe_jax.models.teb import encoder_reference

    def loss_fn(client, server, batch, layout):
        if pipelined:
            from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh

            encoder = pipelined_encoder(layout, n_micro, mesh=stage_mesh(n_stages))
        else:
            encoder = encoder_reference
        return split.split_model_loss({"client": client, "server": server}, batch, encoder)

    return loss_fn


def stage_layouts(decision, n_stages: int, n_slots: int):
    from collapipe_jax.pipeline.partition import make_stage_layout, stack_layouts
    from collapipe_jax.scenario import orders_of

    delta = np.asarray(decision.delta)
    orders = orders_of(decision)
    return stack_layouts([make_stage_layout(delta[n], orders[n], n_stages, n_slots) for n in range(delta.shape[0])])


def replicated(n_stages: int):
    from jax.sharding import NamedSharding, PartitionSpec

    from collapipe_jax.pipeline.gpipe import stage_mesh

    return NamedSharding(stage_mesh(n_stages), PartitionSpec())


def layout_shape(decision) -> tuple[int, int]:
    delta = np.asarray(decision.delta)
    return int((delta > 0).sum(axis=1).max()), int(delta.max())


@functools.lru_cache(maxsize=8)
def predict_fn(task_kind: str, seq_len: int):
    """Jitted predictions of the unsegmented model on an eval batch."""
    import jax

    from collapipe_jax.models import bert, split, transformer
    from collapipe_jax.models.teb import encoder_reference

    @jax.jit
    def predict(client, server, tokens):
        x, pad_mask = split.embed_apply(client["embed"], tokens)
        enc = encoder_reference(client["encoder"], x, pad_mask)
        if task_kind == "seq2seq":
            return transformer.greedy_decode(server, enc, pad_mask, seq_len)
        return bert.predict(server, enc)

    return predict


def evaluate_model(setup: Setup, predict, client, server, eval_batch: int = 64) -> dict[str, float]:
    from collapipe_jax.tasks.batching import eval_batches

    preds = []
    for batch, real in eval_batches({"tokens": setup.task.test["tokens"]}, eval_batch):
        preds.append(np.asarray(predict(client, server, batch["tokens"]))[:real])
    return setup.task.score(np.concatenate(preds, axis=0))


# --------------------------------------------------------------------------- checkpoints


class Checkpoints:
    """Orbax CheckpointManager: the train state (pytree) and the run's records (JSON), one step
    per round. Orbax writes each step into a temporary directory and renames it when complete,
    so a killed run leaves either a whole checkpoint or none."""

    def __init__(self, directory: str):
        import orbax.checkpoint as ocp

        self.ocp = ocp
        self.path = pathlib.Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.path,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, meta: dict) -> None:
        ocp = self.ocp
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def restore(self, step: int, target: dict) -> tuple[dict, dict]:
        ocp = self.ocp
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]


# --------------------------------------------------------------------------- the run


def init_params(setup: Setup, key):
    """The split model's initial params; jitted, so initialisation is one compiled program
    rather than hundreds of eagerly compiled small ops."""
    n_classes = setup.task.n_labels if setup.task.kind != "seq2seq" else None
    return _jitted_init(setup.model_cfg, TASK_MODEL[setup.cfg.task], n_classes)(key)


@functools.lru_cache(maxsize=8)
def _jitted_init(model_cfg, model_task: str, n_classes):
    import jax

    from collapipe_jax.models import split

    return jax.jit(lambda k: split.init_split_model(k, model_cfg, model_task, n_classes))


def train(cfg: TrainConfig, setup: Setup | None = None) -> dict:
    """Run (or resume) a training run; returns the result dict of DESIGN §6."""
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm import tqdm

    from collapipe_jax.federated.rounds import Uploads, eps_of
    from collapipe_jax.scenario import draw_state, orders_of, round_key
    from collapipe_jax.scheduling.lyapunov import update_queues
    from collapipe_jax.system import evaluate
    from collapipe_jax.tasks.batching import gather, round_indices

    setup = setup or build_setup(cfg)
    sc, task = setup.scenario, setup.task
    independent = cfg.framework == "pipeline"
    pipelined = cfg.framework != "vanilla-fl" and not cfg.no_pipeline
    policy = make_policy(cfg.resolved_policy, sc, cfg.seed, cfg.variant, cfg.lyapunov)
    sgd = optax.sgd(cfg.lr)  # the server's optimizer state; the round builds the same transformation

    params = init_params(setup, jax.random.PRNGKey(cfg.seed))
    client, server = params["client"], params["server"]
    if independent:
        client = jax.tree.map(lambda x: jnp.broadcast_to(x, (sc.N,) + x.shape), client)
    server_opt = sgd.init(server)
    Y = np.zeros(sc.N, np.float64)
    last_losses = np.full(sc.N, np.nan)
    records: list[dict] = []
    start = 0

    ckpt = Checkpoints(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt is not None and ckpt.latest() is not None:
        if not cfg.resume:
            raise ValidationError("checkpoint-dir", "holds a checkpoint: pass --resume to continue it, or use an empty directory",
                                  str(ckpt.path))
        target = {"client": client, "server": server, "server_opt": server_opt, "Y": Y, "last_losses": last_losses}
        restored, meta = ckpt.restore(ckpt.latest(), target)
        if meta.get("fingerprint") != cfg.fingerprint():
            raise ValidationError("resume", "the checkpoint was written by a run with other settings", meta.get("config"))
        client, server, server_opt = restored["client"], restored["server"], restored["server_opt"]
        Y, last_losses = np.asarray(restored["Y"]), np.asarray(restored["last_losses"])
        records, start = meta["records"], int(meta["next_round"])

    draw = jax.jit(draw_state, static_argnums=0)
    predict = predict_fn(task.kind, task.seq_len)
    bar = tqdm(total=cfg.rounds, initial=min(start, cfg.rounds), file=sys.stderr, desc=f"train {cfg.task}/{cfg.framework}",
               disable=not cfg.progress, leave=False)
    for t in range(start, cfg.rounds):
        t0 = time.perf_counter()
        state = draw(sc, round_key(cfg.seed, t))
        t_decide = time.perf_counter()
        decision = policy(state, Y, None if t == 0 else last_losses, t)
        decide_ms = 1e3 * (time.perf_counter() - t_decide)
        shape = layout_shape(decision) if pipelined else (1, sc.L)
        round_fn = compiled_round(pipelined, cfg.micro_batches, shape[0], cfg.lr, cfg.noise_mode, independent,
                                  cfg.cluster_chunk)
        if pipelined:
            # keep the state replicated over the round's stage mesh: the round returns it there,
            # and inputs placed elsewhere would make jit compile the round a second time
            client, server, server_opt = jax.device_put((client, server, server_opt), replicated(shape[0]))
        layouts = stage_layouts(decision, *shape) if pipelined else stage_layouts(_single_stage(sc), 1, sc.L)
        channel = np.asarray(decision.channel)
        interference = np.asarray(state.I_i_w)[np.clip(channel, 0, None)]
        eps = eps_of(float(sc.C_noise), np.asarray(decision.p_n_w), np.asarray(state.h_n), interference)
        uploads = Uploads(active=jnp.asarray(channel >= 0), eps=jnp.asarray(np.where(channel >= 0, eps, 0.0), jnp.float32),
                          weight=jnp.asarray(setup.weights))
        batch = gather(task.train, round_indices(setup.clusters, cfg.batch, t, cfg.seed))
        noise_key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed ^ 0x5EED), t)
        new_client, new_server, new_opt, out = round_fn(client, server, server_opt, batch, layouts, uploads, noise_key)
        losses = np.asarray(out.loss, np.float64)
        loss = float(np.sum(setup.weights * losses) / np.sum(setup.weights))
        finite = np.isfinite(losses).all() and bool(out.params_finite)
        if not finite:
            kept = f"last good checkpoint (round {t - 1}) kept in {ckpt.path}" if ckpt and t > 0 else "no checkpoint written"
            raise NonFiniteLossError("loss", f"non-finite training loss at round {t} (cluster losses {losses.tolist()}); "
                                             f"training stopped, {kept}")
        client, server, server_opt, last_losses = new_client, new_server, new_opt, losses

        charge_state = state.replace(theta_enc_bits=jnp.zeros_like(state.theta_enc_bits)) if independent else state
        sysm = evaluate(charge_state, decision, cfg.variant)
        Y = update_queues(Y, np.asarray(sysm.Gamma, np.float64), sc.Gamma_max)  # Eq. 29
        evaluated = (t + 1) % cfg.eval_every == 0 or t == cfg.rounds - 1
        eval_client = jax.tree.map(lambda x: x[0], client) if independent else client
        metrics = evaluate_model(setup, predict, eval_client, server) if evaluated else {}
        records.append({
            "round": t,
            "loss": loss,
            "cluster_losses": losses.tolist(),
            "metrics": metrics,
            "tau_round_s": float(sysm.tau_round_s),
            "energy_j": float(np.sum(sysm.E_com_j) + np.sum(sysm.E_pipe_j)),
            "Y": Y.tolist(),
            "Gamma": np.asarray(sysm.Gamma).tolist(),
            "decision": {"delta": np.asarray(decision.delta).tolist(), "order": orders_of(decision),
                         "m": np.asarray(decision.m).tolist(), "channel": channel.tolist(),
                         "p_n_w": np.asarray(decision.p_n_w).tolist()},
            "decide_ms": decide_ms,
            "wall_s": time.perf_counter() - t0,
        })
        if ckpt is not None:
            ckpt.save(t, {"client": client, "server": server, "server_opt": server_opt, "Y": Y, "last_losses": last_losses},
                      {"fingerprint": cfg.fingerprint(), "config": _config_dict(cfg), "records": records, "next_round": t + 1})
        _write_logs(cfg, records, partial=True)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
    bar.close()
    result = result_dict(cfg, setup, records)
    _write_logs(cfg, records, partial=False, result=result)
    return result


def _single_stage(sc):
    """A one-stage layout for the unsegmented paths (the loss ignores it; vmap needs data)."""
    from collapipe_jax.scenario import make_decision

    delta = np.zeros((sc.N, sc.K), np.int64)
    delta[:, 0] = sc.L
    return make_decision(sc, delta, 1, -np.ones(sc.N, np.int64), 0.0)


def _config_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def result_dict(cfg: TrainConfig, setup: Setup, records: list[dict]) -> dict:
    final = records[-1]["metrics"] if records else {}
    return {
        "task": cfg.task,
        "framework": cfg.framework,
        "policy": cfg.resolved_policy,
        "model": setup.model_cfg.name,
        "pipelined": cfg.framework != "vanilla-fl" and not cfg.no_pipeline,
        "variant": cfg.variant,
        "clusters": setup.scenario.N,
        "samples_per_cluster": setup.weights.astype(int).tolist(),
        "n_train": setup.task.n_train,
        "n_test": setup.task.n_test,
        "seed": cfg.seed,
        "rounds": records,
        "final_metrics": final,
        "total_latency_s": float(sum(r["tau_round_s"] for r in records)),
        "total_energy_j": float(sum(r["energy_j"] for r in records)),
    }


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rounds_csv(records: list[dict]) -> str:
    names = sorted({k for r in records for k in r["metrics"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["round", "loss", "tau_round_s", "energy_j", *names])
    for r in records:
        writer.writerow([r["round"], r["loss"], r["tau_round_s"], r["energy_j"], *[r["metrics"].get(n, "") for n in names]])
    return buf.getvalue()


def _write_logs(cfg: TrainConfig, records: list[dict], *, partial: bool, result: dict | None = None) -> None:
    directory = cfg.log_dir or cfg.checkpoint_dir
    if not directory:
        return
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "rounds.csv", rounds_csv(records))
    if result is not None:
        _atomic_write(out / "result.json", json.dumps(result, indent=2, allow_nan=False))


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `collapipe train` (--preset, --scenario, --seed, --json, --host-devices are cli.py's)."""
    parser.add_argument("--task", default="toutiao", choices=sorted(TASK_MODEL), help="multi30k | ner | toutiao")
    parser.add_argument("--framework", default="collapipe", choices=FRAMEWORKS)
    parser.add_argument("--model", default="tiny", choices=MODEL_SIZES,
                        help="tiny | small | paper (paper-transformer for multi30k, paper-bert otherwise)")
    parser.add_argument("--policy", choices=POLICIES,
                        help="collapipe's scheduler (default dssra; uniform = w/o segment scheduling; "
                             "default = no optimisation)")
    parser.add_argument("--lyapunov", default="drift", choices=["drift", "paper"],
                        help="DSSRA's queue term: true drift-plus-penalty (default) or Eq. 32 literally")
    parser.add_argument("--no-pipeline", dest="no_pipeline", action="store_true",
                        help="train the same model with the unsegmented encoder (reference)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="b: samples per cluster and round")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--clusters", type=int, help="N clusters (default: the scenario's)")
    parser.add_argument("--cluster-chunk", dest="cluster_chunk", type=int, default=None,
                        help="vmap the clusters in groups of this size inside the jitted round (smaller working "
                             "set on CPUs at large N; same result up to float32 round-off)")
    parser.add_argument("--micro-batches", dest="micro_batches", type=int, default=4,
                        help="static GPipe micro-batches of the compiled program (gradient is m-independent)")
    parser.add_argument("--max-examples", dest="max_examples", type=int, help="use the first N training examples")
    parser.add_argument("--max-eval-examples", dest="max_eval_examples", type=int, default=200,
                        help="evaluate on the first N test examples (default 200)")
    parser.add_argument("--eval-every", dest="eval_every", type=int, default=1)
    parser.add_argument("--non-iid", dest="non_iid", action="store_true", help="Dirichlet label split over the clusters")
    parser.add_argument("--dirichlet-alpha", dest="dirichlet_alpha", type=float, default=0.5)
    parser.add_argument("--variant", default="paper", choices=["paper", "consistent"])
    parser.add_argument("--noise-mode", dest="noise_mode", default="relative", choices=["relative", "absolute"],
                        help="upload noise variance ε relative to the update's power (default) or absolute")
    parser.add_argument("--V", type=float, help="Lyapunov trade-off V (default: the scenario's)")
    parser.add_argument("--seq-len", dest="seq_len", type=int, help="sequence length (default: the model's)")
    parser.add_argument("--checkpoint-dir", dest="checkpoint_dir", help="orbax checkpoints, one per round")
    parser.add_argument("--resume", action="store_true", help="continue the run in --checkpoint-dir")
    parser.add_argument("--log-dir", dest="log_dir", help="rounds.csv and result.json (default: --checkpoint-dir)")
    parser.add_argument("--data-dir", dest="data_dir", help="data sets (default $COLLAPIPE_DATA, else the repository's data/)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")


def config_from_args(args) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if getattr(args, "resume", False) and not getattr(args, "checkpoint_dir", None):
        raise ValidationError("resume", "needs --checkpoint-dir", None)
    return TrainConfig(**values)


def run(args) -> tuple[dict, str]:
    from collapipe_jax.system.report import format_table

    cfg = config_from_args(args)
    result = train(cfg)
    metric_names = sorted({k for r in result["rounds"] for k in r["metrics"]})
    rows = [[r["round"], r["loss"], r["tau_round_s"], r["energy_j"], *[r["metrics"].get(n, float("nan")) for n in metric_names]]
            for r in result["rounds"]]
    table = format_table(["round", "loss", "tau_round[s]", "energy[J]", *metric_names], rows)
    lines = [f"task {cfg.task}, framework {cfg.framework} (policy {cfg.resolved_policy}), model {result['model']}, "
             f"N={result['clusters']}, pipelined={result['pipelined']}", table,
             "final: " + ", ".join(f"{k} = {v:.4g}" for k, v in result["final_metrics"].items())]
    return result, "\n".join(lines)
