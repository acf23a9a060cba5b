"""The gap of federated CollaPipe to its centralized reference, taken apart factor by factor.

Setting (the tracker's): Toutiao, small model (6 TEBs, d = 128), N = 3 clusters, 40 rounds x
E = 5 local AdamW steps (lr 1e-3, weight decay 0.01, linear warm-up 20 steps then cosine to 0
over the run's 200 steps, clip 1, b = 32, seq 32, dropout 0.1), test accuracy on 2,000 titles
after the last round. The centralized reference (`--framework centralized`) takes the same
samples: at each of its 200 steps the N clusters' step-e mini-batches together (N b = 96 titles),
one AdamW state, the same schedule. Same samples, same number of optimizer steps, same
learning rate: what is left between the two is what federation costs.

Each row changes one factor of the federated run (its `settings`) and runs seeds 0, 1, 2; the
gap of a seed is federated − centralized accuracy of the same seed (same initial model, same
batches), in points; the row gives its mean and Student-t 95% interval (stats.mean_ci95).

The federated rows but the baseline run with the unsegmented encoder (`--no-pipeline`): synchronous GPipe
computes the unsegmented gradient (tests/test_gpipe.py), so the learning is the same, and the
shared 2-core CPU runs it faster. The DSSRA scheduler still decides every round (channels, p_n,
hence ε(p_n) of the upload noise).

    python -m benchmarks.gap_ablation [--out docs/results/gap] [--rows base,central,...] [--seeds 0,1,2]

Runs already finished (their result.json in OUT/runs/<row>/seed-<s>/) are not run again; the
table (OUT/table.json, OUT/table.csv) and every run's final accuracy (OUT/runs.csv) are
rewritten from what OUT/runs holds. Delete OUT/runs to reproduce the table from scratch.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time

COMMON = {"recipe": "toutiao-cpu", "rounds": 40, "local_steps": 5, "lr": 1e-3, "warmup_steps": 20,
          "lr_schedule": "warmup-cosine", "clip_norm": 1.0, "batch": 32, "seq_len": 32, "model": "small",
          "max_eval_examples": 2000, "eval_every": 40, "progress": False}
FED = {"no_pipeline": True}

# name -> (factor, setting, overrides of COMMON); "central" is the reference of every row
ROWS = {
    "central": ("reference", "centralized, one AdamW state, 96 titles a step", {"framework": "centralized"}),
    "base": ("baseline", "FedAvg, client state kept, ε(p_n) noise, IID, E = 5 (GPipe)", {"client_state": "keep"}),
    "noise-none": ("upload noise ε(p_n)", "off (noiseless upload)", {**FED, "noise_mode": "none"}),
    "reset": ("client optimizer state", "reset every round", {**FED, "client_state": "reset"}),
    "average": ("client optimizer state", "averaged over the clusters", {**FED, "client_state": "average"}),
    "e1": ("local steps", "E = 1, 200 rounds (same 200 steps, same samples)",
           {**FED, "local_steps": 1, "rounds": 200, "eval_every": 200}),
    "non-iid": ("data split", "Dirichlet non-IID, α = 0.5", {**FED, "non_iid": True}),
    "server-lr2": ("server optimizer", "FedAvg, server lr 2", {**FED, "server_optimizer": "sgd", "server_lr": 2.0}),
    "server-lr-sqrt3": ("server optimizer", "FedAvg, server lr √N = 1.732",
                        {**FED, "server_optimizer": "sgd", "server_lr": 1.732}),
    "server-lr3": ("server optimizer", "FedAvg, server lr 3 (= N)", {**FED, "server_optimizer": "sgd",
                                                                       "server_lr": 3.0}),
    "fedavgm": ("server optimizer", "FedAvgM, server lr 1, momentum 0.9",
                {**FED, "server_optimizer": "sgd", "server_lr": 1.0, "server_momentum": 0.9}),
    "fedavgm-lr0.5": ("server optimizer", "FedAvgM, server lr 0.5, momentum 0.9",
                      {**FED, "server_optimizer": "sgd", "server_lr": 0.5, "server_momentum": 0.9}),
    "fedavgm-lr0.1": ("server optimizer", "FedAvgM, server lr 0.1, momentum 0.9 (steady-state step 1, as FedAvg)",
                      {**FED, "server_optimizer": "sgd", "server_lr": 0.1, "server_momentum": 0.9}),
    "fedadam": ("server optimizer", "FedAdam, server lr 5e-3 (= E x lr)", {**FED, "server_optimizer": "adam",
                                                                   "server_lr": 5e-3}),
}


def run_one(row: str, seed: int, out: pathlib.Path) -> dict:
    """One training run (or its stored result): {"row", "seed", "accuracy", "wall_s"}."""
    from collapipe_jax.train import train
    from collapipe_jax.train_config import config_with_recipe

    log_dir = out / "runs" / row / f"seed-{seed}"
    result_file = log_dir / "result.json"
    if not result_file.is_file():
        log_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        cfg = config_with_recipe({**COMMON, **ROWS[row][2], "seed": seed, "log_dir": str(log_dir), "force": True})
        result = train(cfg)
        result["gap_ablation_wall_s"] = time.time() - started
        result_file.write_text(json.dumps(result, indent=1, default=str))
    result = json.loads(result_file.read_text())
    return {"row": row, "seed": seed, "accuracy": float(result["final_metrics"]["accuracy"]),
            "wall_s": result.get("gap_ablation_wall_s")}


def table(runs: list[dict]) -> list[dict]:
    """Per row: mean accuracies, and the gap (federated − centralized, same seed) in points with
    its 95% interval over the seeds both have."""
    from collapipe_jax.stats import mean_ci95

    central = {r["seed"]: r["accuracy"] for r in runs if r["row"] == "central"}
    rows = []
    for name, (factor, setting, _) in ROWS.items():
        mine = {r["seed"]: r["accuracy"] for r in runs if r["row"] == name}
        if not mine:
            continue
        paired = sorted(s for s in mine if s in central)
        entry = {"row": name, "factor": factor, "setting": setting, "seeds": sorted(mine),
                 "accuracy_mean": float(sum(mine.values()) / len(mine))}
        if paired and name != "central":
            gaps = [100.0 * (mine[s] - central[s]) for s in paired]
            mean, lo, hi = mean_ci95(gaps)
            entry.update(central_mean=float(sum(central[s] for s in paired) / len(paired)), gap_points=mean,
                         gap_ci95=[lo, hi], n_paired=len(paired))
        rows.append(entry)
    return rows


def write_outputs(out: pathlib.Path, runs: list[dict]) -> list[dict]:
    rows = table(runs)
    (out / "table.json").write_text(json.dumps({"setting": COMMON, "federated": FED, "rows": rows}, indent=1))
    with open(out / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "factor", "setting", "federated_acc", "centralized_acc", "gap_points", "ci95_lo",
                    "ci95_hi", "n_seeds"])
        for r in rows:
            if "gap_points" in r:
                w.writerow([r["row"], r["factor"], r["setting"], f"{r['accuracy_mean']:.4f}",
                            f"{r['central_mean']:.4f}", f"{r['gap_points']:.2f}", f"{r['gap_ci95'][0]:.2f}",
                            f"{r['gap_ci95'][1]:.2f}", r["n_paired"]])
    (out / "table.md").write_text(markdown(rows))
    with open(out / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["row", "seed", "accuracy", "wall_s"])
        w.writeheader()
        w.writerows(runs)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table as docs/training.md shows it (accuracies as fractions, gaps in points)."""
    lines = ["| factor | setting | federated acc | centralized acc | gap (points) | 95% CI | n seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "gap_points" not in r:
            continue
        ci = (f"[{r['gap_ci95'][0]:+.2f}, {r['gap_ci95'][1]:+.2f}]" if r["n_paired"] > 1
              else "— (one seed)")
        lines.append(f"| {r['factor']} | {r['setting']} | {r['accuracy_mean']:.4f} | {r['central_mean']:.4f} | "
                     f"{r['gap_points']:+.2f} | {ci} | {r['n_paired']} |")
    return "\n".join(lines) + "\n"


def stored_runs(out: pathlib.Path) -> list[dict]:
    runs = []
    for row in ROWS:
        for d in sorted((out / "runs" / row).glob("seed-*")):
            if (d / "result.json").is_file():
                runs.append(run_one(row, int(d.name.split("-")[1]), out))
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/results/gap")
    parser.add_argument("--rows", default=",".join(ROWS), help="rows to run, in this order (default: all)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--seed-major", action="store_true", help="run seed 0 of every row first, then seed 1, ...")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown row(s) {unknown}, choose from {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    order = [(r, s) for s in seeds for r in rows] if args.seed_major else [(r, s) for r in rows for s in seeds]
    for row, seed in order:
        got = run_one(row, seed, out)
        print(f"{row} seed {seed}: accuracy {got['accuracy']:.4f}", file=sys.stderr, flush=True)
        write_outputs(out, stored_runs(out))
    for r in write_outputs(out, stored_runs(out)):
        gap = f"gap {r['gap_points']:+.2f} [{r['gap_ci95'][0]:+.2f}, {r['gap_ci95'][1]:+.2f}]" if "gap_points" in r else ""
        print(f"{r['row']:>14} acc {r['accuracy_mean']:.4f} n={len(r['seeds'])} {gap}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
