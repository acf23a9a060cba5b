"""Training sweep (paper Fig. 6): each task under each framework, Alg. 1 end to end: loss, task
metric and the simulated latency/energy the system model charges per round.

quick: tiny model, 4 rounds, batch 8 per cluster; paper: small model, 30 rounds, batch 32.
Each run's result is cached as JSON under the sweep's folder, so a killed sweep resumes run by run.
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.io import atomic_write_json, read_json
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep.plots import save_figure, subplots
from collapipe_jax.sweep.training_claims import training_claims
from collapipe_jax.train import TrainConfig, train

TASKS = ("toutiao", "ner", "multi30k")
FRAMEWORKS = ("collapipe", "vanilla-fl", "pipeline", "titanic")
TASK_METRIC = {"multi30k": "bleu", "ner": "entity_f1", "toutiao": "accuracy"}


def compute(scale: str, work_dir, progress) -> dict:
    rounds, model, batch = (4, "tiny", 8) if scale == "quick" else (30, "small", 32)
    rows, finals = [], []
    for task in TASKS:
        for framework in FRAMEWORKS:
            cache = work_dir / "runs" / f"{task}-{framework}.json"
            result = read_json(cache)
            if result is None:
                cfg = TrainConfig(task=task, framework=framework, model=model, rounds=rounds, batch=batch,
                                  progress=False, max_eval_examples=200 if scale == "quick" else 1000)
                result = train(cfg)
                atomic_write_json(cache, result, indent=None)
            elapsed = 0.0
            for r in result["rounds"]:
                elapsed += r["tau_round_s"]
                rows.append({"task": task, "framework": framework, "round": r["round"], "loss": r["loss"],
                             "tau_round_s": r["tau_round_s"], "cumulative_latency_s": elapsed,
                             "energy_j": r["energy_j"], **{f"metric_{k}": v for k, v in r["metrics"].items()},
                             # the round's decision, mean over the clusters (Fig. 9/10 claims)
                             "S": float(np.mean(np.count_nonzero(r["decision"]["delta"], axis=1))),
                             "m": float(np.mean(r["decision"]["m"]))})
            finals.append({"task": task, "framework": framework, "rounds": rounds, "model": model, "batch": batch,
                           "final_loss": result["rounds"][-1]["loss"],
                           "total_latency_s": result["total_latency_s"], "total_energy_j": result["total_energy_j"],
                           "violating_rounds": sum(1 for r in result["rounds"] if r.get("violations")),
                           **{f"final_{k}": v for k, v in result["final_metrics"].items()}})
            progress(1)
    return {"training": rows, "training-final": finals}


def plot(tables: dict, out) -> None:
    rows, model = tables["training"], tables["training-final"][0]["model"]
    fig, axes = subplots(2, 3, figsize=(15, 8))
    for col, task in enumerate(TASKS):
        for framework in FRAMEWORKS:
            sel = [r for r in rows if r["task"] == task and r["framework"] == framework]
            axes[0, col].plot([r["cumulative_latency_s"] for r in sel], [r["loss"] for r in sel], marker="o",
                              label=framework)
            metric = f"metric_{TASK_METRIC[task]}"
            axes[1, col].plot([r["round"] for r in sel], [r.get(metric, float("nan")) for r in sel], marker="o",
                              label=framework)
        axes[0, col].set_xlabel("simulated wall-clock (Σ τ(t)) [s]")
        axes[0, col].set_ylabel("training loss")
        axes[0, col].set_title(f"{task} ({model} model)")
        axes[1, col].set_xlabel("round")
        axes[1, col].set_ylabel(TASK_METRIC[task])
        axes[0, col].legend(fontsize=8)
    save_figure(fig, out / "training.png")


def findings(tables: dict) -> dict:
    rows, finals = tables["training"], tables["training-final"]
    notes = []
    for task in TASKS:
        losses = {f: [r["loss"] for r in rows if r["task"] == task and r["framework"] == f] for f in FRAMEWORKS}
        base = np.asarray(losses["vanilla-fl"])
        for f in ("collapipe", "titanic"):
            rel = float(np.max(np.abs(np.asarray(losses[f]) - base) / np.abs(base)))
            notes.append(f"{task}: per-round losses of {f} and vanilla-fl differ by at most {rel:.2g} (relative): "
                         "pipelining does not change the gradient, only the simulated latency.")
        lat = {r["framework"]: r["total_latency_s"] for r in finals if r["task"] == task}
        notes.append(f"{task}: simulated latency over {finals[0]['rounds']} rounds: " +
                     ", ".join(f"{f} {lat[f]:.3g} s" for f in FRAMEWORKS) +
                     " (pipeline uploads no encoder: it has no federated aggregation).")
    bad = [f"{r['task']}/{r['framework']} ({r['violating_rounds']} of {r['rounds']} rounds)" for r in finals
           if r.get("violating_rounds")]
    if bad:
        notes.append("decisions that break a constraint (each round's `violations` names it): " + ", ".join(bad))
    first = finals[0]
    return {"rounds": first["rounds"], "model": first["model"], "batch": first["batch"], "final": finals,
            "claims": training_claims(tables), "findings": notes}


register(Sweep("training", compute, plot, findings))
