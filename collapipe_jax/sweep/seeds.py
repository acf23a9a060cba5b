"""`collapipe train --seeds A:B`: the same run for seeds A, ..., B−1, and what they give together.

Each seed is a whole run (its own cluster split, batches, initial model, state draws, decisions,
dropout masks and upload noise) written into `seed-<s>/` of the log and checkpoint directories,
so a killed multi-seed run resumes seed by seed. The seeds run one after the other: on the
shared 2-core CPU one program vmapped over 3 seeds was only 1.06x faster than the same program
3 times in a row (`benchmarks/bench_seeds.py`, within the machine's noise), and a federated
framework's seeds make their own decisions, so they would not share one stage layout.

result.json of the multi-seed run: `per_seed` (each seed's final metrics, loss and wall time),
`final_metrics` (their mean), `ci95` (the Student-t 95% interval of the mean per metric, as the
claims use: `claims.mean_ci95`), `n`, and `rounds` (the per-round mean loss and metrics).

The top directories are held as a single run's are (docs/design.md §8): locked for the whole
multi-seed run, and records of another run there are refused before the first seed (unless
`--force`: replaced when the summary is written; with `--resume` only a multi-seed summary may be
there, each seed's own records being checked against its checkpoint).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from collapipe_jax.checkpoints import Checkpoints, lock_directory, unlock_directory
from collapipe_jax.io import atomic_write_json, check_output_dir, read_json
from collapipe_jax.options import require
from collapipe_jax.programs import bound_maps
from collapipe_jax.sweep.claims import mean_ci95
from collapipe_jax.train import TrainConfig, train
from collapipe_jax.train_config import seed_range
from collapipe_jax.train_records import check_records, load_reference, records_dir, reference_gap


def seed_dir(directory: str | None, seed: int) -> str | None:
    return None if directory is None else str(pathlib.Path(directory) / f"seed-{seed}")


def seed_config(cfg: TrainConfig, seed: int) -> TrainConfig:
    """One seed's run in its own subdirectory of the log and checkpoint directories. With
    --resume, a seed that has a checkpoint continues it and a seed that has none starts (a
    killed multi-seed run goes on where it stopped)."""
    ckpt = seed_dir(cfg.checkpoint_dir, seed)
    started = ckpt is not None and pathlib.Path(ckpt).is_dir() and Checkpoints(ckpt).latest() is not None
    return dataclasses.replace(cfg, seeds=None, seed=seed, log_dir=seed_dir(cfg.log_dir, seed),
                               checkpoint_dir=ckpt, resume=cfg.resume and started)


def mean_rounds(results: list[dict]) -> list[dict]:
    """Per round: the mean over seeds of the loss, the simulated latency and each metric."""
    out = []
    for records in zip(*(r["rounds"] for r in results)):
        names = sorted({k for r in records for k in r["metrics"]})
        taus = [r["tau_round_s"] for r in records]
        out.append({"round": records[0]["round"], "loss": float(np.mean([r["loss"] for r in records])),
                    "tau_round_s": None if None in taus else float(np.mean(taus)),
                    "energy_j": None if None in taus else float(np.mean([r["energy_j"] for r in records])),
                    "metrics": {k: float(np.mean([r["metrics"][k] for r in records])) for k in names
                                if all(k in r["metrics"] for r in records)},
                    "wall_s": float(np.mean([r["wall_s"] for r in records]))})
    return out


def seeds_summary(cfg: TrainConfig, seeds: list[int], results: list[dict]) -> dict:
    """The multi-seed result: every seed's finals, their mean and 95% interval."""
    first = results[0]
    names = [k for k in first["final_metrics"] if all(k in r["final_metrics"] for r in results)]
    stats = {k: mean_ci95([r["final_metrics"][k] for r in results]) for k in names}
    loss = mean_ci95([r["rounds"][-1]["loss"] for r in results])
    keep = ("task", "framework", "policy", "model", "pipelined", "pipeline_schedule", "variant", "clusters", "n_train",
            "n_test", "optimizer", "server_optimizer", "local_steps", "batch", "trainable_params", "uploaded_bits_per_round")
    return {**{k: first.get(k) for k in keep}, "seeds": seeds, "n": len(seeds),
            "per_seed": [{"seed": s, "final_metrics": r["final_metrics"], "final_loss": r["rounds"][-1]["loss"],
                          "total_latency_s": r["total_latency_s"], "wall_s": float(sum(x["wall_s"] for x in r["rounds"])),
                          **({"reference_gap_points": r["reference"]["gap_points"]} if "reference" in r else {})}
                         for s, r in zip(seeds, results)],
            "final_metrics": {k: v[0] for k, v in stats.items()},
            "ci95": {k: [v[1], v[2]] for k, v in stats.items()},
            "final_loss": loss[0], "final_loss_ci95": [loss[1], loss[2]],
            "rounds": mean_rounds(results),
            "total_latency_s": None if first["total_latency_s"] is None else float(
                np.mean([r["total_latency_s"] for r in results])),
            "total_energy_j": None if first["total_energy_j"] is None else float(
                np.mean([r["total_energy_j"] for r in results]))}


def top_dirs(cfg: TrainConfig) -> list[tuple[str, pathlib.Path]]:
    """(flag, directory) of the multi-seed run's top log and checkpoint directories."""
    named = [("log-dir", cfg.log_dir), ("checkpoint-dir", cfg.checkpoint_dir)]
    return [(field, pathlib.Path(d)) for field, d in named if d]


def check_resumed_summary(cfg: TrainConfig) -> None:
    """--resume: the top directory may hold this multi-seed run's summary (result.json with
    `per_seed`), not a single run's records."""
    directory = records_dir(cfg)
    if directory is None:
        return
    file = directory / "result.json"
    summary = {"per_seed": []} if not file.exists() else read_json(file) if file.is_file() else None  # no FIFO read
    require(not (directory / "rounds.csv").exists() and isinstance(summary, dict) and "per_seed" in summary,
            "log-dir", "holds another run's records (a single run's, not a multi-seed summary): resume with the "
                       "multi-seed run's own --log-dir, or choose another", str(directory))


def train_seeds(cfg: TrainConfig) -> dict:
    """Train every seed of `cfg.seeds` in turn; result.json (in --log-dir, else --checkpoint-dir)
    holds the summary and names the gap of the mean to `--reference` (checked before the first
    seed)."""
    seeds = seed_range(cfg.seeds)
    for field, directory in top_dirs(cfg):
        check_output_dir(field, directory)
        lock_directory(directory, field)
    try:
        if cfg.resume and not cfg.force:
            check_resumed_summary(cfg)
            earlier = []
        else:
            earlier = check_records(cfg)  # refused unless --force
        reference = load_reference(cfg.reference, cfg.task) if cfg.reference else None
        results = []
        for s in seeds:
            results.append(train(seed_config(cfg, s)))
            bound_maps()  # between runs: release compiled programs once they hold too many memory maps
        summary = seeds_summary(cfg, seeds, results)
        if reference is not None:
            summary["reference"] = reference_gap(summary, reference, cfg.reference)
        directory = records_dir(cfg)
        if directory:
            atomic_write_json(directory / "result.json", summary)
            for path in earlier:  # --force: a single run's rounds.csv must not stay beside the summary
                if path.name != "result.json":
                    path.unlink(missing_ok=True)
    finally:
        for _, directory in top_dirs(cfg):
            unlock_directory(directory)
    return summary
