"""Training sweeps: Alg. 1 end to end on the three tasks.

* `training` (paper Fig. 6): each task under each framework and the centralized reference
  (`train --framework centralized`: the same model, optimizer and samples on one device), over
  `SEEDS` seeds: the learning curve (loss and the task metric against the round and against the
  simulated latency Σ τ(t); the centralized run has no latency) and the simulated
  latency/energy. quick: the tiny model for a few rounds (see QUICK); paper: the task's recipe
  in sweeps/recipes/ (`<task>-gpu` on an accelerator, `<task>-cpu` otherwise).
* `learning-vs-s-m` (paper Fig. 9/10): the same seeds (`SEEDS`) trained with fixed plans of S
  stages and m micro-batches (policy `default`, the pipeline run with that m) under each pipeline
  reading (`SCHEDULES`). Synchronous GPipe computes the unpipelined gradient whatever S and m are,
  and dropout masks are keyed by sample and layer, so its learning curves coincide up to float
  round-off and only the simulated latency moves: its plans of one seed share one training
  computation (`plan_results`). Asynchronous PipeDream (1F1B, stale weights) trains every plan.

Each run's result is cached as JSON under the sweep's folder, so a killed sweep resumes run by run.
"""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np

from collapipe_jax.checkpoints import Checkpoints
from collapipe_jax.io import atomic_write_json, read_json
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep import plots
from collapipe_jax.sweep.claims import mean_ci95
from collapipe_jax.sweep.training_claims import framework_claims, s_m_claims
from collapipe_jax.train import TrainConfig, config_with_recipe, train
from collapipe_jax.train_config import CENTRALIZED
from collapipe_jax.train_records import metric_points

TASKS = ("toutiao", "ner", "multi30k")
FRAMEWORKS = ("collapipe", "vanilla-fl", "pipeline", "titanic")
TASK_METRIC = {"multi30k": "bleu", "ner": "entity_f1", "toutiao": "accuracy"}
SEEDS = {"quick": (0, 1, 2), "paper": (0, 1, 2, 3, 4)}
# quick: the tiny model, 3 seeds, one setting per task for every framework, chosen by measurement
# (docs/training.md, "Quick settings") so that every task leaves the report's floors (accuracy 0.6,
# entity F1 0.1, BLEU 1) within the 30 minutes of the quick `make sweep`:
# * every quick run trains the encoder unsegmented (`--no-pipeline`): under synchronous GPipe the
#   losses are those of the pipelined run (tests/test_gpipe_grads.py), and on one CPU device the
#   GPipe program computes every stage at every tick, bubbles included (a Toutiao round 3.3 s
#   pipelined against 1.0 s, an NER round 2.4 s against 1.0 s; each round's plan also compiles its
#   own program). The decisions, latency and energy are those of the pipeline all the same: they
#   come from the host rounds. The paper scale trains through GPipe.
# * Toutiao: 10 rounds of 20 AdamW steps of 64 titles per cluster (38,400 titles a run, 1.25 passes
#   over the training split), lr 5e-3 after 5 warm-up steps, no dropout. Probes (one seed, 2,000
#   test titles): centralized after 10 rounds of 10 steps of 64 titles 0.63 / 0.66 / 0.60 at lr
#   3e-3 / 5e-3 / 1e-2; at 20 steps CollaPipe 0.71 and PipeLine (no FedAvg: each cluster's encoder
#   sees a third of the titles) 0.64.
# * NER: 8 rounds of 20 steps of 64 sentences, lr 3e-3, sequences of 32 characters (the score is
#   on the characters the model sees). PipeLine after 5 / 10 such rounds: entity F1 0.133 / 0.158
#   (0 throughout at lr 1e-2 and 2e-2: every tag "O"; 0.04 after 10 rounds of 64 characters at lr
#   5e-3).
# * Multi30K: a joint BPE of 2,000 tokens instead of 8,000 (the tiny model's output layer is most
#   of a step): PipeLine after 3 rounds of 20 steps of 64 pairs at lr 1e-2 BLEU 2.25 with 2,000
#   tokens, 1.23 with 1,000 and 0.88 with 8,000, a round 3.8 s with 2,000 against 7.7 s.
QUICK = dict(model="tiny", optimizer="adamw", lr_schedule="warmup-cosine", warmup_steps=5, clip_norm=1.0,
             dropout=0.0, batch=64, local_steps=20, no_pipeline=True,
             progress=True)  # each run's bar (its rounds) under the sweep's (its runs)
QUICK_TOUTIAO = dict(QUICK, rounds=10, lr=5e-3, max_eval_examples=2000, eval_every=2)
QUICK_NER = dict(QUICK, rounds=8, lr=3e-3, seq_len=32, max_eval_examples=500, eval_every=2)
QUICK_MULTI30K = dict(QUICK, rounds=3, lr=1e-2, vocab_size=2000, max_eval_examples=300, eval_every=3)
QUICK_TASK = {"toutiao": QUICK_TOUTIAO, "ner": QUICK_NER, "multi30k": QUICK_MULTI30K}
# learning-vs-s-m at quick scale: each task's quick setting under each reading, NER at lr 1e-3 for 12
# rounds: under pipedream at S = 4, m = 1 (every stage but the last 1-3 updates stale) NER stays at
# every tag "O" at lr 2e-3 and 3e-3 (8 rounds), and at lr 1e-3 reaches entity F1 0.121 / 0.145 / 0.156
# after 8 / 12 / 16 rounds (m = 4 at lr 1e-3: 0.176 after 4 rounds); Multi30K under pipedream at
# S = 4: BLEU 1.16 (m = 1 and 2) and 3.94 (m = 4) after its 3 rounds (one seed each).
SM_QUICK_CHANGES = {"multi30k": {}, "ner": {"lr": 1e-3, "rounds": 12}}


