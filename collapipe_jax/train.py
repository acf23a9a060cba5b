"""`collapipe train`: federated CollaPipe training on a real task (Alg. 1 with Alg. 4 per round).

Per round t:
  1–4. the host round (scheduling.host_round): draw the state, decide X(t) with the framework's
       policy, charge latency/energy/ε/Γ with the system model, update the queues (Eq. 29)
  5.   the jitted federated round (federated.program / federated.rounds): vmap over the N
       clusters, GPipe encoder per cluster, noisy upload with ε of the decision (Eq. 25), FedAvg
  6.   evaluate, log (rounds.csv, result.json) and checkpoint (orbax), atomically

The frameworks (collapipe, vanilla-fl, pipeline, titanic) and their decision rules are
described in scheduling/frameworks.py. `--no-pipeline` trains the same model with the
unsegmented encoder (reference). `--framework centralized` is the ceiling beside them
(federated/centralized.py): the same model, optimizer, schedule, dropout and samples on one
device, with no host round; `--reference RUN_DIR` names a run's gap to it in result.json.

Determinism / resume: the state draw, the batches (tasks.batching.round_indices), the upload
noise and the policies' random choices are pure functions of (seed, t), so a run resumed from the
checkpoint of round t continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, struct
from tqdm import tqdm

from collapipe_jax.checkpoints import Checkpoints, lock_directory, same_settings, unlock_directory
from collapipe_jax.errors import ValidationError
from collapipe_jax.federated import program
from collapipe_jax.federated.centralized import centralized_indices, init_centralized_state
from collapipe_jax.federated.rounds import LocalWork, ServerState, Uploads, init_server_state
from collapipe_jax.io import check_output_dir
from collapipe_jax.models import cost
from collapipe_jax.models.config import ModelConfig, model_preset
from collapipe_jax.models.lora import add_lora
from collapipe_jax.options import INT32_MAX, MEMORY_SHARE, memory_budget, require
from collapipe_jax.scenario import Scenario, load_scenario, orders_of, tunable_rank
from collapipe_jax.scheduling.frameworks import FRAMEWORKS
from collapipe_jax.scheduling.host_round import HostContext, run_host_round
from collapipe_jax.scheduling.policies import LOSS_POLICIES
from collapipe_jax.scheduling.schedule import host_policy
from collapipe_jax.tasks import TaskData, load_task
from collapipe_jax.tasks.batching import check_local_work, gather, local_batches, split_clusters
from collapipe_jax.train_config import (MODEL_SIZES, RECIPE_DIR, TASK_MODEL, TASK_SCENARIO,  # noqa: F401 (re-exported)
                                        NonFiniteLossError, TrainConfig, check_plan, config_with_recipe, load_recipe)
from collapipe_jax.train_records import (centralized_record, check_records, check_resumed_records, load_reference,
                                         reference_gap, replace_records, result_dict, round_record,
                                         trainable_parameters, write_logs)

@dataclasses.dataclass
class Setup:
    cfg: TrainConfig
    task: TaskData
    model_cfg: ModelConfig
    scenario: Scenario
    clusters: list[np.ndarray]  # training example indices per cluster
    weights: np.ndarray  # D_n
    local_steps: np.ndarray  # E_n: local steps of each cluster per round

    def round_settings(self, n_stages: int) -> program.RoundSettings:
        cfg = self.cfg
        E = int(self.local_steps.max())
        return program.RoundSettings(
            pipelined=cfg.pipelined, n_micro=cfg.micro_batches, n_stages=n_stages, local_steps=E,
            optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, lr_schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps, total_steps=cfg.rounds * E, clip_norm=cfg.clip_norm,
            server_optimizer=cfg.server_optimizer, server_lr=cfg.server_lr,
            server_momentum=cfg.server_momentum, noise_mode=cfg.noise_mode,
            independent=cfg.independent, cluster_chunk=cfg.cluster_chunk,
            client_state=cfg.client_state, dropout=cfg.dropout, label_smoothing=cfg.label_smoothing, dtype=cfg.dtype,
            lora=tunable_rank(self.scenario.tunable) is not None, pipeline_schedule=cfg.pipeline_schedule)


@struct.dataclass
class TrainState:
    """Everything a round changes: the server state (global client model θ — one per cluster
    without FL —, server model ω and the optimizer states), the queues and the last losses."""

    server: ServerState
    Y: np.ndarray  # [N] float64
    last_losses: np.ndarray  # [N]; NaN before the first round


def model_config_for(task_name: str, size: str, vocab_size: int, seq_len: int | None) -> ModelConfig:
    cfg = model_preset(size if size != "paper" else TASK_SCENARIO[task_name])
    return cfg.replace(vocab_size=int(vocab_size), seq_len=int(seq_len or cfg.seq_len))


EVAL_BATCH = 256  # test examples per chunk of the jitted evaluation


def check_attention_memory(seq_len: int, batch: int, n_heads: int) -> None:
    """Size guard of --seq-len: one layer's attention scores (float32, [batch, heads, seq_len,
    seq_len]) for the larger of a training batch and an evaluation chunk must fit the memory
    budget; checked before the data are padded to seq_len."""
    rows = max(batch, EVAL_BATCH)
    need = 4 * rows * n_heads * seq_len * seq_len
    require(need <= memory_budget(), "seq-len",
            f"attention over {rows} sequences x {n_heads} heads x {seq_len}^2 positions needs {need / 1e9:.3g} GB, "
            f"more than the limit of {memory_budget() / 1e9:.3g} GB (1/{MEMORY_SHARE} of this machine's memory)",
            seq_len)


def local_steps_of(cfg: TrainConfig, sizes: np.ndarray) -> np.ndarray:
    """E_n: --local-steps, or ceil(X D_n / b) for --local-epochs X (computed in float64 and
    checked, so that 1e19 epochs is an error naming --local-epochs, not an int64 overflow)."""
    if cfg.local_epochs is None:
        return np.full(len(sizes), cfg.local_steps or 1)
    steps = np.maximum(np.ceil(cfg.local_epochs * sizes.astype(np.float64) / cfg.batch), 1.0)
    require(float(steps.max()) * cfg.rounds <= INT32_MAX, "local-epochs",
            f"rounds x ceil(X D_n / b) local steps must be <= {INT32_MAX} (the step count is an int32); the largest "
            f"cluster holds D_n = {int(sizes.max())} examples, b = {cfg.batch}", cfg.local_epochs)
    return steps.astype(int)


def build_setup(cfg: TrainConfig) -> Setup:
    base_model = model_preset(cfg.model if cfg.model != "paper" else TASK_SCENARIO[cfg.task])
    seq_len = cfg.seq_len or base_model.seq_len
    check_attention_memory(seq_len, cfg.batch, base_model.n_heads)
    task = load_task(cfg.task, seq_len=seq_len, data_dir=cfg.data_dir, vocab_size=cfg.vocab_size or base_model.vocab_size,
                     max_examples=cfg.max_examples, max_eval_examples=cfg.max_eval_examples, seed=cfg.seed,
                     cache_dir=cfg.cache_dir)
    model_cfg = model_config_for(cfg.task, cfg.model, task.vocab_size, seq_len)
    base = load_scenario(cfg.preset, cfg.scenario) if cfg.scenario or cfg.preset else load_scenario(TASK_SCENARIO[cfg.task])
    overrides = {"L": model_cfg.n_enc_layers, "b": cfg.batch, "model": model_cfg.name,
                 **{k: v for k, v in cost.model_size_inputs(model_cfg, cfg.batch).items()
                    if k not in ("o_fwd_flops", "o_bwd_flops")}}  # o_l, o'_l stay Table II's
    if cfg.clusters is not None:
        overrides["N"] = cfg.clusters
    if cfg.V is not None:
        overrides["V"] = cfg.V
    if cfg.tunable is not None:
        overrides["tunable"] = cfg.tunable
    scenario = base.replace(**overrides)
    check_plan(cfg, scenario.K, scenario.L, scenario.b)
    clusters = split_clusters(task.n_train, scenario.N, seed=cfg.seed, labels=task.partition_labels,
                              non_iid=cfg.non_iid, alpha=cfg.dirichlet_alpha)
    sizes = np.array([len(c) for c in clusters])
    return Setup(cfg, task, model_cfg, scenario, clusters, sizes.astype(np.float32), local_steps_of(cfg, sizes))


def initial_state(setup: Setup) -> TrainState:
    cfg, sc = setup.cfg, setup.scenario
    n_classes = setup.task.n_labels if setup.task.kind != "seq2seq" else None
    params = program.jitted_init(setup.model_cfg, TASK_MODEL[cfg.task], n_classes)(jax.random.PRNGKey(cfg.seed))
    if cfg.init_from:
        params = init_from_run(cfg.init_from, params, setup.task)
    client = params["client"]
    rank = tunable_rank(sc.tunable)
    if rank is not None:  # frozen base, rank-R adapters (B = 0: the model starts unchanged)
        client = add_lora(client, jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 0x10AA), rank)
    if cfg.independent:  # every cluster keeps its own encoder
        client = jax.tree.map(lambda x: jnp.broadcast_to(x, (sc.N,) + x.shape), client)
    if cfg.centralized:
        server = init_centralized_state(setup.round_settings(1).spec(), client, params["server"])
        return TrainState(server, np.zeros(sc.N), np.full(1, np.nan))
    server = init_server_state(setup.round_settings(1).spec(), client, params["server"], sc.N)
    return TrainState(server, np.zeros(sc.N), np.full(sc.N, np.nan))


def init_from_run(run_dir: str, params: dict, task: TaskData) -> dict:
    """The embedding and encoder (and the server model when the task matches) of a finished
    run's last checkpoint in place of the fresh ones; a different vocabulary or shape is a
    one-line error naming what differs. Position embeddings learned for longer sequences give
    their first rows (positions 0..s-1 mean the same at any length)."""
    path = pathlib.Path(run_dir)
    ckpt = Checkpoints(str(path)) if path.is_dir() else None
    step = ckpt.latest() if ckpt is not None else None
    require(step is not None, "init-from", "must be the --checkpoint-dir of a run with a checkpoint", run_dir)
    saved, meta = ckpt.restore_raw(step)
    source = meta.get("config", {})
    require(meta.get("vocab_id") == task.vocab_id, "init-from",
            f"the run's vocabulary ({source.get('task')}, {meta.get('vocab_id')}) differs from this task's "
            f"({task.name}, {task.vocab_id})", run_dir)
    client = saved["server"]["client"]
    if not FRAMEWORKS.get(source.get("framework"), FRAMEWORKS["collapipe"]).federated:
        client = jax.tree.map(lambda x: x[0], client)  # a run without FL: cluster 0's model
    out = {"client": match_shapes("client", params["client"], client), "server": params["server"]}
    if source.get("task") == task.name:
        out["server"] = match_shapes("server", params["server"], saved["server"]["server"])
    return out


def match_shapes(name: str, fresh, saved):
    """`saved` arranged as `fresh`, leaf by leaf; a missing leaf or another shape is an error."""
    flat_saved = dict(jax.tree_util.tree_leaves_with_path(saved))
    flat_saved = {jax.tree_util.keystr(k): v for k, v in flat_saved.items()}

    def take(path, leaf):
        key = jax.tree_util.keystr(path)
        value = flat_saved.get(key)
        require(value is not None, "init-from", f"the run has no parameter {name}{key}")
        if key.endswith("['pos_embed']") and value.shape[0] >= leaf.shape[0] and value.shape[1:] == leaf.shape[1:]:
            value = value[: leaf.shape[0]]
        require(tuple(value.shape) == tuple(leaf.shape), "init-from",
                f"parameter {name}{key} has shape {tuple(value.shape)} in the run, {tuple(leaf.shape)} here")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(take, fresh)


def evaluate_model(setup: Setup, client, server, eval_batch: int = EVAL_BATCH) -> dict[str, float]:
    """The task metric of the (unsegmented) model on the test split: one jitted program over the
    whole split (chunks of `eval_batch`), one transfer of the predictions to the host."""
    predict = program.predict_fn(setup.task.seq_len, eval_batch, setup.cfg.dtype)
    return setup.task.score(np.asarray(predict(client, server, jnp.asarray(setup.task.test["tokens"]))))


def restore(ckpt: Checkpoints, cfg: TrainConfig, state: TrainState,
            vocab_id: str) -> tuple[TrainState, list[dict], int]:
    """The newest intact checkpoint's state, records and next round; refuses other settings or
    other data (checked on the checkpoint's meta, before any array is read)."""
    restored, meta = ckpt.restore_newest_intact(serialization.to_state_dict(state),
                                                same_settings(cfg.fingerprint(), cfg.settings(), ckpt.path, vocab_id))
    state = serialization.from_state_dict(state, restored)
    state = state.replace(Y=np.asarray(state.Y), last_losses=np.asarray(state.last_losses))
    return state, meta["records"], int(meta["next_round"])


def open_run_dirs(cfg: TrainConfig) -> Checkpoints | None:
    """Check the run's output places (one-line errors) and lock them: the checkpoint directory,
    and the log directory (a second run writing into either is refused at once)."""
    if cfg.resume:
        require(pathlib.Path(cfg.checkpoint_dir).is_dir(), "resume", "--checkpoint-dir does not exist: nothing to "
                                                                      "resume", cfg.checkpoint_dir)
    if cfg.log_dir:
        check_output_dir("log-dir", cfg.log_dir)
    ckpt = None
    if cfg.checkpoint_dir:
        check_output_dir("checkpoint-dir", cfg.checkpoint_dir)
        ckpt = Checkpoints(cfg.checkpoint_dir, exclusive=True)
        if cfg.resume:
            require(ckpt.latest() is not None, "resume",
                    "--checkpoint-dir holds no checkpoint to resume (drop --resume to start a new run)", str(ckpt.path))
        else:
            require(ckpt.latest() is None, "checkpoint-dir",
                    "holds a checkpoint: pass --resume to continue it, or use an empty directory", str(ckpt.path))
    if cfg.log_dir:
        lock_directory(pathlib.Path(cfg.log_dir), "log-dir")  # held already when it is the checkpoint directory
    return ckpt


def needs_losses(policy: str) -> bool:
    """Whether round t+1's decision needs round t's losses (then it cannot overlap round t)."""
    return policy in LOSS_POLICIES


def centralized_step(setup: Setup, state: TrainState, t: int, key):
    """Round t of the centralized run: E steps of the N clusters' mini-batches together."""
    cfg = setup.cfg
    E = int(setup.local_steps.max())
    round_fn = program.compiled_centralized(setup.round_settings(1))
    indices = centralized_indices(local_batches(setup.clusters, cfg.batch, setup.local_steps, t, cfg.seed))
    return round_fn(state.server, gather(setup.task.train, indices), jnp.asarray(t * E, jnp.int32), key)


def federated_step(setup: Setup, state: TrainState, t: int, key, hr, work: LocalWork):
    """Round t of a federated framework under the host round's decision (GPipe per cluster, noisy
    upload, aggregation)."""
    cfg, sc = setup.cfg, setup.scenario
    decision = hr.decision
    delta, orders = np.asarray(decision.delta), orders_of(decision)
    if cfg.pipelined:
        n_stages, n_slots = program.layout_shape(delta)
        layouts = program.stage_layouts(delta, orders, n_stages, n_slots)
    else:
        n_stages, layouts = 1, program.single_stage_layouts(sc.N, sc.L)
    round_fn = program.compiled_round(setup.round_settings(n_stages))
    server_state = state.server
    if cfg.pipelined:
        # keep the state replicated over the round's stage mesh: the round returns it there,
        # and inputs placed elsewhere would make jit compile the round a second time
        server_state = jax.device_put(server_state, program.replicated(n_stages))
    active = np.asarray(decision.channel) >= 0
    uploads = Uploads(active=jnp.asarray(active),
                      eps=jnp.asarray(np.where(active, np.asarray(hr.metrics.eps), 0.0), jnp.float32),
                      weight=jnp.asarray(setup.weights))
    batch = gather(setup.task.train, local_batches(setup.clusters, cfg.batch, setup.local_steps, t, cfg.seed))
    E = int(setup.local_steps.max())
    return round_fn(server_state, batch, layouts, uploads, work.replace(step0=jnp.asarray(t * E)), key)


def train(cfg: TrainConfig, setup: Setup | None = None) -> dict:
    """Run (or resume) a training run; returns the result dict of docs/design.md §6.

    The host decides round t+1 (draw, policy, charge, queues) while the device runs round t:
    JAX dispatches the jitted round asynchronously, and nothing waits for its results until the
    losses are read (loss-only, which decides from those losses, runs in series). The
    centralized run has no host round."""
    ckpt = open_run_dirs(cfg)  # before any work: bad places and a second writer fail at once
    try:
        earlier = check_records(cfg)
        result = run_rounds(cfg, setup, ckpt, earlier)
    finally:  # the log directory's lock (the checkpoint directory's stays until the process ends on an error)
        if cfg.log_dir and (ckpt is None or ckpt.path != pathlib.Path(cfg.log_dir).resolve()):
            unlock_directory(pathlib.Path(cfg.log_dir))
    if ckpt is not None:
        ckpt.close()  # the directory's lock (an error keeps it until the process ends)
    return result


def close_bar(bar) -> None:
    """Clear the progress bar and end its line before an error line: in a file or a pipe the
    bar's updates (separated by carriage returns) are one line, which the error line must not continue."""
    shown = not bar.disable
    bar.close()
    if shown:
        print(file=sys.stderr, flush=True)


def run_rounds(cfg: TrainConfig, setup: Setup | None, ckpt: Checkpoints | None, earlier: list[pathlib.Path]) -> dict:
    """The body of `train` once its directories are open and locked."""
    reference = load_reference(cfg.reference, cfg.task) if cfg.reference else None
    setup = setup or build_setup(cfg)
    check_local_work(setup.local_steps, cfg.batch, setup.task.train)
    sc, task = setup.scenario, setup.task
    ctx = None if cfg.centralized else HostContext(
        sc, host_policy(cfg.resolved_policy, sc, cfg.variant, cfg.lyapunov), cfg.seed, cfg.variant, cfg.lyapunov, uploads_model=cfg.federated,
        local_steps=tuple(int(e) for e in setup.local_steps), stages=cfg.plan_stages,
        micro_batches=cfg.plan_micro_batches)
    state = initial_state(setup)
    records: list[dict] = []
    start = 0
    if ckpt is not None and cfg.resume:
        state, records, start = restore(ckpt, cfg, state, task.vocab_id)
        check_resumed_records(cfg, records)
    work = LocalWork(jnp.asarray(setup.local_steps, jnp.int32), jnp.asarray(0, jnp.int32))

    bar = tqdm(total=cfg.rounds, initial=min(start, cfg.rounds), file=sys.stderr, leave=False,
               desc=f"train {cfg.task}/{cfg.framework}", disable=not cfg.progress)
    hr = None
    if ctx is not None and start < cfg.rounds:
        hr = run_host_round(ctx, start, state.Y, None if start == 0 else state.last_losses)
    for t in range(start, cfg.rounds):
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed ^ 0x5EED), t)
        t_step = time.perf_counter()
        next_hr = None
        if ctx is None:
            new_server, out = centralized_step(setup, state, t, key)
        else:
            new_server, out = federated_step(setup, state, t, key, hr, work)
            if t + 1 < cfg.rounds and not needs_losses(ctx.policy):
                next_hr = run_host_round(ctx, t + 1, hr.Y_next)  # while the device works
        losses = np.asarray(out.loss, np.float64)
        step_ms = 1e3 * (time.perf_counter() - t_step)
        weights = setup.weights if ctx is not None else np.ones(1)
        loss = float(np.sum(weights * losses) / np.sum(weights))
        if not (np.isfinite(losses).all() and bool(out.params_finite)):
            kept = f"last good checkpoint (round {t - 1}) kept in {ckpt.path}" if ckpt and t > 0 else "no checkpoint written"
            close_bar(bar)
            raise NonFiniteLossError("loss", f"non-finite training loss at round {t} (cluster losses {losses.tolist()}); "
                                             f"training stopped, {kept}")
        state = TrainState(new_server, state.Y if hr is None else hr.Y_next, losses)
        t_eval = time.perf_counter()
        evaluated = (t + 1) % cfg.eval_every == 0 or t == cfg.rounds - 1
        client = new_server.client
        eval_client = jax.tree.map(lambda x: x[0], client) if cfg.independent else client
        metrics = evaluate_model(setup, eval_client, new_server.server) if evaluated else {}
        eval_ms = 1e3 * (time.perf_counter() - t_eval)
        if hr is None:
            records.append(centralized_record(t, loss, metrics, setup, step_ms, eval_ms, t0))
        else:
            records.append(round_record(t, loss, losses, metrics, hr, setup, step_ms, eval_ms, t0))
        try:
            if ckpt is not None:
                ckpt.save(t, serialization.to_state_dict(state),
                          {"fingerprint": cfg.fingerprint(), "config": dataclasses.asdict(cfg), "records": records,
                           "next_round": t + 1, "vocab_id": task.vocab_id})
            write_logs(cfg, records)
            replace_records(earlier)  # --force: this run's records are there, the earlier ones go
            earlier = []
        except (ValidationError, OSError):  # disk full: the bar cleared before the error line
            close_bar(bar)
            raise
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if hr is not None and t + 1 < cfg.rounds:
            hr = next_hr if next_hr is not None else run_host_round(ctx, t + 1, hr.Y_next, losses)
    bar.close()
    result = result_dict(cfg, setup, records, trainable_parameters(cfg, state))
    if reference is not None:
        result["reference"] = reference_gap(result, reference, cfg.reference)
    write_logs(cfg, records, result)
    return result
