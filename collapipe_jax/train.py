"""`collapipe train`: federated CollaPipe training on a real task (Alg. 1 with Alg. 4 per round).

Per round t:
  1–4. the host round (scheduling.host_round): draw the state, decide X(t) with the framework's
       policy, charge latency/energy/ε/Γ with the system model, update the queues (Eq. 29)
  5.   the jitted federated round (federated.program / federated.rounds): vmap over the N
       clusters, GPipe encoder per cluster, noisy upload with ε of the decision (Eq. 25), FedAvg
  6.   evaluate, log (rounds.csv, result.json) and checkpoint (orbax), atomically

The frameworks (collapipe, vanilla-fl, pipeline, titanic) and their decision rules are
described in scheduling/frameworks.py. `--no-pipeline` trains the same model with the
unsegmented encoder (reference).

Determinism / resume: the state draw, the batches (tasks.batching.round_indices), the upload
noise and the policies' random choices are pure functions of (seed, t), so a run resumed from the
checkpoint of round t continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct
from tqdm import tqdm

from collapipe_jax.checkpoints import Checkpoints, same_settings
from collapipe_jax.errors import ValidationError
from collapipe_jax.federated import program
from collapipe_jax.federated.optim import CLIENT_OPTIMIZERS, LR_SCHEDULES, SERVER_OPTIMIZERS
from collapipe_jax.federated.rounds import (CLIENT_STATES, NOISE_MODES, LocalWork, ServerState, Uploads,
                                            init_server_state)
from collapipe_jax.io import atomic_write_json, check_output_dir, write_csv
from collapipe_jax.models import cost
from collapipe_jax.models.config import COMPUTE_DTYPES, ModelConfig, model_preset
from collapipe_jax.models.lora import add_lora, has_lora, lora_adapters
from collapipe_jax.options import INT32_MAX, check_fields, check_float, check_int, check_seed, option, require
from collapipe_jax.scenario import PRESETS, TUNABLE_HELP, Scenario, load_scenario, orders_of, tunable_rank
from collapipe_jax.scheduling.frameworks import FRAMEWORKS
from collapipe_jax.scheduling.host_round import HostContext, run_host_round
from collapipe_jax.scheduling.lyapunov import LYAPUNOV_VARIANTS
from collapipe_jax.scheduling.policies import LOSS_POLICIES, SCHEDULER_POLICIES
from collapipe_jax.system.latency import VARIANTS
from collapipe_jax.tasks import TaskData, load_task
from collapipe_jax.tasks.batching import check_local_work, gather, local_batches, split_clusters

MODEL_SIZES = ("tiny", "small", "paper")
TASK_MODEL = {"multi30k": "translation", "ner": "ner", "toutiao": "sentence"}
TASK_SCENARIO = {"multi30k": "paper-transformer", "ner": "paper-bert", "toutiao": "paper-bert"}


class NonFiniteLossError(ValidationError):
    """Training diverged: a round's loss is NaN or infinite (the last good checkpoint is kept)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: str = option("toutiao", "the paper's task", choices=tuple(TASK_MODEL))
    framework: str = option("collapipe", "training framework (paper §VI)", choices=tuple(FRAMEWORKS))
    model: str = option("tiny", "model size (paper: paper-transformer for multi30k, paper-bert otherwise)",
                        choices=MODEL_SIZES)
    policy: str | None = option(None, "collapipe's scheduler (default dssra; uniform = w/o segment scheduling; "
                                      "default = no optimisation)", choices=SCHEDULER_POLICIES)
    plan_stages: int | None = option(None, "policy default only: split the encoder evenly over the first S devices "
                                           "(learning vs S)")
    plan_micro_batches: int | None = option(None, "policy default only: charge m micro-batches (learning vs m; set "
                                                  "--micro-batches to the same m to run GPipe with it)")
    lyapunov: str = option("drift", "DSSRA's queue term: true drift-plus-penalty or Eq. 32 literally",
                           choices=LYAPUNOV_VARIANTS)
    no_pipeline: bool = option(False, "train the same model with the unsegmented encoder (reference)")
    rounds: int = option(2, "number of rounds")
    batch: int = option(8, "b: samples per cluster and local step")
    local_steps: int | None = option(None, "E: local steps (mini-batches of b, each a full GPipe forward/backward) "
                                           "per cluster and round [1 when neither this nor --local-epochs is given]")
    local_epochs: float | None = option(None, "X: local epochs per round instead of --local-steps: cluster n makes "
                                              "E_n = ceil(X D_n / b) steps")
    optimizer: str = option("sgd", "client optimizer of the local steps and of the server head",
                            choices=CLIENT_OPTIMIZERS)
    lr: float = option(0.05, "peak learning rate of the client optimizer")
    weight_decay: float = option(0.0, "weight decay λ (decoupled for adamw, L2 otherwise; not on biases and "
                                      "LayerNorm scales)")
    lr_schedule: str = option("constant", "learning-rate schedule over the run's local steps", choices=LR_SCHEDULES)
    warmup_steps: int = option(0, "linear warm-up steps of the warmup-* schedules")
    clip_norm: float | None = option(None, "clip each local gradient to this global norm")
    client_state: str = option("keep", "client optimizer state: reset every round (FedAvg) or kept per cluster "
                                        "across rounds", choices=CLIENT_STATES)
    server_optimizer: str = option("avg", "server optimizer on the mean update: avg = FedAvg, adam = FedAdam, "
                                          "yogi = FedYogi (Reddi et al., 2021)", choices=SERVER_OPTIMIZERS)
    server_lr: float = option(1.0, "server learning rate (sgd, adam, yogi)")
    dropout: float = option(0.1, "dropout rate on embeddings, attention weights and residual branches (and the "
                                 "decoder); masks keyed by sample and layer, so pipelined == unpipelined")
    label_smoothing: float = option(0.0, "label smoothing of the translation targets (0.1 in the recipes)")
    dtype: str = option("float32", "compute dtype of matmuls and activations (parameters and optimizer state stay "
                                   "float32)", choices=COMPUTE_DTYPES)
    init_from: str | None = option(None, "start from the last checkpoint of a finished run (its --checkpoint-dir): "
                                         "embedding and encoder, and the head/decoder when the task matches")
    clusters: int | None = option(None, "N clusters (default: the scenario's)")
    cluster_chunk: int | None = option(None, "vmap the clusters in groups of this size inside the jitted round "
                                             "(smaller working set on CPUs at large N)")
    micro_batches: int = option(4, "static GPipe micro-batches of the compiled program (the gradient is "
                                   "m-independent)")
    max_examples: int | None = option(None, "use the first N training examples")
    max_eval_examples: int | None = option(200, "evaluate on the first N test examples")
    eval_every: int = option(1, "evaluate every this many rounds (and after the last)")
    non_iid: bool = option(False, "Dirichlet label split over the clusters")
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration of the non-IID split")
    variant: str = option("paper", "system model variant", choices=VARIANTS)
    noise_mode: str = option("relative", "upload noise variance ε relative to the update's power, absolute, or none "
                                         "(the noiseless ablation)",
                             choices=NOISE_MODES)
    V: float | None = option(None, "Lyapunov trade-off V (default: the scenario's)")
    tunable: str | None = option(None, TUNABLE_HELP)
    seq_len: int | None = option(None, "sequence length (default: the model's)")
    checkpoint_dir: str | None = option(None, "orbax checkpoints, one per round")
    resume: bool = option(False, "continue the run in --checkpoint-dir")
    log_dir: str | None = option(None, "rounds.csv and result.json (default: --checkpoint-dir)")
    data_dir: str | None = option(None, "data sets (default: $COLLAPIPE_DATA, else the repository's data/)")
    progress: bool = option(True, "progress bar on stderr")
    recipe: str | None = option(None, "JSON recipe (sweeps/recipes/): its values replace the defaults, the flags "
                                      "given replace its values", flag="config")
    seed: int = option(0, "seed", cli=False)
    preset: str | None = option(None, "scenario preset", cli=False)
    scenario: str | None = option(None, "scenario JSON file", cli=False)
    cache_dir: str | None = option(None, "tokenizer cache", cli=False)

    def __post_init__(self):
        check_fields(self)
        for name in ("rounds", "batch", "micro_batches", "eval_every"):
            check_int(name.replace("_", "-"), getattr(self, name))
        for name in ("cluster_chunk", "clusters", "max_examples", "max_eval_examples", "seq_len", "local_steps",
                     "plan_stages", "plan_micro_batches"):
            check_int(name.replace("_", "-"), getattr(self, name), optional=True)
        check_int("warmup-steps", self.warmup_steps, low=0)
        check_float("lr", self.lr, low=0.0, strict_low=True)
        check_float("server-lr", self.server_lr, low=0.0, strict_low=True)
        check_float("weight-decay", self.weight_decay, low=0.0)
        check_float("dropout", self.dropout, low=0.0)
        require(self.dropout < 1.0, "dropout", "must be < 1", self.dropout)
        check_float("label-smoothing", self.label_smoothing, low=0.0)
        require(self.label_smoothing < 1.0, "label-smoothing", "must be < 1", self.label_smoothing)
        check_float("clip-norm", self.clip_norm, low=0.0, strict_low=True, optional=True)
        check_float("local-epochs", self.local_epochs, low=0.0, strict_low=True, optional=True)
        require((self.plan_stages is None and self.plan_micro_batches is None) or self.resolved_policy == "default",
                "plan-stages", "a fixed plan (--plan-stages/--plan-micro-batches) needs --policy default")
        require(self.local_steps is None or self.local_epochs is None, "local-epochs",
                "give --local-steps or --local-epochs, not both", self.local_epochs)
        require(FRAMEWORKS[self.framework].federated or self.server_optimizer == "avg", "server-optimizer",
                f"the {self.framework} framework has no federated aggregation", self.server_optimizer)
        check_float("V", self.V, low=0.0, optional=True)
        check_float("dirichlet-alpha", self.dirichlet_alpha, low=0.0, strict_low=True)
        require(self.micro_batches <= self.batch, "micro-batches", f"must be <= batch={self.batch}", self.micro_batches)
        require(self.framework == "collapipe" or self.policy is None, "policy",
                f"only the collapipe framework takes a policy ({self.framework} has its own)", self.policy)
        require(not self.resume or self.checkpoint_dir, "resume", "needs --checkpoint-dir")
        check_seed("seed", self.seed)
        require(self.preset is None or self.preset in PRESETS, "preset",  # "" too: not silently the task's own
                f"unknown preset, choose one of {list(PRESETS)}", self.preset)
        require(self.rounds * (self.local_steps or 1) <= INT32_MAX, "rounds",
                f"rounds x local-steps must be <= {INT32_MAX} (the step count is an int32)", self.rounds)
        if self.tunable is not None:
            tunable_rank(self.tunable)

    @property
    def resolved_policy(self) -> str:
        return FRAMEWORKS[self.framework].policy or self.policy or "dssra"

    @property
    def pipelined(self) -> bool:
        return FRAMEWORKS[self.framework].pipelined and not self.no_pipeline

    def settings(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("rounds", "checkpoint_dir", "resume", "log_dir", "progress", "cache_dir", "data_dir",
                             "recipe")}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]