def on_accelerator() -> bool:
    return jax.default_backend() != "cpu"


def framework_config(task: str, framework: str, scale: str, seed: int = 0) -> TrainConfig:
    if scale == "quick":
        return TrainConfig(task=task, framework=framework, seed=seed, **QUICK_TASK[task])
    recipe = f"{task}-{'gpu' if on_accelerator() else 'cpu'}"
    return config_with_recipe({"recipe": recipe, "task": task, "framework": framework, "progress": True,
                               "seed": seed})


def cached_train(cache, cfg: TrainConfig) -> dict:
    result = read_json(cache)
    if result is None:
        result = train(cfg)
        atomic_write_json(cache, result, indent=None)
    return result


def curve_rows(result: dict, **labels) -> list[dict]:
    """One row per round; the centralized run (no decision, no system charge) has S = m = 1 and
    no latency or energy (None)."""
    rows, elapsed = [], 0.0
    for r in result["rounds"]:
        central = "decision" not in r
        elapsed = None if central else elapsed + r["tau_round_s"]
        rows.append({"S": 1.0 if central else float(np.mean(np.count_nonzero(r["decision"]["delta"], axis=1))),
                     "m": 1.0 if central else float(np.mean(r["decision"]["m"])),  # means over the clusters
                     **labels, "round": r["round"], "loss": r["loss"], "tau_round_s": r["tau_round_s"],
                     "cumulative_latency_s": elapsed, "energy_j": r["energy_j"],
                     "round_cmp_s": r.get("round_cmp_s"), "round_up_s": r.get("round_up_s"),
                     **{f"metric_{k}": v for k, v in r["metrics"].items()}})
    return rows


def compute(scale: str, work_dir, progress) -> dict:
    progress.expect(len(TASKS) * (len(FRAMEWORKS) + 1) * len(SEEDS[scale]))  # runs (each run's bar counts its rounds)
    tables = {**framework_tables(scale, work_dir, progress)}
    if scale in TRANSFER_SCALES:
        progress.expect(1 + len(TRANSFER_STARTS) * len(SEEDS[scale]))
        scratch = [framework_config("toutiao", "collapipe", scale, seed) for seed in SEEDS[scale]]
        tables["training-transfer"] = transfer_rows(work_dir, ner_pretrain_config(scale, work_dir), scratch, progress)
    return tables


def framework_tables(scale: str, work_dir, progress) -> dict:
    rows, finals = [], []
    for task in TASKS:
        for framework, seed in ((f, s) for f in (*FRAMEWORKS, CENTRALIZED) for s in SEEDS[scale]):
            cfg = framework_config(task, framework, scale, seed)
            result = cached_train(work_dir / "runs" / f"{task}-{framework}-seed{seed}.json", cfg)
            rows += curve_rows(result, task=task, framework=framework, seed=seed)
            finals.append({"task": task, "framework": framework, "seed": seed, "rounds": cfg.rounds,
                           "model": result["model"], "n_classes": result.get("n_classes"),
                           "batch": cfg.batch, "local_steps": max(result["local_steps"]), "lr": cfg.lr,
                           "seq_len": cfg.seq_len, "max_eval_examples": cfg.max_eval_examples,
                           "vocab_size": cfg.vocab_size, "pipelined": result.get("pipelined"),
                           "final_loss": result["rounds"][-1]["loss"],
                           "total_latency_s": result["total_latency_s"], "total_energy_j": result["total_energy_j"],
                           "wall_s": float(sum(r["wall_s"] for r in result["rounds"])),
                           "violating_rounds": sum(1 for r in result["rounds"] if r.get("violations")),
                           **{f"final_{k}": v for k, v in result["final_metrics"].items()}})
            progress(1)
    return {"training": rows, "training-final": finals}


# The paper's flow: BERT pre-trained on NER, then fine-tuned on Toutiao (fully, or with the NER
# encoder frozen and rank-8 LoRA adapters), beside Toutiao from scratch with the same settings
# and rounds. Paper scale only: at quick scale NER reaches entity F1 0.14-0.19 with the tiny model,
# whose character-level encoder carried nothing over to Toutiao even with the small model
# (docs/training.md), and the quick sweep has no time left for 7 more runs.
TRANSFER_SCALES = ("paper",)
TRANSFER_STARTS = {"ner-full": None, "ner-lora:8": "lora:8"}  # start → tunable (None: the whole model)
NER_PRETRAIN_DIR = "ner-pretrain"


def ner_pretrain_config(scale: str, work_dir) -> TrainConfig:
    """The NER run whose encoder starts the transfer rows: the NER recipe (`ner-cpu`/`ner-gpu`),
    CollaPipe, seed 0, checkpointed in `work_dir/ner-pretrain`."""
    run_dir = str(work_dir / NER_PRETRAIN_DIR)
    return dataclasses.replace(framework_config("ner", "collapipe", scale), checkpoint_dir=run_dir, log_dir=run_dir)


