"""Two local processes joined by `jax.distributed` (CPU, gloo collectives) give the results of
one process: `evaluate_sharded` with the whole batch, with uneven and with empty process-local
slices, one sweep run through the CLI with the COLLAPIPE_* variables, and the `distributions`
sweep's tables (pairs drawn and reduced on the devices of both processes)."""

import csv
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import multiprocess_worker as worker
from collapipe_jax import distributed
from collapipe_jax.errors import ValidationError
from collapipe_jax.scenario import scenario_preset
from collapipe_jax.system import evaluate
from collapipe_jax.system.sharded import stack
from test_system import _random_batch

HERE = pathlib.Path(__file__).resolve().parent
LOCAL_DEVICES = 3  # per process: 6 in all, so no batch below splits evenly by accident


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(out: pathlib.Path, timeout_s: float = 300) -> None:
    # not the session's compilation cache (tests/conftest.py): the two processes compile the same
    # programs at the same time, and each sweep keeps its own cache as a user's run does. Nor the
    # session's XLA flags: the two processes compile at XLA's default optimization level, this one
    # at the suite's (conftest.py), so the comparison also holds the levels to the same numbers
    drop = ("COLLAPIPE_", "XLA_", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={LOCAL_DEVICES}",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]),
               **{distributed.ENV_COORDINATOR: f"localhost:{_free_port()}", distributed.ENV_NUM_PROCESSES: "2"})
    logs = [out / f"log{i}.txt" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"), str(out)],
                                          env={**env, distributed.ENV_PROCESS_ID: str(i)},
                                          stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:
        # a process that fails leaves the other waiting for it: stop at the first failure
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} failed (exit {p.returncode}):\n{log.read_text()[-4000:]}"


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_multiprocess_evaluate_sharded_and_sweep_equal_one_process(tmp_path):
    _run_two_processes(tmp_path)

    states, decisions = _random_batch(scenario_preset("paper-bert"), worker.BATCH, seed=worker.SEED)
    single = jax.jit(jax.vmap(lambda s, d: evaluate(s, d)))(stack(states), stack(decisions))
    got = [np.load(tmp_path / f"p{i}.npz") for i in range(2)]
    for mode in ("whole", "uneven", "empty"):
        for name in worker.FIELDS:
            for i in range(2):  # every process holds the whole result, in the batch's order
                np.testing.assert_allclose(got[i][f"{mode}/{name}"], getattr(single, name), rtol=1e-5,
                                           err_msg=f"{mode} {name} process {i}")

    from collapipe_jax.sweep import SWEEPS, run_sweep

    run_sweep(SWEEPS[worker.SWEEP], "quick", tmp_path / "one")  # this process alone
    expected = _csv_rows(tmp_path / "one" / worker.SWEEP / f"{worker.SWEEP}.csv")
    for i in range(2):
        rows = _csv_rows(tmp_path / f"sweep{i}" / worker.SWEEP / f"{worker.SWEEP}.csv")
        assert [r.keys() for r in rows] == [r.keys() for r in expected]
        for r, e in zip(rows, expected):
            for key, value in e.items():
                try:
                    np.testing.assert_allclose(float(r[key]), float(value), rtol=1e-5, err_msg=key)
                except ValueError:  # a text column
                    assert r[key] == value

    from collapipe_jax.sweep import distributions

    single = distributions.compute_tables(distributions.DistributionConfig(**worker.DISTRIBUTIONS))
    for i in range(2):
        got = json.loads((tmp_path / f"dist{i}.json").read_text())
        assert set(got) == set(single) - {"throughput"}
        for name, rows in got.items():
            assert len(rows) == len(single[name]), name
            for r, e in zip(rows, single[name]):
                assert r.keys() == e.keys(), name
                for key, value in e.items():
                    if isinstance(value, float):  # sums of float32 in another order: a few ulp
                        np.testing.assert_allclose(r[key], value, rtol=1e-6, err_msg=f"{name} {key} process {i}")
                    else:  # counts, labels
                        assert r[key] == value, (name, key, i)


@pytest.mark.parametrize("env,field", [
    ({"COLLAPIPE_NUM_PROCESSES": "2"}, "COLLAPIPE_COORDINATOR"),
    ({"COLLAPIPE_COORDINATOR": "localhost", "COLLAPIPE_NUM_PROCESSES": "2", "COLLAPIPE_PROCESS_ID": "0"}, "COLLAPIPE_COORDINATOR"),
    ({"COLLAPIPE_COORDINATOR": "h:1", "COLLAPIPE_NUM_PROCESSES": "0", "COLLAPIPE_PROCESS_ID": "0"}, "COLLAPIPE_NUM_PROCESSES"),
    ({"COLLAPIPE_COORDINATOR": "h:1", "COLLAPIPE_NUM_PROCESSES": "2", "COLLAPIPE_PROCESS_ID": "2"}, "COLLAPIPE_PROCESS_ID"),
    ({"COLLAPIPE_COORDINATOR": "h:1", "COLLAPIPE_NUM_PROCESSES": "2"}, "COLLAPIPE_PROCESS_ID"),
])
def test_multiprocess_settings_are_validated(env, field):
    with pytest.raises(ValidationError, match=field):
        distributed.distributed_config(env)


def test_multiprocess_settings_absent_or_for_an_unsupported_command():
    assert distributed.distributed_config({}) is None
    assert distributed.initialize_from_env("train", {}) is False  # nothing set: single process
    ok = {"COLLAPIPE_COORDINATOR": "10.0.0.1:1234", "COLLAPIPE_NUM_PROCESSES": "4", "COLLAPIPE_PROCESS_ID": "3"}
    assert distributed.distributed_config(ok) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    with pytest.raises(ValidationError, match="only"):
        distributed.initialize_from_env("train", ok)  # checked before JAX is touched