RECIPE_DIR = pathlib.Path(__file__).resolve().parents[1] / "sweeps" / "recipes"


def load_recipe(path: str) -> dict:
    """A recipe's settings: a JSON object of TrainConfig fields (a leading "about" string and
    "_"-prefixed keys are notes). A bare name is looked up in sweeps/recipes/."""
    file = pathlib.Path(path)
    if not file.is_file() and (RECIPE_DIR / f"{path}.json").is_file():
        file = RECIPE_DIR / f"{path}.json"
    require(file.is_file(), "config", "must be a recipe JSON file (or the name of one in sweeps/recipes/)", path)
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValidationError("config", f"{file} is not valid UTF-8 JSON ({err})") from None
    require(isinstance(values, dict), "config", "a recipe must be a JSON object", str(file))
    values = {k: v for k, v in values.items() if k != "about" and not k.startswith("_")}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    require(not unknown, "config", f"{file}: unknown setting(s) {unknown}")
    return values


def config_with_recipe(values: dict) -> TrainConfig:
    """TrainConfig from explicit values over the recipe they name (values["recipe"])."""
    recipe = load_recipe(values["recipe"]) if values.get("recipe") else {}
    return TrainConfig(**{**recipe, **values})


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
            server_optimizer=cfg.server_optimizer, server_lr=cfg.server_lr, noise_mode=cfg.noise_mode,
            independent=not FRAMEWORKS[cfg.framework].federated, cluster_chunk=cfg.cluster_chunk,
            client_state=cfg.client_state, dropout=cfg.dropout, label_smoothing=cfg.label_smoothing, dtype=cfg.dtype,
            lora=tunable_rank(self.scenario.tunable) is not None)


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


