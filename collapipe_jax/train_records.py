"""What `collapipe train` writes: one record per round (losses, metrics, the decision and its
charge, the wall-time split), result.json and rounds.csv."""

from __future__ import annotations

import csv
import math
import pathlib
import time

import jax
import numpy as np

from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_json, read_json, write_csv
from collapipe_jax.models.lora import has_lora, lora_adapters
from collapipe_jax.scenario import orders_of
from collapipe_jax.options import INT32_MAX, as_finite_float, is_int, require
from collapipe_jax.train_config import TrainConfig


def round_record(t, loss, losses, metrics, hr, setup, step_ms, eval_ms, t0) -> dict:
    """One round of result.json; `hr` is the host round, `setup` the run's train.Setup."""
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


def centralized_record(t, loss, metrics, setup, step_ms, eval_ms, t0) -> dict:
    """One round of a centralized run: no decision and no system charge (None)."""
    return {"round": t, "loss": loss, "cluster_losses": [loss], "metrics": metrics, "tau_round_s": None,
            "energy_j": None, "violations": [], "local_steps": setup.local_steps.tolist(), "decide_ms": 0.0,
            "step_ms": step_ms, "eval_ms": eval_ms, "wall_s": time.perf_counter() - t0}


def parameter_count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def trainable_parameters(cfg: TrainConfig, state) -> int:
    """Parameters the optimizers update: one client model (of N without FL) — its LoRA adapters
    only with lora:R — and the server's."""
    client = state.server.client
    if has_lora(client):
        client = lora_adapters(client)
    count = parameter_count(client)
    if cfg.independent:
        count //= len(state.Y)
    return count + parameter_count(state.server.server)


def result_dict(cfg: TrainConfig, setup, records: list[dict], trainable: int) -> dict:
    return {
        "task": cfg.task, "framework": cfg.framework, "policy": cfg.resolved_policy, "model": setup.model_cfg.name,
        "pipelined": cfg.pipelined, "pipeline_schedule": cfg.pipeline_schedule if cfg.pipelined else None,
        "variant": cfg.variant, "clusters": setup.scenario.N,
        "samples_per_cluster": setup.weights.astype(int).tolist(),
        "n_train": setup.task.n_train, "n_test": setup.task.n_test, "seed": cfg.seed,
        "n_classes": setup.task.n_labels if setup.task.kind == "classification" else None,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                      "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps, "clip_norm": cfg.clip_norm},
        "server_optimizer": {"name": cfg.server_optimizer, "lr": cfg.server_lr, "momentum": cfg.server_momentum},
        "local_steps": setup.local_steps.tolist(), "batch": cfg.batch,
        "trainable_params": trainable,
        "uploaded_bits_per_round": setup.scenario.uploaded_theta_bits if cfg.federated else 0.0,
        "rounds": records,
        "final_metrics": records[-1]["metrics"] if records else {},
        # the centralized run is not charged by the system model: no latency, no energy
        "total_latency_s": None if cfg.centralized else float(sum(r["tau_round_s"] for r in records)),
        "total_energy_j": None if cfg.centralized else float(sum(r["energy_j"] for r in records)),
    }


def samples_seen(result: dict) -> int:
    """Training samples a run took: rounds x Σ_n E_n x b (the centralized run's E steps of N x b)."""
    batch = result.get("batch")
    if batch is None:
        return 0
    return len(result.get("rounds", [])) * int(sum(result["local_steps"])) * int(batch)


def metric_points(name: str, value: float) -> float:
    """A metric in points: BLEU is already on 0..100, the other task metrics are fractions."""
    return float(value) if name.startswith("bleu") else 100.0 * float(value)


def check_reference(reference, file) -> dict:
    """A reference run's result.json (`--reference`), checked field by field before the first
    round: what `reference_gap` reads must be there with the types and ranges a run writes, so that
    a hand-edited file (NaN, 1e308, a string for a number) is one error line naming the file and
    the field, not a result lost at the end of the run."""
    def bad(field: str, constraint: str, value=None):
        raise ValidationError("reference", f"{file}: {field} {constraint}", value)

    if not isinstance(reference, dict):
        bad("the file", "must hold a run's result (a JSON object)")
    for key in ("task", "framework"):
        if not isinstance(reference.get(key), str):
            bad(key, "must be a string", reference.get(key))
    if not isinstance(reference.get("rounds"), list):
        bad("rounds", "must be the list of the run's rounds", reference.get("rounds"))
    metrics = reference.get("final_metrics")
    if not isinstance(metrics, dict) or not metrics:
        bad("final_metrics", "must be an object of the run's final metrics", metrics)
    for name, value in metrics.items():
        x = as_finite_float(value)
        if x is None or not 0.0 <= metric_points(name, x) <= 100.0:
            bad(f"final_metrics.{name}", "must be a finite number in [0, 1] ([0, 100] for BLEU)", value)
    steps = reference.get("local_steps")
    if not (isinstance(steps, list) and steps and all(is_int(e) and 1 <= e <= INT32_MAX for e in steps)):
        bad("local_steps", f"must be a list of integers in [1, {INT32_MAX}] (one per cluster)", steps)
    batch = reference.get("batch")
    if batch is not None and not (is_int(batch) and 1 <= batch <= INT32_MAX):
        bad("batch", f"must be an integer in [1, {INT32_MAX}]", batch)
    return reference


