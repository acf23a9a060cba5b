"""What `collapipe train` writes: one record per round (losses, metrics, the decision and its
charge, the wall-time split), result.json and rounds.csv."""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np

from collapipe_jax.io import atomic_write_json, write_csv
from collapipe_jax.models.lora import has_lora, lora_adapters
from collapipe_jax.scenario import orders_of
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
        "pipelined": cfg.pipelined, "variant": cfg.variant, "clusters": setup.scenario.N,
        "samples_per_cluster": setup.weights.astype(int).tolist(),
        "n_train": setup.task.n_train, "n_test": setup.task.n_test, "seed": cfg.seed,
        "optimizer": {"name": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                      "lr_schedule": cfg.lr_schedule, "warmup_steps": cfg.warmup_steps, "clip_norm": cfg.clip_norm},
        "server_optimizer": {"name": cfg.server_optimizer, "lr": cfg.server_lr},
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


def reference_gap(result: dict, reference: dict, run_dir: str) -> dict:
    """This run's final metrics against a reference run's (a centralized run of the same task):
    gap = this − reference in the metric's unit, in points, and relative (%)."""
    ours, ref = result["final_metrics"], reference.get("final_metrics", {})
    names = [k for k in ours if isinstance(ref.get(k), (int, float))]
    return {"run_dir": run_dir, "framework": reference.get("framework"), "rounds": len(reference.get("rounds", [])),
            "samples": samples_seen(reference), "same_samples": samples_seen(reference) == samples_seen(result),
            "final_metrics": {k: ref[k] for k in names},
            "gap": {k: float(ours[k]) - float(ref[k]) for k in names},
            "gap_points": {k: metric_points(k, ours[k]) - metric_points(k, ref[k]) for k in names},
            "gap_pct": {k: 100.0 * (float(ours[k]) / float(ref[k]) - 1.0) for k in names if ref[k]}}


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