def transfer_configs(scratch: TrainConfig, ner_dir) -> dict[str, TrainConfig]:
    """Per start: the from-scratch Toutiao run's settings and rounds (on the CPU the
    toutiao-finetune-cpu and toutiao-lora-cpu recipes, which are toutiao-cpu with
    `init_from` and `tunable`) starting from the NER run in `ner_dir`."""
    return {start: dataclasses.replace(scratch, init_from=str(ner_dir), tunable=tunable)
            for start, tunable in TRANSFER_STARTS.items()}


def pretrain(cfg: TrainConfig) -> dict:
    """A finished run in `cfg.checkpoint_dir` (its result.json: a killed sweep's, or a given NER
    run copied there) is reused; an unfinished one is resumed from its last checkpoint."""
    finished = read_json(pathlib.Path(cfg.checkpoint_dir) / "result.json")
    if finished is not None:
        return finished
    started = pathlib.Path(cfg.checkpoint_dir).is_dir() and Checkpoints(cfg.checkpoint_dir).latest() is not None
    return train(dataclasses.replace(cfg, resume=started))


def transfer_rows(work_dir, ner_cfg: TrainConfig, scratch: list[TrainConfig], progress) -> list[dict]:
    """NER → Toutiao: one row per start ("ner-full", "ner-lora:8") and seed of `scratch`."""
    ner = pretrain(ner_cfg)
    progress(1)
    rows = []
    for cfg in scratch:
        for start, run_cfg in transfer_configs(cfg, ner_cfg.checkpoint_dir).items():
            result = cached_train(work_dir / "runs" / f"toutiao-from-{start.replace(':', '')}-seed{cfg.seed}.json",
                                  run_cfg)
            rows.append({"task": "toutiao", "start": start, "framework": run_cfg.framework, "seed": cfg.seed,
                         "tunable": run_cfg.tunable or "full", "rounds": run_cfg.rounds, "model": result["model"],
                         "ner_rounds": len(ner["rounds"]), "ner_entity_f1": ner["final_metrics"].get("entity_f1"),
                         "final_loss": result["rounds"][-1]["loss"],
                         "wall_s": float(sum(r["wall_s"] for r in result["rounds"])),
                         **{f"final_{k}": v for k, v in result["final_metrics"].items()}})
            progress(1)
    return rows


METRIC_LABEL = {"accuracy": "accuracy [fraction]", "entity_f1": "entity F1 [fraction]",
                "bleu": "BLEU (cased sacreBLEU) [0–100]", "bleu_lowercase": "BLEU (lowercased sacreBLEU) [0–100]",
                "macro_f1": "macro F1 [fraction]", "micro_f1": "micro F1 [fraction]"}
ROUND_DODGE = 0.08  # rounds between side-by-side curves on a round axis
REFERENCE = "centralized"  # a framework whose final values are drawn as a dashed reference line per task


def metric_label(metric: str) -> str:
    return METRIC_LABEL.get(metric, f"{metric.replace('_', ' ')} [unitless]")


def curve(rows: list[dict], x: str, y: str) -> tuple[list, list, list | None, list | None]:
    """x and the mean of y over the rows (seeds) of each round, with the min/max over seeds when
    there are several; the rounds without a value of y are skipped."""
    by_round: dict = {}
    for r in rows:
        if r.get(y) is not None and np.isfinite(r[y]):
            by_round.setdefault(r["round"], []).append(r)
    rounds = sorted(by_round)
    xs = [float(np.mean([r[x] for r in by_round[t]])) for t in rounds]
    ys = [[r[y] for r in by_round[t]] for t in rounds]
    several = any(len(v) > 1 for v in ys)
    return (xs, [float(np.mean(v)) for v in ys], [min(v) for v in ys] if several else None,
            [max(v) for v in ys] if several else None)


def entrants(rows: list[dict]) -> list[tuple[str, str | None]]:
    """(framework, tunable) pairs to draw, the paper's frameworks first; the tunable only when the
    table has more than one."""
    tunables_ = list(dict.fromkeys(r.get("tunable") for r in rows))
    names = [f for f in FRAMEWORKS if any(r["framework"] == f for r in rows)]
    names += [f for f in dict.fromkeys(r["framework"] for r in rows) if f not in names and f != REFERENCE]
    return [(f, t) for f in names for t in tunables_] if len(tunables_) > 1 else [(f, None) for f in names]


def reference_value(tables: dict, task: str, field: str) -> float | None:
    """The centralized run's final value of `field` (a metric or the loss) for `task`, if any."""
    finals = [r for r in tables.get("training-final", []) if r["task"] == task and r["framework"] == REFERENCE]
    key = "final_loss" if field == "loss" else f"final_{field.removeprefix('metric_')}"
    values = [r[key] for r in finals if r.get(key) is not None]
    if not values:
        rows = [r for r in tables["training"] if r["task"] == task and r["framework"] == REFERENCE
                and r.get(field) is not None]
        last = max((r["round"] for r in rows), default=None)
        values = [r[field] for r in rows if r["round"] == last]
    return float(np.mean(values)) if values else None