def build_setup(cfg: TrainConfig) -> Setup:
    base_model = model_preset(cfg.model if cfg.model != "paper" else TASK_SCENARIO[cfg.task])
    seq_len = cfg.seq_len or base_model.seq_len
    task = load_task(cfg.task, seq_len=seq_len, data_dir=cfg.data_dir, vocab_size=base_model.vocab_size,
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
    clusters = split_clusters(task.n_train, scenario.N, seed=cfg.seed, labels=task.partition_labels,
                              non_iid=cfg.non_iid, alpha=cfg.dirichlet_alpha)
    sizes = np.array([len(c) for c in clusters])
    if cfg.local_epochs is not None:
        steps = np.maximum(np.ceil(cfg.local_epochs * sizes / cfg.batch), 1).astype(int)
    else:
        steps = np.full(scenario.N, cfg.local_steps or 1)
    return Setup(cfg, task, model_cfg, scenario, clusters, sizes.astype(np.float32), steps)


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
    if not FRAMEWORKS[cfg.framework].federated:  # every cluster keeps its own encoder
        client = jax.tree.map(lambda x: jnp.broadcast_to(x, (sc.N,) + x.shape), client)
    server = init_server_state(setup.round_settings(1).spec(), client, params["server"], sc.N)
    return TrainState(server, np.zeros(sc.N), np.full(sc.N, np.nan))


def init_from_run(run_dir: str, params: dict, task: TaskData) -> dict:
    """The embedding and encoder (and the server model when the task matches) of a finished
    run's last checkpoint in place of the fresh ones; a different vocabulary or shape is a
    one-line error naming what differs."""
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
        require(tuple(value.shape) == tuple(leaf.shape), "init-from",
                f"parameter {name}{key} has shape {tuple(value.shape)} in the run, {tuple(leaf.shape)} here")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(take, fresh)


def evaluate_model(setup: Setup, client, server, eval_batch: int = 256) -> dict[str, float]:
    """The task metric of the (unsegmented) model on the test split: one jitted program over the
    whole split (chunks of `eval_batch`), one transfer of the predictions to the host."""
    predict = program.predict_fn(setup.task.seq_len, eval_batch, setup.cfg.dtype)
    return setup.task.score(np.asarray(predict(client, server, jnp.asarray(setup.task.test["tokens"]))))


def restore(ckpt: Checkpoints, cfg: TrainConfig, state: TrainState) -> tuple[TrainState, list[dict], int]:
    """The newest intact checkpoint's state, records and next round; refuses other settings
    (checked on the checkpoint's meta, before any array is read)."""
    restored, meta = ckpt.restore_newest_intact(serialization.to_state_dict(state),
                                                same_settings(cfg.fingerprint(), cfg.settings(), ckpt.path))
    state = serialization.from_state_dict(state, restored)
    state = state.replace(Y=np.asarray(state.Y), last_losses=np.asarray(state.last_losses))
    return state, meta["records"], int(meta["next_round"])


def open_run_dirs(cfg: TrainConfig) -> Checkpoints | None:
    """Check the run's output places (one-line errors) and lock its checkpoint directory."""
    if cfg.resume:
        require(pathlib.Path(cfg.checkpoint_dir).is_dir(), "resume", "--checkpoint-dir does not exist: nothing to "
                                                                      "resume", cfg.checkpoint_dir)
    if cfg.log_dir:
        check_output_dir("log-dir", cfg.log_dir)
    if not cfg.checkpoint_dir:
        return None
    check_output_dir("checkpoint-dir", cfg.checkpoint_dir)
    ckpt = Checkpoints(cfg.checkpoint_dir, exclusive=True)
    if cfg.resume:
        require(ckpt.latest() is not None, "resume",
                "--checkpoint-dir holds no checkpoint to resume (drop --resume to start a new run)", str(ckpt.path))
    else:
        require(ckpt.latest() is None, "checkpoint-dir",
                "holds a checkpoint: pass --resume to continue it, or use an empty directory", str(ckpt.path))
    return ckpt


def needs_losses(policy: str) -> bool:
    """Whether round t+1's decision needs round t's losses (then it cannot overlap round t)."""
    return policy in LOSS_POLICIES


def train(cfg: TrainConfig, setup: Setup | None = None) -> dict:
    """Run (or resume) a training run; returns the result dict of DESIGN §6.

    The host decides round t+1 (draw, policy, charge, queues) while the device runs round t:
    JAX dispatches the jitted round asynchronously, and nothing waits for its results until the
    losses are read (loss-only, which decides from those losses, runs in series)."""
    ckpt = open_run_dirs(cfg)  # before any work: bad places and a second writer fail at once
    setup = setup or build_setup(cfg)
    check_local_work(setup.local_steps, cfg.batch, setup.task.train)
    sc, task = setup.scenario, setup.task
    framework = FRAMEWORKS[cfg.framework]
    ctx = HostContext(sc, cfg.resolved_policy, cfg.seed, cfg.variant, cfg.lyapunov, uploads_model=framework.federated,
                      local_steps=tuple(int(e) for e in setup.local_steps), stages=cfg.plan_stages,
                      micro_batches=cfg.plan_micro_batches)
    state = initial_state(setup)
    records: list[dict] = []
    start = 0
    if ckpt is not None and cfg.resume:
        state, records, start = restore(ckpt, cfg, state)
    E = int(setup.local_steps.max())
    work = LocalWork(jnp.asarray(setup.local_steps, jnp.int32), jnp.asarray(0, jnp.int32))

    bar = tqdm(total=cfg.rounds, initial=min(start, cfg.rounds), file=sys.stderr, leave=False,
               desc=f"train {cfg.task}/{cfg.framework}", disable=not cfg.progress)
    hr = run_host_round(ctx, start, state.Y, None if start == 0 else state.last_losses) if start < cfg.rounds else None
    for t in range(start, cfg.rounds):
        t0 = time.perf_counter()
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
        batch = gather(task.train, local_batches(setup.clusters, cfg.batch, setup.local_steps, t, cfg.seed))
        key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed ^ 0x5EED), t)
        t_step = time.perf_counter()
        new_server, out = round_fn(server_state, batch, layouts, uploads, work.replace(step0=jnp.asarray(t * E)), key)
        overlap = t + 1 < cfg.rounds and not needs_losses(ctx.policy)
        next_hr = run_host_round(ctx, t + 1, hr.Y_next) if overlap else None  # while the device works
        losses = np.asarray(out.loss, np.float64)
        step_ms = 1e3 * (time.perf_counter() - t_step)
        loss = float(np.sum(setup.weights * losses) / np.sum(setup.weights))
        if not (np.isfinite(losses).all() and bool(out.params_finite)):
            kept = f"last good checkpoint (round {t - 1}) kept in {ckpt.path}" if ckpt and t > 0 else "no checkpoint written"
            raise NonFiniteLossError("loss", f"non-finite training loss at round {t} (cluster losses {losses.tolist()}); "
                                             f"training stopped, {kept}")
        state = TrainState(new_server, hr.Y_next, losses)
        t_eval = time.perf_counter()
        evaluated = (t + 1) % cfg.eval_every == 0 or t == cfg.rounds - 1
        client = new_server.client
        eval_client = client if framework.federated else jax.tree.map(lambda x: x[0], client)
        metrics = evaluate_model(setup, eval_client, new_server.server) if evaluated else {}
        records.append(round_record(t, loss, losses, metrics, hr, setup, step_ms,
                                    1e3 * (time.perf_counter() - t_eval), t0))
        if ckpt is not None:
            ckpt.save(t, serialization.to_state_dict(state),
                      {"fingerprint": cfg.fingerprint(), "config": dataclasses.asdict(cfg), "records": records,
                       "next_round": t + 1, "vocab_id": task.vocab_id})
        write_logs(cfg, records)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if t + 1 < cfg.rounds:
            hr = next_hr if next_hr is not None else run_host_round(ctx, t + 1, hr.Y_next, losses)
    bar.close()
    result = result_dict(cfg, setup, records, trainable_parameters(cfg, state))
    write_logs(cfg, records, result)
    if ckpt is not None:
        ckpt.close()  # the directory's lock (an error keeps it until the process ends)
    return result