def reference_gap(result: dict, reference: dict, run_dir: str) -> dict:
    """This run's final metrics against a reference run's (a centralized run of the same task):
    gap = this − reference in the metric's unit, in points, and relative (%)."""
    ours, ref = result["final_metrics"], reference.get("final_metrics", {})
    names = [k for k in ours if isinstance(ref.get(k), (int, float))]
    pct = {k: 100.0 * (float(ours[k]) / float(ref[k]) - 1.0) for k in names if ref[k]}
    return {"run_dir": run_dir, "framework": reference.get("framework"), "rounds": len(reference.get("rounds", [])),
            "samples": samples_seen(reference), "same_samples": samples_seen(reference) == samples_seen(result),
            "final_metrics": {k: ref[k] for k in names},
            "gap": {k: float(ours[k]) - float(ref[k]) for k in names},
            "gap_points": {k: metric_points(k, ours[k]) - metric_points(k, ref[k]) for k in names},
            "gap_pct": {k: v for k, v in pct.items() if math.isfinite(v)}}  # not relative to a near-0 reference


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


RECORD_FILES = ("result.json", "rounds.csv")


def records_dir(cfg: TrainConfig) -> pathlib.Path | None:
    directory = cfg.log_dir or cfg.checkpoint_dir
    return pathlib.Path(directory) if directory else None


def check_records(cfg: TrainConfig) -> list[pathlib.Path]:
    """A run's records never replace another run's without a word: a log directory holding
    result.json or rounds.csv is refused unless the run resumes (the same run, continuing: see
    `check_resumed_records`) or `--force` is given. Returns the earlier records that `--force`
    replaces: they stay until this run has records of its own to write (`replace_records`), so a
    run that never starts or diverges in its first round leaves them as they were."""
    directory = records_dir(cfg)
    if not directory or (cfg.resume and not cfg.force):
        return []
    found = [directory / name for name in RECORD_FILES if (directory / name).exists()]
    require(cfg.force or not found, "log-dir",
            f"holds another run's records ({', '.join(p.name for p in found)}): pass --resume to continue that run, "
            "--force to overwrite them, or choose another --log-dir", str(directory))
    return found


def replace_records(earlier: list[pathlib.Path]) -> None:
    """After this run's first rounds.csv is written (it replaced the earlier one): the earlier
    result.json goes, so that no record of another run stays beside this run's."""
    for path in earlier:
        if path.name != "rounds.csv":
            path.unlink(missing_ok=True)


def logged_rounds(directory: pathlib.Path) -> list[tuple[int, float]] | None:
    """(round, loss) of each row of a log directory's records: rounds.csv, else result.json's
    rounds; None when it holds neither, [] when they cannot be read."""
    table, result = directory / "rounds.csv", directory / "result.json"
    try:
        if table.is_file():
            with open(table, newline="", encoding="utf-8") as f:
                return [(int(row["round"]), float(row["loss"])) for row in csv.DictReader(f)]
        if result.is_file():  # a FIFO would block the read
            rounds = read_json(result)["rounds"]
            return [(int(r["round"]), float(r["loss"])) for r in rounds]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return None


def check_resumed_records(cfg: TrainConfig, records: list[dict]) -> None:
    """A resumed run continues its own records: the rows already in the log directory must be
    the checkpoint's (the same rounds with the same losses, as far as both go), else they are
    another run's and are refused, not replaced (docs/design.md §8)."""
    directory = records_dir(cfg)
    theirs = logged_rounds(directory) if directory and not cfg.force else None
    if theirs is None:
        return
    ours = [(int(r["round"]), float(r["loss"])) for r in records]
    n = min(len(theirs), len(ours))
    require(n > 0 and theirs[:n] == ours[:n], "log-dir",
            f"holds another run's records (their rounds and losses are not those of the checkpoint in "
            f"{cfg.checkpoint_dir}): resume with the run's own --log-dir, choose another, or pass --force to replace "
            "them", str(directory))


def load_reference(run_dir: str, task: str) -> dict:
    """result.json of a finished run of `task` in `run_dir` (its --log-dir), checked field by
    field before the first round; a result.json that is not a regular file (a FIFO would block
    the read forever) is refused."""
    file = pathlib.Path(run_dir) / "result.json"
    require(pathlib.Path(run_dir).is_dir() and file.is_file(), "reference",
            "must be the log directory of a finished run (with its result.json, a regular file)", run_dir)
    result = read_json(file)
    require(result is not None, "reference", f"{file} is not a readable JSON file", run_dir)
    check_reference(result, file)
    require(result["task"] == task, "reference", f"is a run of task {result['task']!r}, this run's task is "
                                                 f"{task!r}", run_dir)
    return result
