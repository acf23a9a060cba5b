"""The names the command line offers: every choice of an option, in a module without JAX.

`collapipe --help` and `collapipe SUB --help` build their parser from the config dataclasses
(`train_config.TrainConfig`, `scheduling.schedule.ScheduleConfig`, ...), whose choices are these
tuples; the modules that implement a choice import its tuple from here. Keeping them free of
JAX is what lets the help print in a fraction of a second instead of the seconds JAX's import
takes. The tables keyed by these names (`scheduling.frameworks.FRAMEWORKS`,
`models.config.COMPUTE_DTYPES`, the sweep registry `sweep.SWEEPS`) live with their code; a
test checks that their keys are the names here.
"""

from __future__ import annotations

# the system model: Eq. 15 as printed (paper) or b̂-scaled with the exact GPipe makespan (consistent)
VARIANTS = ("paper", "consistent")
PRESETS = ("paper-bert", "paper-transformer")
TUNABLE_HELP = ("what a CU uploads: the whole encoder (full) or rank-R LoRA adapters on the query and value "
                "projections, fp32 (lora:R) [default: the scenario's, full for the presets]")

# scheduling: Lyapunov term, Sub-1 solver, micro-batch rule, decision rules
LYAPUNOV_VARIANTS = ("drift", "paper")
SEGMENT_SOLVERS = ("exact", "milp")
M_RULES = ("stationary", "exhaustive")
# the paper's baselines (§VI), each compared with DSSRA in Fig. 11
PAPER_BASELINES = ("random", "loss-only", "delay-only")
ABLATIONS = ("uniform", "dssra-no-queue", "dssra-loss-weighted", "random-feasible")
# the rules a user picks for `schedule` and for the collapipe framework in `train`; the other
# policies are the fixed rules of the vanilla-fl and titanic frameworks
SCHEDULER_POLICIES = ("dssra",) + PAPER_BASELINES + ABLATIONS + ("default",)
FRAMEWORK_NAMES = ("collapipe", "vanilla-fl", "pipeline", "titanic")  # keys of scheduling.frameworks.FRAMEWORKS

# training
CLIENT_OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LR_SCHEDULES = ("constant", "warmup-cosine", "warmup-linear")
SERVER_OPTIMIZERS = ("avg", "sgd", "adam", "yogi")
NOISE_MODES = ("relative", "absolute", "none")  # "none": the noiseless ablation of Eq. 25
CLIENT_STATES = ("reset", "keep", "average")
# the pipeline's reading: synchronous GPipe (S, m change latency only) or asynchronous 1F1B with
# weight stashing (m updates per local step, stage j's weights S - 1 - j updates old)
PIPELINE_SCHEDULES = ("gpipe", "pipedream")
COMPUTE_DTYPE_NAMES = ("float32", "bfloat16")  # keys of models.config.COMPUTE_DTYPES

# sweeps, in the order of `collapipe sweep all` (cheap system-model sweeps first): the keys of sweep.SWEEPS
SWEEP_NAMES = ("latency-vs-microbatches", "latency-vs-power", "policies", "distributions", "segments", "frameworks",
               "scaling",
               "memory", "training", "learning-vs-s-m")
SCALES = ("quick", "paper")
DEFAULT_TUNABLE = "lora:8"  # the LoRA setting the sweeps compare with the full upload (`sweep --tunable`)