def round_record(t, loss, losses, metrics, hr, setup: Setup, step_ms, eval_ms, t0) -> dict:
    decision, sysm = hr.decision, hr.metrics
    return {
        "round": t, "loss": loss, "cluster_losses": losses.tolist(), "metrics": metrics,
        "tau_round_s": float(sysm.tau_round_s),
        # per cluster tau_pipe_cmp_s (on-device computation), tau_pipe_dd_s (D2D), tau_up_s
        # (upload) and the round's largest of each, round_cmp_s / round_dd_s / round_up_s
        "tau_pipe_s": np.asarray(sysm.tau_pipe_s).tolist(), **hr.split,
        "energy_j": float(np.sum(sysm.E_com_j) + np.sum(sysm.E_pipe_j)),
        "violations": hr.violations,
        "Y": hr.Y_next.tolist(), "Gamma": np.asarray(sysm.Gamma).tolist(),
        "decision": {"delta": np.asarray(decision.delta).tolist(), "order": orders_of(decision),
                     "m": np.asarray(decision.m).tolist(), "channel": np.asarray(decision.channel).tolist(),
                     "p_n_w": np.asarray(decision.p_n_w).tolist()},
        "local_steps": setup.local_steps.tolist(),
        "decide_ms": hr.host_ms, "step_ms": step_ms, "eval_ms": eval_ms,
        "wall_s": time.perf_counter() - t0,
    }


