"""One of the two processes of tests/test_multiprocess.py (not a test module).

Run with COLLAPIPE_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID, JAX_PLATFORMS=cpu and a few host
devices. Joins the distributed run, evaluates one seeded batch with `evaluate_sharded` in three
ways (whole batch on every process; uneven slices; everything on process 0 and an empty slice
on process 1) and saves what it got to OUT/p<i>.npz. The run is joined by the CLI, which reads
the COLLAPIPE_* variables, on its first command: one sweep into OUT/sweep<i>. Last, the tables of
the `distributions` sweep at a tiny size (pairs drawn on the devices of both processes, reduced
across them) into OUT/dist<i>.json.
Usage: python multiprocess_worker.py OUT
"""

import json
import os
import pathlib
import sys

from collapipe_jax import distributed

BATCH, SEED, SPLIT = 23, 5, 16  # process 0 gets rows [0, 16), process 1 rows [16, 23)
FIELDS = ("tau_round_s", "tau_pipe_s", "E_sch_j", "Gamma")
SWEEP = "latency-vs-microbatches"
# 300 pairs in chunks of 32: 10 chunks, padded to 12 over the 2 × 3 devices. Not the DSSRA family:
# its pairs go through the same sharded reduction, and solving them compiles the device engine in
# each of the three processes (tests/test_sweep_distributions.py checks that family's numbers)
DISTRIBUTIONS = dict(pairs=300, references=1, grid=3, seed=1, chunk=32, families=("uniform", "random"))


def main(out: pathlib.Path) -> None:
    from collapipe_jax.cli import main as cli_main

    me = int(os.environ[distributed.ENV_PROCESS_ID])
    # the CLI joins the distributed run from the COLLAPIPE_* variables, before JAX starts
    assert cli_main(["sweep", SWEEP, "--scale", "quick", "--out", str(out / f"sweep{me}")]) == 0
    import jax
    import numpy as np

    from collapipe_jax.scenario import scenario_preset
    from collapipe_jax.system.sharded import batch_mesh, evaluate_sharded, stack
    from test_system import _random_batch

    assert jax.distributed.is_initialized() and jax.process_index() == me
    assert jax.process_count() == 2 and jax.device_count() == 2 * jax.local_device_count()
    assert batch_mesh().is_multi_process
    states, decisions = _random_batch(scenario_preset("paper-bert"), BATCH, seed=SEED)
    states, decisions = stack(states), stack(decisions)
    rows = {"whole": slice(0, BATCH), "uneven": [slice(0, SPLIT), slice(SPLIT, BATCH)][me],
            "empty": [slice(0, BATCH), slice(BATCH, BATCH)][me]}
    saved = {}
    for mode, part in rows.items():
        cut = lambda x: x[part]  # noqa: B023, E731
        metrics = evaluate_sharded(jax.tree.map(cut, states), jax.tree.map(cut, decisions),
                                   process_local=mode != "whole", chunk=4)
        for name in FIELDS:
            saved[f"{mode}/{name}"] = np.asarray(getattr(metrics, name))
    np.savez(out / f"p{me}.npz", **saved)

    from collapipe_jax.sweep import distributions

    tables = distributions.compute_tables(distributions.DistributionConfig(**DISTRIBUTIONS))
    assert tables["throughput"][0]["processes"] == 2 and tables["throughput"][0]["devices"] == jax.device_count()
    del tables["throughput"]  # timings differ from run to run
    (out / f"dist{me}.json").write_text(json.dumps(tables))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
