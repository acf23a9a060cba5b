"""`collapipe train`'s settings: `TrainConfig` (every option of the command, checked on
construction) and the recipes of sweeps/recipes/ that fill it.

This module imports no JAX (`collapipe train --help` is built from `TrainConfig`): the choices
come from choices.py, and the checks that need the model code import it when a config is made.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import sys

from collapipe_jax.choices import (CLIENT_OPTIMIZERS, CLIENT_STATES, COMPUTE_DTYPE_NAMES, FRAMEWORK_NAMES,
                                   LR_SCHEDULES, LYAPUNOV_VARIANTS, NOISE_MODES, PIPELINE_SCHEDULES, PRESETS, SCHEDULER_POLICIES,
                                   SERVER_OPTIMIZERS, TUNABLE_HELP, VARIANTS)
from collapipe_jax.errors import ValidationError
from collapipe_jax.options import (INT32_MAX, SEED_MAX, check_fields, check_float, check_int, check_seed, check_type,
                                   field_types)
from collapipe_jax.options import option, require

MODEL_SIZES = ("tiny", "small", "paper")
TASK_MODEL = {"multi30k": "translation", "ner": "ner", "toutiao": "sentence"}
TASK_SCENARIO = {"multi30k": "paper-transformer", "ner": "paper-bert", "toutiao": "paper-bert"}
# the reference beside the paper's frameworks: one device, the same samples, no pipeline/upload/aggregation
CENTRALIZED = "centralized"
TRAIN_FRAMEWORKS = (*FRAMEWORK_NAMES, CENTRALIZED)
MIN_VOCAB, MAX_VOCAB = 5, 200_000  # --vocab-size: above the 4 specials; an embedding of at most 200k rows
MAX_TRAIN_SEEDS = 1000  # --seeds: each seed is a whole training run; result.json lists every seed's


def framework_of(name: str):
    """The framework's entry of `scheduling.frameworks.FRAMEWORKS` (imported on use: the
    scheduling code imports JAX)."""
    from collapipe_jax.scheduling.frameworks import FRAMEWORKS

    return FRAMEWORKS[name]


class NonFiniteLossError(ValidationError):
    """Training diverged: a round's loss is NaN or infinite (the last good checkpoint is kept)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    task: str = option("toutiao", "the paper's task", choices=tuple(TASK_MODEL))
    framework: str = option("collapipe", "training framework (paper §VI); centralized: the reference that trains the "
                                         "same model on one device with the N x b samples of every step, no pipeline, "
                                         "upload or aggregation", choices=TRAIN_FRAMEWORKS)
    model: str = option("tiny", "model size (paper: paper-transformer for multi30k, paper-bert otherwise)",
                        choices=MODEL_SIZES)
    policy: str | None = option(None, f"collapipe's scheduler: {'|'.join(SCHEDULER_POLICIES)} (default dssra; "
                                      "uniform = w/o segment scheduling; default = no optimisation), or your own JAX "
                                      "rule as FILE.py:FUNCTION or package.module:function (docs/extending.md)")
    plan_stages: int | None = option(None, "policy default only: split the encoder evenly over the first S devices "
                                           "(learning vs S)")
    plan_micro_batches: int | None = option(None, "policy default only: charge m micro-batches (learning vs m; set "
                                                  "--micro-batches to the same m to run GPipe with it)")
    lyapunov: str = option("drift", "DSSRA's queue term: true drift-plus-penalty or Eq. 32 literally",
                           choices=LYAPUNOV_VARIANTS)
    no_pipeline: bool = option(False, "train the same model with the unsegmented encoder (reference)")
    rounds: int = option(2, "number of rounds")  # a bare `collapipe train`: BARE_ROUNDS
    batch: int = option(8, "b: samples per cluster and local step")
    local_steps: int | None = option(None, "E: local steps (mini-batches of b, each a full GPipe forward/backward) "
                                           "per cluster and round (1 in a recipe that gives neither this nor "
                                           "--local-epochs)")
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
    client_state: str = option("keep", "client optimizer state: reset every round (FedAvg), kept per cluster "
                                        "across rounds, or averaged over the clusters with the model (D_n weights) "
                                        "at every round's aggregation", choices=CLIENT_STATES)
    server_optimizer: str = option("avg", "server optimizer on the mean update: avg = FedAvg, adam = FedAdam, "
                                          "yogi = FedYogi (Reddi et al., 2021)", choices=SERVER_OPTIMIZERS)
    server_lr: float = option(1.0, "server learning rate (sgd, adam, yogi)")
    server_momentum: float = option(0.0, "server momentum β of --server-optimizer sgd: FedAvgM (Hsu et al., 2019) "
                                         "when > 0")
    dropout: float = option(0.1, "dropout rate on embeddings, attention weights and residual branches (and the "
                                 "decoder); masks keyed by sample and layer, so pipelined == unpipelined")
    label_smoothing: float = option(0.0, "label smoothing of the translation targets (0.1 in the recipes)")
    dtype: str = option("float32", "compute dtype of matmuls and activations (parameters and optimizer state stay "
                                   "float32)", choices=COMPUTE_DTYPE_NAMES)
    init_from: str | None = option(None, "start from the last checkpoint of a finished run (its --checkpoint-dir): "
                                         "embedding and encoder, and the head/decoder when the task matches")
    clusters: int | None = option(None, "N clusters (default: the scenario's)")
    cluster_chunk: int | None = option(None, "vmap the clusters in groups of this size inside the jitted round "
                                             "(smaller working set on CPUs at large N)")
    micro_batches: int = option(4, "static GPipe micro-batches of the compiled program (the gradient is "
                                   "m-independent)")
    pipeline_schedule: str = option("gpipe", "the pipeline's reading: gpipe = synchronous GPipe (S and m change "
                                              "latency, never the gradient); pipedream = asynchronous 1F1B with weight "
                                              "stashing, m = --micro-batches updates per local step, stage j of S "
                                              "computing with weights S-1-j updates old (docs/design.md §5)",
                                    choices=PIPELINE_SCHEDULES)
    max_examples: int | None = option(None, "use the first N training examples")
    max_eval_examples: int | None = option(200, "evaluate on the first N test examples")
    eval_every: int = option(1, "evaluate every this many rounds, and after the last (a recipe's interval longer "
                                "than --rounds becomes max(1, rounds // 5))")
    non_iid: bool = option(False, "Dirichlet label split over the clusters")
    dirichlet_alpha: float = option(0.5, "Dirichlet concentration of the non-IID split")
    variant: str = option("paper", "system model variant", choices=VARIANTS)
    noise_mode: str = option("relative", "upload noise variance ε relative to the update's power, absolute, or none "
                                         "(the noiseless ablation)",
                             choices=NOISE_MODES)
    V: float | None = option(None, "Lyapunov trade-off V (default: the scenario's)")
    tunable: str | None = option(None, TUNABLE_HELP)
    seq_len: int | None = option(None, "sequence length (default: the model's)")
    vocab_size: int | None = option(None, "Multi30K's joint de+en BPE vocabulary size (default: the model's, 8,000 "
                                          "for the CPU presets; the Chinese tasks use every training character)")
    checkpoint_dir: str | None = option(None, "orbax checkpoints, one per round")
    resume: bool = option(False, "continue the run in --checkpoint-dir")
    log_dir: str | None = option(None, "rounds.csv and result.json (default: --checkpoint-dir, else a new "
                                       "runs/<task>-<framework>-<UTC time>/)")
    force: bool = option(False, "overwrite the records (result.json, rounds.csv) of another run in --log-dir (they "
                                "stay until this run has written its first round)")
    data_dir: str | None = option(None, "data sets (default: $COLLAPIPE_DATA, else the repository's data/)")
    progress: bool = option(True, "progress bar on stderr", off_help="hide the progress bar")
    recipe: str | None = option(None, "JSON recipe (sweeps/recipes/): its values replace the defaults, the flags "
                                      "given replace its values", flag="config")
    seeds: str | None = option(None, f"A:B: train seeds A, A+1, ..., B-1 (as Python's range, at most "
                                       f"{MAX_TRAIN_SEEDS}) one after the other, each into seed-<s>/ of the log and "
                                       "checkpoint directories (default log directory: a new runs/<task>-<framework>-"
                                       "<UTC time>/); result.json holds every seed's result and the mean with its 95% "
                                       "interval")
    reference: str | None = option(None, "the log directory of a finished run of the same task (a centralized run): "
                                         "result.json names the gap of this run's final metrics to it")
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
        check_int("vocab-size", self.vocab_size, low=MIN_VOCAB, high=MAX_VOCAB, optional=True)
        require(self.vocab_size is None or self.task == "multi30k", "vocab-size", "sizes the Multi30K BPE only "
                f"(the {self.task} vocabulary is every training character)", self.vocab_size)
        check_float("lr", self.lr, low=0.0, strict_low=True)
        check_float("server-lr", self.server_lr, low=0.0, strict_low=True)
        check_float("server-momentum", self.server_momentum, low=0.0)
        require(self.server_momentum < 1.0, "server-momentum", "must be < 1", self.server_momentum)
        require(self.server_momentum == 0.0 or self.server_optimizer == "sgd", "server-momentum",
                "is FedAvgM's and needs --server-optimizer sgd", self.server_momentum)
        check_float("weight-decay", self.weight_decay, low=0.0)
        check_float("dropout", self.dropout, low=0.0)
        require(self.dropout < 1.0, "dropout", "must be < 1", self.dropout)
        check_float("label-smoothing", self.label_smoothing, low=0.0)
        require(self.label_smoothing < 1.0, "label-smoothing", "must be < 1", self.label_smoothing)
        check_float("clip-norm", self.clip_norm, low=0.0, strict_low=True, optional=True)
        check_float("local-epochs", self.local_epochs, low=0.0, strict_low=True, optional=True)
        if self.policy is not None:
            from collapipe_jax.scheduling.schedule import check_policy_name

            check_policy_name(self.policy)
        if self.centralized:
            require(self.policy is None, "policy", "the centralized framework has no scheduler", self.policy)
            require(self.plan_stages is None and self.plan_micro_batches is None, "plan-stages",
                    "the centralized framework has no pipeline plan")
            require(self.local_epochs is None, "local-epochs", "the centralized framework takes --local-steps (E "
                    "steps of N x b samples a round), not --local-epochs", self.local_epochs)
        if self.seeds is not None:
            seed_range(self.seeds)
        require((self.plan_stages is None and self.plan_micro_batches is None) or self.resolved_policy == "default",
                "plan-stages", "a fixed plan (--plan-stages/--plan-micro-batches) needs --policy default")
        require(self.local_steps is None or self.local_epochs is None, "local-epochs",
                "give --local-steps or --local-epochs, not both", self.local_epochs)
        require(self.federated or self.server_optimizer == "avg", "server-optimizer",
                f"the {self.framework} framework has no federated aggregation", self.server_optimizer)
        require(not self.independent or self.client_state != "average", "client-state",
                f"average needs federated aggregation, which the {self.framework} framework has not", self.client_state)
        check_float("V", self.V, low=0.0, optional=True)
        check_float("dirichlet-alpha", self.dirichlet_alpha, low=0.0, strict_low=True)
        require(self.micro_batches <= self.batch, "micro-batches", f"must be <= batch={self.batch}", self.micro_batches)
        if self.pipeline_schedule == "pipedream":
            self.check_pipedream()
        require(self.framework == "collapipe" or self.policy is None, "policy",
                f"only the collapipe framework takes a policy ({self.framework} has its own)", self.policy)
        require(not self.resume or self.checkpoint_dir, "resume", "needs --checkpoint-dir")
        check_seed("seed", self.seed)
        require(self.preset is None or self.preset in PRESETS, "preset",  # "" too: not silently the task's own
                f"unknown preset, choose one of {list(PRESETS)}", self.preset)
        require(self.rounds * (self.local_steps or 1) <= INT32_MAX, "rounds",
                f"rounds x local-steps must be <= {INT32_MAX} (the step count is an int32)", self.rounds)
        if self.tunable is not None:
            from collapipe_jax.scenario import tunable_rank  # the model code (JAX): only once a config is made

            tunable_rank(self.tunable)

    def check_pipedream(self) -> None:
        """What the pipedream reading cannot honour: no pipeline, micro-batches of unequal size,
        or a charged m other than the m it trains with."""
        require(self.pipelined, "pipeline-schedule", f"pipedream needs a pipelined run (the {self.framework} "
                f"framework{' with --no-pipeline' if self.no_pipeline else ''} has no pipeline)", self.pipeline_schedule)
        require(self.batch % self.micro_batches == 0, "micro-batches", f"must divide --batch {self.batch} under "
                "--pipeline-schedule pipedream (every update takes a micro-batch of b/m samples)", self.micro_batches)
        require(self.plan_micro_batches in (None, self.micro_batches), "plan-micro-batches",
                f"must equal --micro-batches {self.micro_batches} under --pipeline-schedule pipedream (the m charged "
                "must be the m trained with)", self.plan_micro_batches)

    @property
    def centralized(self) -> bool:
        return self.framework == CENTRALIZED

    @property
    def federated(self) -> bool:
        """Client models uploaded and averaged (False: the PipeLine baseline and the centralized run)."""
        return not self.centralized and framework_of(self.framework).federated

    @property
    def independent(self) -> bool:
        """Every cluster keeps its own encoder (the PipeLine baseline: no FL aggregation)."""
        return not self.centralized and not framework_of(self.framework).federated

    @property
    def resolved_policy(self) -> str | None:
        """The decision rule of the rounds (None: the centralized run has none)."""
        if self.centralized:
            return None
        return framework_of(self.framework).policy or self.policy or "dssra"

    @property
    def pipelined(self) -> bool:
        return not self.centralized and framework_of(self.framework).pipelined and not self.no_pipeline

    def settings(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint."""
        # the default gpipe reading is left out, so runs from before the option keep their fingerprint
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("rounds", "checkpoint_dir", "resume", "force", "log_dir", "progress", "cache_dir",
                             "data_dir", "recipe", "seeds", "reference")
                and not (k == "pipeline_schedule" and v == "gpipe") and not (k == "vocab_size" and v is None)}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:16]


def check_plan(cfg: TrainConfig, K: int, L: int, b: int) -> None:
    """The `default` rule's fixed plan is used as given or refused: it would otherwise clamp
    --plan-stages to min(K, L) and --plan-micro-batches to b without a word (docs/design.md §8)."""
    most = min(K, L)
    require(cfg.plan_stages is None or cfg.plan_stages <= most, "plan-stages",
            f"must be <= min(K, L) = {most} (K = {K} devices per cluster, L = {L} encoder blocks)", cfg.plan_stages)
    require(cfg.plan_micro_batches is None or cfg.plan_micro_batches <= b, "plan-micro-batches",
            f"must be <= the batch b = {b} (a micro-batch holds at least one sample)", cfg.plan_micro_batches)


def seed_range(text: str) -> list[int]:
    """The seeds of `--seeds A:B`: A, A+1, ..., B-1 (A < B, each a valid seed, at most
    MAX_TRAIN_SEEDS of them: `schedule --seeds` states its maximum the same way)."""
    parts = str(text).split(":")
    digits = len(str(SEED_MAX + 1))  # before int(): 5,000 digits exceed Python's conversion limit
    ok = len(parts) == 2 and all(p.strip().isascii() and p.strip().isdigit() and len(p.strip()) <= digits
                                 for p in parts)
    require(ok, "seeds", f"must be A:B with integers 0 <= A < B <= {SEED_MAX + 1} (seeds A, ..., B-1)", text)
    low, high = int(parts[0]), int(parts[1])
    require(low < high, "seeds", "must be A:B with A < B (seeds A, ..., B-1)", text)
    check_seed("seeds", high - 1)
    require(high - low <= MAX_TRAIN_SEEDS, "seeds",
            f"at most {MAX_TRAIN_SEEDS} seeds (each seed is a whole training run)", text)
    return list(range(low, high))


RECIPE_DIR = pathlib.Path(__file__).resolve().parents[1] / "sweeps" / "recipes"


def recipe_names() -> list[str]:
    """The recipes `--config NAME` finds in sweeps/recipes/."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(path: str) -> dict:
    """A recipe's settings: a JSON object of TrainConfig fields (a leading "about" string and
    "_"-prefixed keys are notes). A bare name is looked up in sweeps/recipes/."""
    file = pathlib.Path(path)
    if not file.is_file() and (RECIPE_DIR / f"{path}.json").is_file():
        file = RECIPE_DIR / f"{path}.json"
    require(file.is_file(), "config", "must be a recipe JSON file or the name of one in sweeps/recipes/ "
                                      f"({', '.join(recipe_names())})", path)
    try:
        values = json.loads(file.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValidationError("config", f"{file} is nested too deeply to be a recipe") from None
    except ValueError as err:  # not UTF-8, not JSON, or an integer past Python's 4,300-digit limit
        raise ValidationError("config", f"{file} is not valid UTF-8 JSON ({str(err)[:160]})") from None
    require(isinstance(values, dict), "config", "a recipe must be a JSON object", str(file))
    values = {k: v for k, v in values.items() if k != "about" and not k.startswith("_")}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    require(not unknown, "config", f"{file}: unknown setting(s) {unknown}")
    types = field_types(TrainConfig)
    for key, value in values.items():  # named as the recipe names them, before any default is filled in
        check_type(f"{key} (recipe {file})", *types[key], value)
    return values


# A bare `collapipe train` (no --config) learns on the CPU (docs/design.md §5): the task's CPU recipe
# (sweeps/recipes/<task>-cpu.json) gives these settings, with BARE_ROUNDS rounds and the default
# model. Left out: the recipe's model, sequence length and evaluation interval (its rounds are
# minutes each with the small model), and its gradient clipping, which no flag can turn off again.
# Measured: `collapipe train --task toutiao --model tiny` with these, 20 rounds, reached accuracy
# 0.2945 (chance 1/15) in 66 s and 90 s (two runs, load 2-6 on the shared 2-core CPU; 0.30 with the
# recipe's clipping too); the dataclass's own defaults (SGD, E = 1, 200 test titles) stay at chance.
BARE_SETTINGS = ("local_steps", "batch", "optimizer", "lr", "weight_decay", "lr_schedule", "warmup_steps",
                 "client_state", "dropout", "label_smoothing", "max_eval_examples")
BARE_ROUNDS = 20


def bare_recipe(task: str) -> str:
    """The recipe whose settings a `collapipe train --task TASK` without --config takes."""
    return f"{task}-cpu"


@functools.lru_cache(maxsize=None)
def _bare_defaults(task: str) -> tuple:
    recipe = load_recipe(bare_recipe(task))
    return (*((k, recipe[k]) for k in BARE_SETTINGS if k in recipe), ("rounds", BARE_ROUNDS))


def bare_defaults(task: str) -> dict:
    """The defaults of a run without --config: BARE_SETTINGS from the task's CPU recipe, and
    BARE_ROUNDS rounds."""
    return dict(_bare_defaults(task))


def bare_default_note(field: dataclasses.Field) -> str | None:
    """`--help`'s default of a TrainConfig option that a run without --config takes from the
    task's CPU recipe (None for the other fields and other commands' options)."""
    if field.name not in (*BARE_SETTINGS, "rounds") or not any(field is f for f in dataclasses.fields(TrainConfig)):
        return None
    try:
        values = {task: bare_defaults(task).get(field.name, field.default) for task in TASK_MODEL}
    except ValidationError:  # a recipe missing or broken: --help still works, the run says what is wrong
        return f"[default without --config: the task's CPU recipe's (sweeps/recipes/<task>-cpu.json)]"
    shown = ", ".join(f"{task} {value}" for task, value in values.items())
    if len(set(map(str, values.values()))) == 1:
        shown = str(next(iter(values.values())))
    source = "" if field.name == "rounds" else " (the task's CPU recipe's)"
    library = "1" if field.name == "local_steps" else field.default
    return f"[default without --config: {shown}{source}; with a --config that leaves it out: {library}]"


def settings_source(cfg: TrainConfig) -> str:
    """Which recipe gave a run its settings, for the head of `collapipe train`'s table."""
    if cfg.recipe:
        return f"settings: recipe {cfg.recipe}, the flags given replace its values"
    return (f"settings: the {bare_recipe(cfg.task)} recipe's optimizer, learning rate and schedule, local steps, "
            f"batch, dropout and evaluation size (no --config given; the flags given replace them; --config "
            f"{bare_recipe(cfg.task)} runs the whole recipe)")


def config_with_recipe(values: dict) -> TrainConfig:
    """TrainConfig from explicit values over the recipe they name (values["recipe"]), or, when
    they name none, over the task's CPU recipe's BARE_SETTINGS (`bare_defaults`): a bare
    `collapipe train --task T` learns.

    A flag given replaces the recipe's value; --local-epochs replaces the recipe's local steps
    (and --local-steps its local epochs), which could not both be given.

    A recipe's evaluation interval longer than the rounds asked for (`--rounds 20` with a recipe
    that evaluates every 50) would evaluate once, at the end: it becomes max(1, rounds // 5),
    and the change is said on stderr. An `eval_every` given explicitly stands."""
    task = values.get("task", TrainConfig.task)
    if values.get("recipe"):
        recipe = load_recipe(values["recipe"])
    elif isinstance(task, str) and task in TASK_MODEL:  # an unknown task: TrainConfig names it
        recipe = bare_defaults(task)
    else:
        recipe = {}
    for given, replaced in (("local_epochs", "local_steps"), ("local_steps", "local_epochs")):
        if values.get(given) is not None:
            recipe.pop(replaced, None)
    merged = {**recipe, **values}
    require(merged.get("seed") is None or merged.get("seeds") is None, "seeds",
            f"give seed or seeds, not both (seed {merged.get('seed')!r} would be dropped)", merged.get("seeds"))
    cfg = TrainConfig(**merged)
    if "eval_every" in recipe and "eval_every" not in values and cfg.eval_every > cfg.rounds:
        every = max(1, cfg.rounds // 5)
        print(f"collapipe: note: the recipe evaluates every {cfg.eval_every} rounds, more than --rounds "
              f"{cfg.rounds}: evaluating every {every} (and after the last round)", file=sys.stderr)
        cfg = dataclasses.replace(cfg, eval_every=every)
    return cfg