def parameter_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def trainable_parameters(cfg: TrainConfig, state: TrainState) -> int:
    """Parameters the optimizers update: one client model (of N without FL) — its LoRA adapters
    only with lora:R — and the server's."""
    client = state.server.client
    if has_lora(client):
        client = lora_adapters(client)
    count = parameter_count(client)
    if not FRAMEWORKS[cfg.framework].federated:
        count //= len(state.Y)
    return count + parameter_count(state.server.server)


def result_dict(cfg: TrainConfig, setup: Setup, records: list[dict], trainable: int) -> dict:
    return {
        "task": cfg.task, "framework": cfg.framework, "policy": cfg.resolved_policy, "model": setup.model_cfg.name,
        "pipelined": cfg.pipelined, "variant": cfg.variant, "clusters": setup.scenario.N,
        "samples_per_cluster": setup.weights.astype(int).tolist(),
        "n_train": setup.task.n_train, "n_test": setup.task.n_test, "seed": cfg.seed,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                      "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps, "clip_norm": cfg.clip_norm},
        "server_optimizer": {"name": cfg.server_optimizer, "lr": cfg.server_lr},
        "local_steps": setup.local_steps.tolist(),
        "trainable_params": trainable,
        "uploaded_bits_per_round": setup.scenario.uploaded_theta_bits if FRAMEWORKS[cfg.framework].federated else 0.0,
        "rounds": records,
        "final_metrics": records[-1]["metrics"] if records else {},
        "total_latency_s": float(sum(r["tau_round_s"] for r in records)),
        "total_energy_j": float(sum(r["energy_j"] for r in records)),
    }


def rounds_table(records: list[dict]) -> list[dict]:
    """One flat row per round: round, loss, τ, energy and the metrics (rounds.csv)."""
    return [{"round": r["round"], "loss": r["loss"], "tau_round_s": r["tau_round_s"], "energy_j": r["energy_j"],
             **r["metrics"]} for r in records]


def write_logs(cfg: TrainConfig, records: list[dict], result: dict | None = None) -> None:
    """rounds.csv after every round, result.json at the end, into --log-dir (or --checkpoint-dir)."""
    directory = cfg.log_dir or cfg.checkpoint_dir
    if not directory:
        return
    out = pathlib.Path(directory)
    names = sorted({k for r in records for k in r["metrics"]})
    write_csv(out / "rounds.csv", rounds_table(records), ["round", "loss", "tau_round_s", "energy_j", *names])
    if result is not None:
        atomic_write_json(out / "result.json", result)