def plot(tables: dict, out) -> None:
    """Fig. 6: per task, the training loss and the task metric against the round and against the
    simulated latency Σ τ(t); a metric that never leaves 0 is left out and named in the note."""
    rows = tables["training"]
    finals = tables.get("training-final", [])
    model = finals[0]["model"] if finals else "?"
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    who = entrants(rows)
    panels, left_out = [], []
    for task in tasks:
        metric = TASK_METRIC[task]
        field = f"metric_{metric}"
        values = [r.get(field) for r in rows if r["task"] == task and r["framework"] != REFERENCE]
        panels.append((task, "loss", "round", "cross-entropy loss [nats]"))
        if plots.at_floor(values):
            left_out.append(f"{task}: {metric_label(metric).split(' [')[0]} (0 in every evaluation)")
            continue
        panels += [(task, field, "round", metric_label(metric)),
                   (task, field, "cumulative_latency_s", metric_label(metric))]
    cols = 3
    fig, axes = plots.figure(-(-len(panels) // cols), cols, panel=(4.3, 3.2))
    for ax, (task, field, x, ylabel) in zip(axes.ravel(), panels):
        task_rows = [r for r in rows if r["task"] == task]
        rounds = []
        for i, (framework, tunable) in enumerate(who):
            sel = [r for r in task_rows if r["framework"] == framework and r.get("tunable") == tunable]
            xs, ys, lo, hi = curve(sel, x, field)
            if not xs:
                continue
            style = plots.style(i)
            name = framework if tunable is None else f"{framework} ({tunable})"
            if x == "round":
                rounds += xs
                xs = [v + plots.dodge(i, len(who), ROUND_DODGE) for v in xs]
            ax.plot(xs, ys, label=name, markevery=plots.markevery(i, len(xs)), **style)
            plots.band(ax, xs, lo, hi, style["color"])
        ref = reference_value(tables, task, field)
        if ref is not None:
            ax.axhline(ref, color="k", ls="--", lw=1.2, label=f"{REFERENCE} (final)")
        if field == "metric_accuracy":
            plots.chance_line(ax, class_count(finals, task))
        if x == "round":
            plots.round_axis(ax, rounds)
        # the metric's short name (its variant, e.g. "cased sacreBLEU", is on the y axis's label)
        what = "training loss" if field == "loss" else ylabel.split(" [")[0].split(" (")[0]
        against = "per round" if x == "round" else "against simulated time"
        plots.label(ax, f"{task}: {what} {against}", "round t [count]" if x == "round" else
                    "simulated latency Σ τ(t) [s]", ylabel)
    plots.hide_unused(axes, len(panels))
    seeds = len({r.get("seed") for r in rows})
    plots.figure_legend(fig, axes, title=f"Fig. 6: learning curves of each framework ({model} model)")
    plots.note(fig, [plots.left_out_note(left_out, "nothing to show at this scale"),
                     "Curves that coincide (pipelining does not change the gradient) are told apart by their "
                     f"markers and dashes, and shifted by up to ±{ROUND_DODGE * (len(who) - 1) / 2:.2g} round on "
                     "the round axes." + (f" Bands: min–max over {seeds} seeds." if seeds > 1 else "")])
    plots.save_figure(fig, out / "training.png")


def class_count(finals: list[dict], task: str) -> int | None:
    """The task's number of classes as its runs recorded it (None where they did not)."""
    return next((int(r["n_classes"]) for r in finals if r["task"] == task and r.get("n_classes")), None)


def mean_final(finals, task, framework, key) -> tuple[float, float, float] | None:
    """(mean, lo, hi) over seeds of one final value (the 95% interval of the mean)."""
    values = [r[key] for r in finals if r["task"] == task and r["framework"] == framework and r.get(key) is not None]
    return mean_ci95(values) if values else None


def findings(tables: dict) -> dict:
    rows, finals = tables["training"], tables["training-final"]
    notes = []
    for task in TASKS:
        name = TASK_METRIC[task]
        got = {f: mean_final(finals, task, f, f"final_{name}") for f in (*FRAMEWORKS, CENTRALIZED)}
        latency = {f: mean_final(finals, task, f, "total_latency_s") for f in FRAMEWORKS}
        first = next(r for r in finals if r["task"] == task)
        n = len({r.get("seed", 0) for r in finals if r["task"] == task})
        notes.append(f"{task}: final {name} (mean over {n} seeds [95% interval]) " + ", ".join(
            f"{f} {v[0]:.4g} [{v[1]:.4g}, {v[2]:.4g}]" for f, v in got.items() if v is not None) +
            f" after {first['rounds']} rounds; mean simulated latency " +
            ", ".join(f"{f} {v[0]:.4g} s" for f, v in latency.items() if v is not None) + ".")
        central = got.get(CENTRALIZED)
        if central is not None:
            gaps = {f: metric_points(name, v[0]) - metric_points(name, central[0]) for f, v in got.items()
                    if v is not None and f != CENTRALIZED}
            notes.append(f"{task}: gap to the centralized reference (same samples) in {name} points: " +
                         ", ".join(f"{f} {g:+.3g}" for f, g in gaps.items()) + ".")
        base = np.asarray([r["loss"] for r in rows if r["task"] == task and r["framework"] == "vanilla-fl"])
        for f in ("collapipe", "titanic"):
            other = np.asarray([r["loss"] for r in rows if r["task"] == task and r["framework"] == f])
            rel = float(np.max(np.abs(other - base) / np.abs(base)))
            notes.append(f"{task}: per-round losses of {f} and vanilla-fl differ by at most {rel:.2g} (relative): "
                         "pipelining does not change the gradient; the frameworks differ in the upload noise "
                         "(their powers and channels) and in the simulated latency.")
        if any(r["task"] == task and r.get("pipelined") is False and r["framework"] == "collapipe" for r in finals):
            notes.append(f"{task}: the runs trained the encoder unsegmented (--no-pipeline: the losses of synchronous "
                         "GPipe, computed without its bubbles on one device); their decisions, latency and energy "
                         "are the pipeline's, from the host rounds.")
    notes.append(transfer_finding(tables))
    bad = [f"{r['task']}/{r['framework']}/seed {r.get('seed', 0)} ({r['violating_rounds']} of {r['rounds']} rounds)"
           for r in finals if r.get("violating_rounds")]
    if bad:
        notes.append("decisions that break a constraint (each round's `violations` names it): " + ", ".join(bad))
    first = finals[0]
    cost = {task: float(sum(r.get("wall_s") or 0.0 for r in finals if r["task"] == task)) for task in TASKS}
    notes.append("cost: the runs of each task took " + ", ".join(f"{t} {v:.0f} s" for t, v in cost.items()) +
                 " of wall time in this process (compilation included, shared across seeds).")
    return {"rounds": first["rounds"], "model": first["model"], "batch": first["batch"], "final": finals,
            "settings": {t: task_settings(finals, t) for t in TASKS if any(r["task"] == t for r in finals)},
            "task_seconds": cost, "claims": framework_claims(tables), "findings": notes}


SETTING_KEYS = ("model", "rounds", "local_steps", "batch", "lr", "seq_len", "vocab_size", "max_eval_examples",
                "pipelined")


def task_settings(finals: list[dict], task: str) -> dict:
    """What the task's runs were trained with (the first run's; every framework has the same)."""
    first = next(r for r in finals if r["task"] == task)
    return {k: first.get(k) for k in SETTING_KEYS}


def transfer_finding(tables: dict) -> str:
    """NER → Toutiao beside Toutiao from scratch (CollaPipe, the same seeds and rounds)."""
    rows = tables.get("training-transfer")
    if not rows:
        return ("toutiao from the NER encoder (the paper's flow: NER pre-training, then full or LoRA fine-tuning) runs "
                f"at {' and '.join(TRANSFER_SCALES)} scale only (the quick sweep's 30 minutes hold no more runs).")
    scratch = mean_final(tables["training-final"], "toutiao", "collapipe", "final_accuracy")
    starts = {start: mean_ci95([r["final_accuracy"] for r in rows if r["start"] == start])
              for start in dict.fromkeys(r["start"] for r in rows)}
    first = rows[0]
    return (f"toutiao from the NER encoder (CollaPipe; NER pre-trained {first['ner_rounds']} rounds, entity F1 "
            f"{first['ner_entity_f1']:.3g}): final accuracy after {first['rounds']} rounds (mean over "
            f"{len({r['seed'] for r in rows})} seeds [95% interval]) " +
            ", ".join(f"{k} {v[0]:.4g} [{v[1]:.4g}, {v[2]:.4g}]" for k, v in starts.items()) +
            (f", from scratch {scratch[0]:.4g} [{scratch[1]:.4g}, {scratch[2]:.4g}]." if scratch else "."))


register(Sweep("training", compute, plot, findings))


# --------------------------------------------------------------------------- learning vs S and m

SM_TASKS = ("multi30k", "ner")  # the Transformer (Fig. 9) and BERT (Fig. 10)
SM_PLANS = {  # (S, m) over the tiny (L = 4) and small (L = 6) models; (2, 2) is the paper's best (Fig. 9)
    # quick, per task: Fig. 9 ranks the Transformer's plans, with (2, 2) among them; Fig. 10 compares
    # the smallest and largest m at the largest S, so NER trains those two only (under pipedream each
    # plan is a run per seed)
    "quick": {"multi30k": ((1, 2), (2, 2), (4, 1), (4, 4)), "ner": ((4, 1), (4, 4))},
    "paper": ((1, 4), (2, 2), (2, 4), (3, 4), (6, 4), (6, 1), (6, 2), (6, 8)),
}


def sm_plans(task: str, scale: str) -> tuple[tuple[int, int], ...]:
    """The (S, m) plans of `task` at `scale` (one tuple for every task, or one per task)."""
    plans = SM_PLANS[scale]
    return plans[task] if isinstance(plans, dict) else plans


# The pipeline readings (`train --pipeline-schedule`): gpipe, synchronous (every plan the gradient
# of the unsegmented model), and pipedream, asynchronous 1F1B (an update per micro-batch, stage s
# computing with weights S - 1 - s updates old), under which S and m change the learning.
SCHEDULES = ("gpipe", "pipedream")
SCHEDULE_FIELD = "pipeline_schedule"  # the TrainConfig field that names the reading
SHARED = "gpipe"  # the reading whose plans of one seed share one training computation


def schedules_available() -> tuple[str, ...]:
    """The readings this code can train: gpipe always, pipedream where TrainConfig has the
    `pipeline_schedule` field (without it every run is GPipe)."""
    return SCHEDULES if SCHEDULE_FIELD in {f.name for f in dataclasses.fields(TrainConfig)} else (SHARED,)


def with_schedule(cfg: TrainConfig, schedule: str) -> TrainConfig:
    """`cfg` under the pipeline reading `schedule` (gpipe is the default of a config without the field)."""
    if SCHEDULE_FIELD in {f.name for f in dataclasses.fields(TrainConfig)}:
        return dataclasses.replace(cfg, **{SCHEDULE_FIELD: schedule})
    if schedule != SHARED:
        raise ValueError(f"pipeline reading {schedule!r} needs TrainConfig.{SCHEDULE_FIELD}")
    return cfg


def plans_of(rows: list[dict]) -> list[tuple[int, int]]:
    return list(dict.fromkeys((r["S"], r["m"]) for r in rows))


def schedule_of(row: dict) -> str:
    """The row's pipeline reading (tables written before the readings existed are GPipe's)."""
    return row.get("schedule") or SHARED


def sm_config(task: str, S: int, m: int, scale: str, seed: int = 0, schedule: str = SHARED) -> TrainConfig:
    """One plan's run under the pipeline reading `schedule`: at quick scale the task's quick
    setting (`QUICK_TASK`, changed by `SM_QUICK_CHANGES`), trained unsegmented under gpipe (the
    same losses for every plan) and through the simulated 1F1B pipeline under pipedream; at paper
    scale the small model, through the pipeline."""
    if scale == "quick":
        base = dict(QUICK_TASK[task], **SM_QUICK_CHANGES[task], no_pipeline=schedule == SHARED)
    else:
        base = dict(model="small", rounds=30, batch=32, local_steps=2, optimizer="adamw", lr=1e-3,
                    max_eval_examples=1000, eval_every=10, progress=True)
    cfg = TrainConfig(**{**base, "task": task, "policy": "default", "plan_stages": S, "plan_micro_batches": m,
                         "micro_batches": min(m, base["batch"]), "seed": seed})
    return with_schedule(cfg, schedule)


def host_rounds(cfg: TrainConfig, setup) -> list:
    """Steps 1-4 of every round (the state draw, the fixed plan's decision, its latency, energy and
    upload noise ε, the queues) without training: what `train` computes beside the federated round,
    with the same seed, so equal to the trained run's host rounds."""
    from collapipe_jax.scheduling.host_round import HostContext, run_host_round
    from collapipe_jax.scheduling.schedule import host_policy

    sc = setup.scenario
    ctx = HostContext(sc, host_policy(cfg.resolved_policy, sc, cfg.variant, cfg.lyapunov), cfg.seed, cfg.variant,
                      cfg.lyapunov, uploads_model=cfg.federated, local_steps=tuple(int(e) for e in setup.local_steps),
                      stages=cfg.plan_stages, micro_batches=cfg.plan_micro_batches)
    out, Y = [], np.zeros(sc.N)
    for t in range(cfg.rounds):
        out.append(run_host_round(ctx, t, Y))
        Y = out[-1].Y_next
    return out


def same_uploads(a: list, b: list) -> bool:
    """Whether two plans' host rounds give every round the same uploads (active clusters and noise
    variance ε): then, under synchronous GPipe, their federated rounds compute the same update."""
    def uploads(hr):
        active = np.asarray(hr.decision.channel) >= 0
        return active, np.where(active, np.asarray(hr.metrics.eps, np.float64), 0.0)

    return len(a) == len(b) and all(np.array_equal(x, y) for p, q in zip(a, b)
                                    for x, y in zip(uploads(p), uploads(q)))


def shared_result(trained: dict, hrs: list, setup, plan: tuple[int, int]) -> dict:
    """The result of a GPipe plan that shares the training computation of `trained` (another plan
    of the same seed with the same uploads): its losses and metrics, and this plan's decisions,
    latency and energy from its own host rounds. `shared_with` names the trained plan."""
    from collapipe_jax.train_records import round_record

    records = []
    for rec, hr in zip(trained["rounds"], hrs):
        row = round_record(rec["round"], rec["loss"], np.asarray(rec["cluster_losses"]), rec["metrics"], hr, setup,
                           0.0, 0.0, 0.0)
        # this plan's own cost: its host round (no training step, no evaluation)
        records.append(dict(row, wall_s=hr.host_ms / 1e3, decide_ms=hr.host_ms))
    return {**trained, "rounds": records, "shared_with": {"S": plan[0], "m": plan[1]},
            "total_latency_s": float(sum(r["tau_round_s"] for r in records)),
            "total_energy_j": float(sum(r["energy_j"] for r in records))}


def plan_results(task: str, scale: str, seed: int, schedule: str, work_dir, progress) -> dict:
    """Per plan (S, m): its result under `schedule`. Under gpipe the first plan trains and every
    other plan whose host rounds give the same uploads takes its losses and metrics with its own
    simulated latency (`shared_result`); a plan with other uploads, and every plan under
    pipedream, trains itself."""
    from collapipe_jax.train import build_setup

    out, trained, setup, trained_hrs = {}, None, None, None
    for S, m in sm_plans(task, scale):
        cfg = sm_config(task, S, m, scale, seed, schedule)
        cache = work_dir / "runs" / f"{task}-{schedule}-S{S}-m{m}-seed{seed}.json"
        result = read_json(cache)
        if result is None and schedule == SHARED and trained is not None:
            setup = setup or build_setup(cfg)
            plan_setup = dataclasses.replace(setup, cfg=cfg)
            hrs = host_rounds(cfg, plan_setup)
            trained_hrs = trained_hrs or host_rounds(trained[0], dataclasses.replace(setup, cfg=trained[0]))
            if same_uploads(hrs, trained_hrs):
                result = shared_result(trained[1], hrs, plan_setup, (trained[0].plan_stages,
                                                                     trained[0].plan_micro_batches))
                atomic_write_json(cache, result, indent=None)
        result = result or cached_train(cache, cfg)
        if schedule == SHARED and trained is None and "shared_with" not in result:
            trained = (cfg, result)
        out[(S, m)] = result
        progress(1)
    return out


def sm_compute(scale: str, work_dir, progress) -> dict:
    schedules = schedules_available()
    progress.expect(sum(len(sm_plans(t, scale)) for t in SM_TASKS) * len(SEEDS[scale]) * len(schedules))  # runs
    rows = []
    for task, schedule, seed in ((t, r, s) for t in SM_TASKS for r in schedules for s in SEEDS[scale]):
        for (S, m), result in plan_results(task, scale, seed, schedule, work_dir, progress).items():
            shared = result.get("shared_with")
            rows += curve_rows(result, task=task, S=S, m=m, seed=seed, schedule=schedule, model=result["model"],
                               rounds=len(result["rounds"]), batch=result.get("batch"),
                               trained_as="" if shared is None else f"S={shared['S']},m={shared['m']}",
                               wall_s=float(sum(r["wall_s"] for r in result["rounds"])))
    return {"learning-vs-s-m": rows}


def seed_curves(rows: list[dict], y: str) -> tuple[list, list, list | None, list | None]:
    """Per round: the mean over seeds of `y` and its Student-t 95% interval (None with one seed)."""
    by_round: dict = {}
    for r in rows:
        if r.get(y) is not None and np.isfinite(r[y]):
            by_round.setdefault(int(r["round"]), []).append(float(r[y]))
    rounds = sorted(by_round)
    stats = [mean_ci95(by_round[t]) for t in rounds]
    several = any(len(by_round[t]) > 1 for t in rounds)
    return (rounds, [s[0] for s in stats], [s[1] for s in stats] if several else None,
            [s[2] for s in stats] if several else None)


SM_METRIC = {"multi30k": "bleu", "ner": "entity_f1"}


def sm_plot(tables: dict, out) -> None:
    """Fig. 9/10: per task, the training loss per round under each pipeline reading (one line per
    plan: the mean over seeds, its 95% band) and each plan's final task metric per reading (mean
    and 95% interval)."""
    rows = tables["learning-vs-s-m"]
    tasks = [t for t in SM_TASKS if any(r["task"] == t for r in rows)]
    readings = [s for s in SCHEDULES if any(schedule_of(r) == s for r in rows)]
    fig, axes = plots.figure(len(tasks), len(readings) + 1, panel=(4.6, 3.2))
    seeds = len({r.get("seed", 0) for r in rows})
    for row, task in zip(axes, tasks):
        sel_task = [r for r in rows if r["task"] == task]
        plans = plans_of(sel_task)
        for ax, reading in zip(row, readings):
            rounds = []
            for i, (S, m) in enumerate(plans):
                sel = [r for r in sel_task if (r["S"], r["m"]) == (S, m) and schedule_of(r) == reading]
                xs, ys, lo, hi = seed_curves(sel, "loss")
                if not xs:
                    continue
                style = plots.style(i)
                shifted = [x + plots.dodge(i, len(plans), ROUND_DODGE / 2) for x in xs]
                ax.plot(shifted, ys, label=f"S = {S}, m = {m}", markevery=plots.markevery(i, len(xs), marks=len(xs)),
                        **style)
                plots.band(ax, shifted, lo, hi, style["color"])
                rounds += xs
            plots.round_axis(ax, rounds)
            plots.label(ax, f"{task}: training loss per round, {reading}", "round t [count]",
                        "cross-entropy loss [nats]")
        metric_panel(row[len(readings)], task, sel_task, plans, readings)
    plots.figure_legend(fig, axes, title="Fig. 9/10: learning with fixed plans of S stages and m micro-batches")
    about = {"gpipe": "gpipe: the same gradient for every S and m, so its plans of a seed share one training "
                      "computation and their curves lie on one another (shifted side by side).",
             "pipedream": "pipedream: asynchronous 1F1B, an update per micro-batch with stale weights on the early "
                          "stages."}
    plots.note(fig, [f"Lines: the mean over {seeds} seed{'s' if seeds != 1 else ''}"
                     + (", bands its Student-t 95% interval" if seeds > 1 else "") + "; error bars: 95% intervals.",
                     *(about[r] for r in readings)])
    plots.save_figure(fig, out / "learning-vs-s-m.png")


def metric_panel(ax, task: str, rows: list[dict], plans, readings) -> None:
    """Each plan's final task metric (the last evaluated round of each seed): mean and 95%
    interval per reading, side by side."""
    metric = SM_METRIC[task]
    for j, reading in enumerate(readings):
        xs, ys, err = [], [], []
        for i, plan in enumerate(plans):
            finals = final_values([r for r in rows if (r["S"], r["m"]) == plan and schedule_of(r) == reading],
                                  f"metric_{metric}")
            if finals:
                mean, lo, hi = mean_ci95(finals)
                xs.append(i + plots.dodge(j, len(readings), 0.2))
                ys.append(mean)
                err.append((mean - lo, hi - mean))
        if xs:
            style = plots.style(j)
            ax.errorbar(xs, ys, yerr=np.asarray(err).T, color=style["color"], marker=style["marker"],
                        linestyle="none", capsize=3, label=f"final {metric_label(metric).split(' [')[0]}, {reading}")
    ax.set_xticks(range(len(plans)), [f"S={S}\nm={m}" for S, m in plans])
    plots.label(ax, f"{task}: final {metric_label(metric).split(' [')[0]} per plan", "plan (S stages, m micro-batches)",
                metric_label(metric))


def final_values(rows: list[dict], field: str) -> list[float]:
    """Per seed: the value of `field` at the last round that has one."""
    out = {}
    for r in sorted(rows, key=lambda r: r["round"]):
        if r.get(field) is not None and np.isfinite(r[field]):
            out[r.get("seed", 0)] = float(r[field])
    return list(out.values())


def sm_findings(tables: dict) -> dict:
    rows = tables["learning-vs-s-m"]
    notes, spreads, latencies = [], {}, {}
    for task, reading in ((t, s) for t in SM_TASKS for s in SCHEDULES):
        sel = [r for r in rows if r["task"] == task and schedule_of(r) == reading]
        if not sel:
            continue
        plans = plans_of(sel)
        seeds = sorted({r.get("seed", 0) for r in sel})
        key = f"{task}/{reading}"
        spreads[key] = max(loss_gap(sel, plans[0], p, s) for p in plans for s in seeds)
        latencies[key] = {f"S={S},m={m}": sum(r["tau_round_s"] for r in sel if (r["S"], r["m"]) == (S, m))
                          / len(seeds) for S, m in plans}  # mean over the seeds
        shared = sorted({(r["S"], r["m"], r["trained_as"]) for r in sel if r.get("trained_as")})
        # every row of a run carries the run's wall time: count it once a run (at its first round)
        cost = sum(r.get("wall_s") or 0.0 for r in sel if r["round"] == min(x["round"] for x in sel))
        how = (f"plans {[(S, m) for S, m, _ in shared]} took the training computation of plan "
               f"{shared[0][2]} of their seed (same uploads every round; synchronous GPipe gives every S and m the "
               "gradient of the unsegmented model, tests/test_gpipe_grads.py), their own decisions and simulated "
               "latency") if shared else "every plan trained itself"
        notes.append(f"{task}, {reading}: across the plans {plans} (S, m) the per-round training losses differ by at "
                     f"most {spreads[key]:.2g} (relative, same seed); {how}; simulated latency per run (mean over "
                     f"{len(seeds)} seeds) " + ", ".join(f"{k}: {v:.4g} s" for k, v in latencies[key].items()) +
                     f"; the runs took {cost:.0f} s of wall time.")
    setting = {}  # per task: its runs' model, rounds and batch
    for task in dict.fromkeys(r["task"] for r in rows):
        first = next(r for r in rows if r["task"] == task)
        setting[task] = (f"{first.get('model')} model, {first.get('rounds')} rounds, batch {first.get('batch', '?')}, "
                         "fixed uniform plans, same seeds")
    return {"max_relative_loss_difference": spreads, "total_latency_s": latencies,
            "claims": s_m_claims(tables, setting), "findings": notes + reading_findings(tables)}


def loss_gap(rows: list[dict], a, b, seed) -> float:
    """The largest relative difference of the per-round losses of plans a and b for one seed."""
    la = np.asarray([r["loss"] for r in rows if (r["S"], r["m"]) == a and r.get("seed", 0) == seed])
    lb = np.asarray([r["loss"] for r in rows if (r["S"], r["m"]) == b and r.get("seed", 0) == seed])
    return float(np.max(np.abs(lb - la) / np.abs(la))) if len(la) and len(la) == len(lb) else 0.0


def reading_findings(tables: dict) -> list[str]:
    """Under which reading the paper's direction (Fig. 9: S = 2, m = 2 best; Fig. 10: smaller m
    better) appears, from the claims of each reading."""
    out = []
    for c in s_m_claims(tables, ""):
        reading = c["setting"].split("reading ")[-1].split(",")[0]
        lo, hi = c.get("ci95", [float("nan")] * 2)
        verdict = "the paper direction appears" if c["reproduced"] else "not the paper direction"
        out.append(f"{c['id']} under {reading}: {verdict} (n = {c.get('n')}, 95% interval [{lo:.3g}, {hi:.3g}])"
                   f"{'' if c['reproduced'] else ': ' + c['why']}.")
    return out


register(Sweep("learning-vs-s-m", sm_compute, sm_plot, sm_findings))
