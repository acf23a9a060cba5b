"""Reliability (docs/design.md §8): hostile input ends in one `collapipe: error:` line and exit code 2,
or in a correct, finite result; nothing half-written; checkpoints verified, locked, recovered.

One test (or parametrized group) per class of hostile input, then a hypothesis fuzz of the command
line and of scenario JSON. Only one training run (the smallest settings, through the real
command line in a subprocess) is made; the checkpoint tests work on copies of its directory.
"""

import contextlib
import gzip
import io
import json
import math
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collapipe_jax import checkpoints as ckpt_mod
from collapipe_jax import train as train_mod
from collapipe_jax.checkpoints import LOCK_NAME, Checkpoints, state_digest
from collapipe_jax.cli import main, set_host_devices
from collapipe_jax.errors import NonFiniteError, ValidationError
from collapipe_jax.io import check_output_dir, first_non_finite
from collapipe_jax.options import FLOAT32_TINY, check_float, check_int, memory_budget
from collapipe_jax.scenario import Scenario, check_size, load_scenario, round_memory
from collapipe_jax.scheduling.policies import SCHEDULER_POLICIES
from collapipe_jax.scheduling.segments import SEGMENT_SOLVERS
from collapipe_jax.tasks import data
from collapipe_jax.tasks.batching import check_local_work
from collapipe_jax.tasks.data import resolve_data_dir
from collapipe_jax.train import TrainConfig, train
from train_helpers import LIBRARY_DEFAULTS

DATA = resolve_data_dir()
REPO = pathlib.Path(__file__).resolve().parents[1]
RELAXED = str(REPO / "sweeps" / "scenarios" / "paper-bert-relaxed.json")  # DSSRA feasible every round
TRAIN_ARGS = [*LIBRARY_DEFAULTS, "--task", "toutiao", "--model", "tiny", "--batch", "4", "--clusters", "2", "--micro-batches", "2",
              "--max-examples", "24", "--max-eval-examples", "8", "--seq-len", "16", "--no-pipeline", "--no-progress"]


def tiny_config(**changes) -> TrainConfig:
    """TRAIN_ARGS as a config (the fingerprint of the command-line run)."""
    base = dict(task="toutiao", model="tiny", batch=4, clusters=2, micro_batches=2, max_examples=24,
                max_eval_examples=8, seq_len=16, no_pipeline=True, progress=False, rounds=2)
    return TrainConfig(**{**base, **changes})


def run(*argv):
    """`main` in this process, stdout and stderr captured at the Python level: (code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code, out, err, *fragments):
    lines = err.strip().splitlines()
    assert code == 2 and out == "", (code, out[:300], err[-500:])
    assert len(lines) == 1 and lines[0].startswith("collapipe: error: "), err[-1000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_finite_json(code, out, err):
    assert code == 0, err[-1000:]
    result = json.loads(out)
    assert first_non_finite(result) is None
    return result


def scenario_file(tmp_path, content, name="s.json") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


# ----------------------------------------------------------------- 1. numbers outside machine range


@pytest.mark.parametrize("argv, field", [
    (["latency", "--delta", "99999999999999999999,2,2,2,2,2"], "delta"),
    (["latency", "--m", "99999999999999999999"], "m"),
    (["latency", "--channel", "4294967296,1,2"], "channel"),
    (["latency", "--order", "99999999999999999999;0,1,2,3,4,5;0,1,2,3,4,5"], "order"),
    (["latency", "--seed", "99999999999999999999"], "seed"),
    (["latency", "--seed", "-1"], "seed"),  # numpy's generators refuse negative seeds
    (["schedule", "--rounds", "99999999999999999999"], "rounds"),
    (["schedule", "--rounds", "2147483647", "--scenario", RELAXED], "rounds"),  # the records would not fit
    (["schedule", "--V", "1e39"], "V"),
    (["latency", "--p-n", "1e-50"], "p_n"),  # float32 underflow at the decision boundary
    (["sensitivity", "--temperature", "1e-300"], "temperature"),
    (["sensitivity", "--temperature", "1e39"], "temperature"),
])
def test_numbers_outside_machine_range(argv, field):
    assert_one_line_error(*run(*argv), f"invalid {field}")


def test_representability_checks_by_hand():
    check_float("x", 3.4e38)
    check_float("x", FLOAT32_TINY)
    check_float("x", 0.0)
    for bad in (3.5e38, -3.5e38, 1e-39, 10**400, float("nan"), True, "1"):
        with pytest.raises(ValidationError):
            check_float("x", bad)
    check_int("n", 2**31 - 1)
    for bad in (2**31, 0, 1.0, True):
        with pytest.raises(ValidationError):
            check_int("n", bad)
    with pytest.raises(ValidationError, match="seed"):
        TrainConfig(seed=2**32)
    with pytest.raises(ValidationError, match="rounds"):  # the step count t * E is an int32
        TrainConfig(rounds=2**30, local_steps=4)


@pytest.mark.parametrize("fields, field", [
    ({"N": 99999999999999999999}, "invalid N"),
    ({"b": 2**31}, "invalid b"),
    ({"B_U_hz": 1e40}, "invalid B_U_hz"),  # overflows float32 in the state
    ({"kappa": 1e-50}, "invalid kappa"),  # underflows
    ({"N0_w_per_hz": 10**400}, "invalid N0_w_per_hz"),  # a JSON integer too large for a float
])
def test_scenario_numbers_outside_machine_range(tmp_path, fields, field):
    path = scenario_file(tmp_path, {"preset": "paper-bert", **fields})
    assert_one_line_error(*run("latency", "--scenario", path), field)


# ----------------------------------------------------------------- 2. results that would be NaN/inf


def test_non_finite_result_is_an_error_naming_the_quantity(tmp_path):
    # every input representable, but τ^cmp = o/(ϕ f) overflows float32 at f = 1e-36 Hz
    slow = scenario_file(tmp_path, {"preset": "paper-bert", "f_hz": [1e-36, 1e-36]})
    line = assert_one_line_error(*run("latency", "--scenario", slow, "--json"), "invalid result", "tau_cmp_s[0][0]",
                                 "inf")
    assert "float32" in line
    # an uplink power that is representable but makes the rate underflow: τ^up = bits / 0
    assert_one_line_error(*run("latency", "--p-n", "1e-30"), "invalid result", "tau_up_s[0]")
    # schedule and train charge each round in run_host_round: the round is named
    relaxed_slow = scenario_file(tmp_path, {"preset": "paper-bert", "E_max_n_j": 1000.0, "f_hz": [1e-36, 1e-36]},
                                 "r.json")
    assert_one_line_error(*run("schedule", "--scenario", relaxed_slow, "--policy", "default", "--rounds", "1"),
                          "invalid result", "round 0", "tau_cmp_s")


def test_first_non_finite_names_the_path():
    assert first_non_finite({"a": [1.0, {"b": [0.0, float("inf")]}]}) == ("a[1].b[1]", float("inf"))
    assert first_non_finite({"a": [1, "x", None, 2.5]}) is None
    where, value = first_non_finite([float("nan")])
    assert where == "[0]" and math.isnan(value)
    assert "NaN" in str(NonFiniteError("x", float("nan"))) and "overflow" in str(NonFiniteError("x", float("inf")))


# ----------------------------------------------------------------- 3. scenario holes


@pytest.mark.parametrize("content, field", [
    ({"preset": "paper-bert", "f_hz": [None, 1e8]}, "f_hz"),
    ({"preset": "paper-bert", "f_hz": ["1e8", "8e8"]}, "f_hz"),
    ({"preset": "paper-bert", "f_hz": [1e8]}, "f_hz"),
    ({"preset": "paper-bert", "f_hz": True}, "f_hz"),
    ({"preset": "paper-bert", "f_hz": {"low": 1}}, "f_hz"),
    ('{"preset": "paper-bert", "f_hz": [NaN, 1e8]}', "f_hz"),  # Python's json reads NaN
    ({"preset": "paper-bert", "model": "nonexistent"}, "model"),
    ({"preset": "paper-bert", "model": ["tiny"]}, "model"),
    ({"preset": "paper-bert", "fading": []}, "fading"),
    ({"preset": "paper-bert", "N": 3.0}, "N"),
    ({"preset": "paper-bert", "K": True}, "K"),
    ({"preset": "paper-bert", "name": 5}, "name"),
    ({"preset": "paper-bert", "fading": None}, "fading"),
    ({"preset": 5}, "preset"),
    ({"preset": ""}, "preset"),
    ([1, 2], "scenario"),
    (b'{"preset": "paper-bert", "name": "\xff\xfe"}', "scenario"),  # not UTF-8
    ("[" * 100000 + "]" * 100000, "scenario"),  # nested too deeply for the parser
    ("", "scenario"),
])
def test_scenario_holes(tmp_path, content, field):
    assert_one_line_error(*run("latency", "--scenario", scenario_file(tmp_path, content)), f"invalid {field}")


def test_scenario_paths_and_presets(tmp_path):
    assert_one_line_error(*run("latency", "--preset", ""), "invalid preset")
    assert_one_line_error(*run("latency", "--scenario", str(tmp_path)), "invalid scenario")  # a directory
    assert_one_line_error(*run("latency", "--scenario", str(tmp_path / "missing.json")), "invalid scenario")
    good = scenario_file(tmp_path, {"preset": "paper-bert"})
    assert_one_line_error(*run("latency", "--preset", "nope", "--scenario", good), "invalid preset")  # not ignored
    with pytest.raises(ValidationError, match="preset"):
        load_scenario("")
    with pytest.raises(ValidationError, match="preset"):
        TrainConfig(preset="")  # train would otherwise fall back to the task's scenario
    assert load_scenario(None).name == "paper-bert"


# ----------------------------------------------------------------- 4. size guards


def test_size_guard_from_memory(tmp_path):
    budget = memory_budget()
    # the largest N the channel-matching term allows, K = J = L = 1: admitted one below, refused one above
    n = int(math.isqrt(budget // 32))
    while sum(round_memory(n + 1, 1, 1, 1).values()) <= budget:
        n += 1
    while sum(round_memory(n, 1, 1, 1).values()) > budget:
        n -= 1
    check_size(n, 1, 1, 1)
    with pytest.raises(ValidationError, match=r"limit of .* GB"):
        check_size(n + 1, 1, 1, 1)
    assert round_memory(3, 6, 4, 12)["segment DP"] == 8 * (2 * 6 * 13) * 13 * 12 * 7 * 2  # the DP's array
    big = scenario_file(tmp_path, {"preset": "paper-bert", "N": 1000000})
    assert_one_line_error(*run("latency", "--scenario", big), "invalid scenario size", "limit")
    deep = scenario_file(tmp_path, {"preset": "paper-bert", "K": 64, "L": 400}, "k.json")  # the segment DP
    assert_one_line_error(*run("latency", "--scenario", deep), "segment DP")


def test_host_devices_guard():
    with pytest.raises(ValidationError, match=r"host-devices.*\[1, \d+\]"):
        set_host_devices(["latency", "--host-devices", "100000"])
    with pytest.raises(ValidationError, match="host-devices"):
        set_host_devices(["latency", "--host-devices=-3"])


def test_local_work_guard():
    rows = {"tokens": np.zeros((10, 16), np.int32), "label": np.zeros(10, np.int32)}
    check_local_work(np.array([3, 3]), 8, rows)
    per_sample = 8 + 16 * 4 + 4
    steps = memory_budget() // (2 * 8 * per_sample) + 1
    with pytest.raises(ValidationError, match="local-steps"):
        check_local_work(np.array([steps, 1]), 8, rows)


# ----------------------------------------------------------------- 5. data files


def _gzip_bytes(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"))


LINES = "".join(f"line {i}\n" for i in range(5000))


@pytest.mark.parametrize("name, content, says", [
    ("t.txt", b"", "is empty"),
    ("t.txt", b"\n \n", "is empty"),
    ("t.gz", b"hello\n", "not a gzip file"),
    ("t.gz", _gzip_bytes(LINES)[: len(_gzip_bytes(LINES)) // 2], "truncated gzip"),
    ("t.txt", random.Random(0).randbytes(4000), "not UTF-8"),
    ("t.gz", gzip.compress(b"\xff\xfe\xfd"), "not UTF-8"),
    ("t.gz", b"", "is empty"),
], ids=["empty", "blank", "not-gzip", "truncated-gzip", "random-bytes", "gzip-not-utf8", "empty-gz"])
def test_broken_data_file_is_one_error_naming_it(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValidationError, match=says) as err:
        data.read_lines(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_broken_corpora_through_the_loaders(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DATA / "chinese_ner", root / "chinese_ner")
    (root / "chinese_ner" / "example_test.txt").write_text("中 B-XXX\n国 I-XXX\n\n人 O\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="example_test.txt.*tag in"):
        data.load_ner(root, "train")
    (root / "toutiao").mkdir()
    (root / "toutiao" / "toutiao_subset.txt").write_text("标题_!_²\n", encoding="utf-8")  # isdigit, not int()
    with pytest.raises(ValidationError, match="line 1"):
        data.load_toutiao(root, "train")
    (root / "toutiao" / "toutiao_subset.txt").unlink()
    (root / "toutiao" / "toutiao_subset.txt").mkdir()  # a directory where the file should be
    with pytest.raises(ValidationError, match="toutiao_subset.txt"):
        data.load_toutiao(root, "train")


def test_train_data_errors_name_the_file_and_the_field(tmp_path):
    root = tmp_path / "data"
    shutil.copytree(DATA, root)
    (root / "toutiao" / "toutiao_subset.txt").write_bytes(b"")
    code, out, err = run("train", *TRAIN_ARGS, "--data-dir", root)
    assert_one_line_error(code, out, err, "toutiao_subset.txt", "is empty")
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--max-eval-examples", "0"), "invalid max-eval-examples")


# ----------------------------------------------------------------- 6. output places (before any work)


def _no_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("work started before the output places were checked")

    monkeypatch.setattr(train_mod, "build_setup", fail)


def test_output_places_are_checked_first(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for flag, place, says in [("--checkpoint-dir", a_file, "is a file"),
                              ("--checkpoint-dir", a_file / "sub", "is a file"),
                              ("--log-dir", a_file, "is a file"),
                              ("--checkpoint-dir", "/proc/collapipe-test/ck", "writable directory")]:
        assert_one_line_error(*run("train", *TRAIN_ARGS, flag, place), f"invalid {flag[2:]}", says)
    assert a_file.read_text() == "x"
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", a_file), "invalid out")
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", a_file / "x"), "invalid out")


def test_check_output_dir(tmp_path):
    made = check_output_dir("out", tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the write test leaves nothing
    if os.geteuid() != 0:  # root writes anywhere; the /proc case above covers it
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ValidationError, match="writable"):
            check_output_dir("out", ro)


# ----------------------------------------------------------------- 7. stdout clean, every subcommand


def test_every_subcommand_json_parses_under_every_solver_and_policy(tmp_path, capfd):
    """capfd: the descriptors themselves, where C libraries (HiGHS's banner) write."""

    def json_of(*argv):
        code = main([str(a) for a in argv])
        out, err = capfd.readouterr()
        assert code == 0, err[-2000:]
        result = json.loads(out)  # the whole of stdout is one JSON object
        assert first_non_finite(result) is None
        return result

    json_of("latency", "--json")
    json_of("sensitivity", "--json")
    for solver in SEGMENT_SOLVERS:
        for policy in SCHEDULER_POLICIES:
            result = json_of("schedule", "--scenario", RELAXED, "--rounds", "2", "--solver", solver, "--policy",
                             policy, "--json")
            assert result["solver"] == solver and result["policy"] == policy and len(result["rounds"]) == 2
    sweep = json_of("sweep", "latency-vs-power", "--out", tmp_path / "sweep", "--json")
    assert "latency-vs-power" in sweep["sweeps"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """The one training run: the smallest settings, 2 rounds, checkpoints, through the command
    line in a fresh process (its stdout must be one JSON object)."""
    tmp = tmp_path_factory.mktemp("base")
    proc = subprocess.run([sys.executable, "-m", "collapipe_jax.cli", "train", *TRAIN_ARGS, "--rounds", "2", "--json",
                           "--checkpoint-dir", str(tmp / "ck")], capture_output=True, text=True,
                          env={**os.environ, "COLLAPIPE_CACHE": str(tmp / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert first_non_finite(result) is None and [r["round"] for r in result["rounds"]] == [0, 1]
    return tmp / "ck", result


def copy_run(base_run, tmp_path) -> pathlib.Path:
    target = tmp_path / "ck"
    shutil.copytree(base_run[0], target)
    return target


def test_train_json_is_clean(base_run):
    assert set(base_run[1]) >= {"rounds", "final_metrics", "total_latency_s"}


# ----------------------------------------------------------------- 8. checkpoints


@pytest.mark.parametrize("change", [{"seed": 1}, {"seq_len": 12}, {"model": "small"}, {"max_examples": 20},
                                    {"task": "ner"}])
def test_resume_with_other_settings_is_refused_before_any_array_is_read(base_run, tmp_path, monkeypatch, change):
    def never(*args, **kwargs):
        raise AssertionError("the state was read before the settings were compared")

    monkeypatch.setattr(Checkpoints, "_restore_state", never)
    directory = copy_run(base_run, tmp_path)
    name = next(iter(change))
    with pytest.raises(ValidationError, match=f"other settings.*{name}") as err:
        train(tiny_config(checkpoint_dir=str(directory), resume=True, rounds=3, **change))
    assert "\n" not in str(err.value)


def _damage(step_dir: pathlib.Path, how: str):
    biggest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    if how == "truncate":
        biggest.write_bytes(bytes(raw[: len(raw) // 3]))
    else:  # 64 bytes overwritten in the middle: the file keeps its size and may still decode
        mid = len(raw) // 2
        raw[mid:mid + 64] = bytes(b ^ 0x5A for b in raw[mid:mid + 64])
        biggest.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["overwrite", "truncate"])
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(base_run, tmp_path, capsys, how):
    directory = copy_run(base_run, tmp_path)
    _damage(directory / "1", how)
    resumed = train(tiny_config(checkpoint_dir=str(directory), resume=True, rounds=2))
    err = capsys.readouterr().err.strip().splitlines()
    notes = [line for line in err if line.startswith("collapipe: warning:")]
    assert len(notes) == 1 and "step 1 is damaged" in notes[0] and "resuming from step 0" in notes[0]
    # round 1 recomputed from step 0's state: the same as the uninterrupted run
    assert [r["loss"] for r in resumed["rounds"]] == [r["loss"] for r in base_run[1]["rounds"]]
    assert resumed["final_metrics"] == base_run[1]["final_metrics"]
    assert any(p.name.startswith("damaged-1-") for p in directory.iterdir())
    assert sorted(Checkpoints(str(directory)).steps()) == [0, 1]  # step 1 written anew, intact
    Checkpoints(str(directory)).restore_raw(1)


def test_no_intact_checkpoint_is_one_error(base_run, tmp_path):
    directory = copy_run(base_run, tmp_path)
    for step in ("0", "1"):
        _damage(directory / step, "overwrite")
    with pytest.raises(ValidationError, match="no intact checkpoint.*step 1.*step 0"):
        train(tiny_config(checkpoint_dir=str(directory), resume=True, rounds=3))


def test_state_digest_detects_one_changed_byte_and_ignores_container_types():
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": (np.zeros(2), np.ones(1, np.int32))}
    same = {"b": [np.zeros(2), np.ones(1, np.int32)], "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert state_digest(state) == state_digest(same)
    changed = {"a": state["a"].copy(), "b": state["b"]}
    changed["a"].reshape(-1).view(np.uint8)[5] ^= 1
    assert state_digest(changed) != state_digest(state)
    assert state_digest({"a": state["a"].astype(np.float64), "b": state["b"]}) != state_digest(state)


def test_restored_arrays_are_placed_as_their_targets(tmp_path):
    """Fresh (uncommitted) targets get uncommitted arrays back, as does a raw restore; a target
    sharded over two devices keeps its sharding."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from devices import host_devices

    sharded = NamedSharding(Mesh(np.array(host_devices(2)), ("x",)), PartitionSpec("x"))
    state = {"fresh": jnp.arange(4.0), "sharded": jax.device_put(jnp.arange(4.0), sharded)}
    assert not state["fresh"].committed and state["sharded"].committed
    store = Checkpoints(str(tmp_path / "c"))
    store.save(0, state, {})
    for restored in (store.restore(0, state)[0], store.restore_raw(0)[0]):
        assert not restored["fresh"].committed
        np.testing.assert_array_equal(np.asarray(restored["sharded"]), np.arange(4.0))
    assert store.restore(0, state)[0]["sharded"].sharding == sharded


def test_stale_temporaries_are_removed_and_a_second_writer_is_refused(base_run, tmp_path):
    directory = copy_run(base_run, tmp_path)
    (directory / "2.orbax-checkpoint-tmp-1234").mkdir()
    (directory / "2.orbax-checkpoint-tmp-1234" / "junk").write_text("x")
    # another process's lock: flock conflicts between two open file descriptions, even in one process
    import fcntl

    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ValidationError, match="in use by another run"):
            Checkpoints(str(directory), exclusive=True)
        code, out, err = run("train", *TRAIN_ARGS, "--rounds", "3", "--resume", "--checkpoint-dir", directory)
        assert_one_line_error(code, out, err, "invalid checkpoint-dir", "in use by another run")
    finally:
        os.close(fd)
    ck = Checkpoints(str(directory), exclusive=True)
    assert not any(ckpt_mod.TMP_MARK in p.name for p in directory.iterdir())
    assert ck.steps() == [1, 0]
    ck.close()


def test_resume_with_nothing_to_resume(tmp_path, monkeypatch):
    _no_work(monkeypatch)
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--resume", "--checkpoint-dir", tmp_path / "missing"),
                          "invalid resume", "does not exist")
    assert not (tmp_path / "missing").exists()  # nothing created
    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--resume", "--checkpoint-dir", tmp_path / "empty"),
                          "invalid resume", "no checkpoint to resume")


# ----------------------------------------------------------------- 9. sweep


def test_sweep_refuses_preset_and_scenario_and_recomputes_a_damaged_summary(tmp_path):
    assert_one_line_error(*run("sweep", "latency-vs-power", "--preset", "nope", "--out", tmp_path), "invalid preset")
    assert_one_line_error(*run("sweep", "latency-vs-power", "--scenario", "missing.json", "--out", tmp_path),
                          "invalid scenario")
    first = assert_finite_json(*run("sweep", "latency-vs-power", "--out", tmp_path, "--json"))
    summary = tmp_path / "latency-vs-power" / "summary.json"
    summary.write_text(summary.read_text()[: len(summary.read_text()) // 2])
    again = assert_finite_json(*run("sweep", "latency-vs-power", "--out", tmp_path, "--json"))
    assert json.loads(summary.read_text())["sweep"] == "latency-vs-power"
    drop = ("seconds",)
    assert ({k: v for k, v in again["sweeps"]["latency-vs-power"].items() if k not in drop}
            == {k: v for k, v in first["sweeps"]["latency-vs-power"].items() if k not in drop})


# ----------------------------------------------------------------- 10. fuzz


def _outcome_is_clean(argv):
    code, out, err = run(*argv)
    if code == 0:
        result = json.loads(out)
        assert first_non_finite(result) is None, (argv, first_non_finite(result))
    else:
        assert_one_line_error(code, out, err)
    return code


NUMBER_TEXT = st.one_of(
    st.integers(-3, 14).map(str),
    st.sampled_from(["0", "-1", "99999999999999999999", "2147483648", "1e-50", "1e-30", "1e40", "nan", "inf", "-inf",
                     "0.5", "1.5", "", " ", "x", "0x10", "1_0", "٣", "²"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
LIST_TEXT = st.lists(NUMBER_TEXT, min_size=1, max_size=7).map(",".join)
ROWS_TEXT = st.lists(LIST_TEXT, min_size=1, max_size=4).map(";".join)
DECISION_OPTIONS = {
    "--seed": NUMBER_TEXT, "--delta": ROWS_TEXT, "--order": ROWS_TEXT, "--m": LIST_TEXT, "--channel": LIST_TEXT,
    "--p-n": LIST_TEXT, "--variant": st.sampled_from(["paper", "consistent", "", "PAPER"]),
    "--preset": st.sampled_from(["paper-bert", "paper-transformer", "", "nope"]),
}
SCHEDULE_OPTIONS = {
    "--seed": NUMBER_TEXT, "--rounds": st.sampled_from(["1", "2", "0", "-1", "99999999999999999999", "x", "1.5"]),
    "--V": NUMBER_TEXT, "--policy": st.sampled_from([*SCHEDULER_POLICIES, "", "nope"]),
    "--variant": st.sampled_from(["paper", "consistent", "x"]), "--m-rule": st.sampled_from(["stationary", "x"]),
}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(["latency", "sensitivity", "schedule"]))
    options = SCHEDULE_OPTIONS if command == "schedule" else DECISION_OPTIONS
    argv = [command, "--json"]
    for flag in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4)):
        argv += [f"{flag}={draw(options[flag])}"]  # `=`: a value may start with "-"
    if command == "sensitivity" and draw(st.booleans()):
        argv.append(f"--temperature={draw(NUMBER_TEXT)}")
    if command == "schedule" and not any(a.startswith("--rounds") for a in argv):
        argv.append("--rounds=1")  # keep it cheap
    if command == "schedule":
        argv.append(f"--scenario={RELAXED}")
    return argv


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_fuzz_command_line(argv):
    _outcome_is_clean(argv)


JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, 2, 3, -1, 10**20, 1e-50, 1e40, 0.5, 2.5e8]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
    st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 10**9), st.none(),
                       st.text(max_size=3)), max_size=3),
)
SIZE_VALUE = st.one_of(st.integers(1, 6), st.sampled_from([0, -1, 2**31, 10**6, 3.0, True, None, "3"]))
SCENARIO_FIELDS = ["f_hz", "phi_flops_per_cycle", "p_k_w", "h_n", "I_i_w", "B_U_hz", "h_dd", "B_dd_hz", "N0_w_per_hz",
                   "P_max_n_w", "E_max_n_j", "kappa", "gamma0_bytes", "fading", "model", "name", "V", "bogus"]


@st.composite
def scenarios(draw):
    content = {"preset": draw(st.sampled_from(["paper-bert", "paper-transformer", "nope", None, 3]))}
    if content["preset"] is None:
        del content["preset"]
    for key in draw(st.lists(st.sampled_from(["N", "K", "J", "L", "b"]), unique=True, max_size=3)):
        content[key] = draw(SIZE_VALUE)
    for key in draw(st.lists(st.sampled_from(SCENARIO_FIELDS), unique=True, max_size=3)):
        content[key] = draw(JSON_VALUE)
    return content


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.sampled_from(["latency", "sensitivity"]))
def test_fuzz_scenario_json(tmp_path_factory, content, command):
    path = tmp_path_factory.mktemp("fuzz") / "s.json"
    path.write_text(json.dumps(content))
    _outcome_is_clean([command, "--json", "--mean-state", "--scenario", str(path)])


def test_fuzz_scenario_accepts_good_files(tmp_path):
    """The fuzz's other outcome exists: a valid modified scenario gives a finite result."""
    path = scenario_file(tmp_path, {"preset": "paper-transformer", "N": 2, "K": 3, "J": 1, "f_hz": 3e8})
    result = assert_finite_json(*run("latency", "--json", "--scenario", path))
    assert result["inputs"]["N"] == 2 and result["inputs"]["f_hz"] == [[3e8] * 3] * 2
    assert Scenario.from_json(path).f_hz == (3e8, 3e8)


# ----------------------------------------------------------------- 11. hostile inputs found by a later probe


def _edit_meta(step_dir: pathlib.Path, change) -> None:
    path = step_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _truncate_largest_state_file(step_dir: pathlib.Path) -> None:
    biggest = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


@pytest.mark.parametrize("edit, says", [
    (lambda d: _edit_meta(d, lambda m: m["records"][0].update(loss=m["records"][0]["loss"] + 1.0)), "meta/metadata"),
    (lambda d: _edit_meta(d, lambda m: m.update(next_round=7)), "meta/metadata"),
    (lambda d: (d / "state" / "_METADATA").unlink(), "state/_METADATA is missing"),
    (_truncate_largest_state_file, "changed or truncated"),
    (lambda d: (d / ckpt_mod.FILES_NAME).unlink(), "file list"),
], ids=["records-edited", "next-round-edited", "metadata-deleted", "state-truncated", "file-list-deleted"])
def test_edited_or_incomplete_step_is_set_aside(base_run, tmp_path, capsys, edit, says):
    """Edits Orbax would load without complaint (the result might even be right) are detected by
    the step's file list: the step is set aside with one warning, the run resumes from step 0."""
    directory = copy_run(base_run, tmp_path)
    edit(directory / "1")
    resumed = train(tiny_config(checkpoint_dir=str(directory), resume=True, rounds=2))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("collapipe: warning:")]
    assert len(notes) == 1 and "step 1 is damaged" in notes[0] and says in notes[0], notes
    assert [r["round"] for r in resumed["rounds"]] == [0, 1]  # round 1 rerun, not the edited records
    assert [r["loss"] for r in resumed["rounds"]] == [r["loss"] for r in base_run[1]["rounds"]]
    rows = (directory / "rounds.csv").read_text().splitlines()
    assert len(rows) == 3 and any(p.name.startswith("damaged-1-") for p in directory.iterdir())


def test_disk_full_during_a_checkpoint_save(tmp_path, monkeypatch):
    """Orbax fails inside its writer (tensorstore's error around ENOSPC): one line naming the
    cause, the step's temporary and the lock file gone, the directory free for the next run."""
    import orbax.checkpoint as ocp

    def full(self, step, *args, **kwargs):
        (self.directory / f"{step}.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
        raise ValueError(f"RESOURCE_EXHAUSTED: Error writing in OCDBT database: Failed writing: \"{self.directory}/x\": "
                         "Failed to write 439602 bytes to file 11: No space left on device [os_error_code='28']")

    directory = tmp_path / "ck"
    ck = Checkpoints(str(directory), exclusive=True)
    state = {"w": np.arange(4.0, dtype=np.float32)}
    ck.save(0, state, {"next_round": 1})  # one good step first: a failure keeps it
    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(ValidationError, match="round 1's checkpoint failed \\(No space left on device\\)") as err:
        ck.save(1, state, {"next_round": 2})
    assert "\n" not in str(err.value) and "earlier steps are kept" in str(err.value)
    assert sorted(p.name for p in directory.iterdir()) == sorted(["0", LOCK_NAME])  # no temporary, step 0 kept
    Checkpoints(str(directory), exclusive=True).close()  # the lock was released
    monkeypatch.undo()
    empty = Checkpoints(str(tmp_path / "empty"), exclusive=True)
    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(ValidationError, match="No space left"):
        empty.save(0, state, {"next_round": 1})
    assert list((tmp_path / "empty").iterdir()) == []  # nothing left, the lock file included


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounts a small tmpfs (root)")
def test_disk_full_during_a_checkpoint_save_on_a_real_tmpfs(tmp_path):
    """The same on a 300 kB tmpfs that the first save fills (a real ENOSPC from the kernel)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = subprocess.run([sys.executable, "-m", "collapipe_jax.cli", "train", *TRAIN_ARGS, "--rounds", "1",
                               "--checkpoint-dir", str(mnt / "ck")], capture_output=True, text=True)
        assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "No space left on device")
        assert list((mnt / "ck").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)])


def test_stdout_full_or_closed_is_one_error():
    """`> /dev/full` and `>&-`: never exit 0 with nothing written, never a traceback."""
    command = [sys.executable, "-m", "collapipe_jax.cli", "latency", "--json", "--mean-state"]
    procs = []
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            procs.append(("No space left", subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True)))
    shell = " ".join(f"'{a}'" for a in command) + " >&-"
    procs.append(("stdout is closed", subprocess.run(["sh", "-c", shell], stderr=subprocess.PIPE, text=True)))
    for says, proc in procs:
        assert_one_line_error(proc.returncode, "", proc.stderr, says)


def _recipe(tmp_path, text) -> str:
    path = tmp_path / "recipe.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    return str(path)


@pytest.mark.parametrize("recipe, field", [
    ({"checkpoint_dir": 5}, "checkpoint_dir (recipe"),
    ({"scenario": 5}, "scenario (recipe"),
    ({"data_dir": 5}, "data_dir (recipe"),
    ({"init_from": 5}, "init_from (recipe"),
    ({"cache_dir": 5}, "cache_dir (recipe"),
    ({"framework": None}, "framework (recipe"),
    ({"optimizer": None}, "optimizer (recipe"),
    ({"log_dir": ["runs"]}, "log_dir (recipe"),
    ({"non_iid": "false"}, "non_iid (recipe"),
    ({"no_pipeline": "yes"}, "no_pipeline (recipe"),
    ({"seed": 1.5}, "seed (recipe"),
    ({"seed": -1}, "invalid seed"),
    ({"local_epochs": 1e30}, "invalid local-epochs"),
    ('{"rounds": 1' + "0" * 5000 + "}", "invalid config"),  # past Python's int conversion limit
    ('{"a": ' * 5000 + "1" + "}" * 5000, "invalid config"),  # RecursionError in json
], ids=lambda v: str(v)[:24])
def test_recipe_values_are_checked_as_flags_are(tmp_path, recipe, field):
    line = assert_one_line_error(*run("train", *TRAIN_ARGS, "--config", _recipe(tmp_path, recipe)), field)
    assert len(line) < 600


def test_a_recipe_seed_stands_unless_seed_is_given(tmp_path, monkeypatch):
    seen = []

    def record(cfg):
        seen.append(cfg.seed)
        raise ValidationError("stub", "stops the run once its config is known")

    monkeypatch.setattr("collapipe_jax.train.train", record)  # the command imports it on use
    path = _recipe(tmp_path, {"seed": 3})
    for argv, seed in [([], 3), (["--seed", "5"], 5)]:
        run("train", *TRAIN_ARGS, "--config", path, *argv)
        assert seen.pop() == seed


@pytest.mark.parametrize("argv, field", [
    (["--local-epochs", "1e19"], "invalid local-epochs"),
    (["--local-epochs", "1e30"], "invalid local-epochs"),
    (["--seq-len", "2147483647"], "invalid seq-len"),
    (["--task", "multi30k", "--vocab-size", "4"], "invalid vocab-size"),  # the 4 specials leave no token
    (["--task", "multi30k", "--vocab-size", "1" + "0" * 12], "invalid vocab-size"),
    (["--task", "ner", "--vocab-size", "2000"], "invalid vocab-size"),  # characters: no BPE to size
    (["--tunable", "lora:" + "9" * 5000], "invalid tunable"),
])
def test_numbers_that_overflowed_inside_train(argv, field):
    line = assert_one_line_error(*run("train", *TRAIN_ARGS, *argv), field)
    assert "local_steps" not in line and len(line) < 600


def test_training_size_guards_by_hand():
    budget = memory_budget()
    heads = 2
    longest = math.isqrt(budget // (4 * train_mod.EVAL_BATCH * heads))  # 4 B x 256 x heads x L^2 <= budget
    train_mod.check_attention_memory(longest, 8, heads)
    with pytest.raises(ValidationError, match="seq-len"):
        train_mod.check_attention_memory(longest + 1, 8, heads)
    cfg = tiny_config(local_epochs=2.5, batch=4, rounds=3)
    assert train_mod.local_steps_of(cfg, np.array([12, 13])).tolist() == [8, 9]  # ceil(30/4), ceil(32.5/4)
    with pytest.raises(ValidationError, match="local-epochs"):  # 3 rounds x ceil(X 13 / 4) steps > int32
        train_mod.local_steps_of(tiny_config(local_epochs=2 * 2**31 / 13, batch=4, rounds=3), np.array([12, 13]))


def test_divergence_error_starts_on_its_own_line():
    """With the progress bar on, the bar is cleared before the error line (not `…it/s]collapipe:`)."""
    args = [a for a in TRAIN_ARGS if a != "--no-progress"]
    code, out, err = run("train", *args, "--lr", "1e30", "--rounds", "2")
    assert code == 2 and out == ""
    last = err.rstrip("\n").split("\n")[-1].split("\r")
    assert last[-1].startswith("collapipe: error: invalid loss: non-finite"), repr(err[-300:])
    assert len(last) == 1 or last[-2].strip() == "", repr(err[-300:])  # the bar's line was cleared first


@pytest.fixture(scope="module")
def power_sweep(tmp_path_factory):
    """One finished `latency-vs-power` sweep (the quickest), copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("power")
    assert_finite_json(*run("sweep", "latency-vs-power", "--out", out, "--json"))
    return out


def _folder_bytes(folder: pathlib.Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("tables", ["{}", "[]", '"x"', "null", '{"scale": "quick", "tables": {}}',
                                    '{"scale": "quick", "tables": {"latency-vs-power": [{"preset": "paper-bert"}]}}',
                                    '{"scale": "quick", "tables": {"segments": [{"S": 1, "m": 2}]}}',
                                    "NaN"], ids=["object", "list", "string", "null", "no-tables", "missing-keys",
                                                 "another-sweep", "nan-value"])
def test_replot_of_a_malformed_tables_json(power_sweep, tmp_path, tables):
    out = tmp_path / "out"
    shutil.copytree(power_sweep, out)
    folder = out / "latency-vs-power"
    if tables == "NaN":
        saved = json.loads((folder / "tables.json").read_text())
        saved["tables"]["latency-vs-power"][0]["tau_up_s"] = float("nan")
        tables = json.dumps(saved)  # Python writes NaN, and reads it back
    (folder / "tables.json").write_text(tables)
    before = _folder_bytes(folder)
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", out, "--replot"), "invalid replot", "tables.json")
    assert _folder_bytes(folder) == before  # nothing replaced, nothing half-written
    assert not any(p.name.startswith(".replot-") for p in folder.iterdir())


def test_summary_of_the_wrong_types_is_recomputed_or_left_out(power_sweep, tmp_path):
    from collapipe_jax.sweep.base import summary_problem

    good = json.loads((power_sweep / "latency-vs-power" / "summary.json").read_text())
    assert summary_problem(good, "latency-vs-power") is None
    for change in ({"claims": 3}, {"seconds": "x"}, {"findings": 3}, {"sweep": "policies"}, {"claims": [{"id": 1}]},
                   {"seconds": float("nan")}):
        assert summary_problem({**good, **change}, "latency-vs-power") is not None, change
    out = tmp_path / "out"
    shutil.copytree(power_sweep, out)
    (out / "latency-vs-power" / "summary.json").write_text(json.dumps({**good, "claims": 3}))
    (out / "policies").mkdir()  # another sweep's summary, valid JSON of the wrong types: left out of the report
    (out / "policies" / "summary.json").write_text(json.dumps({"sweep": "policies", "scale": "quick", "seconds": "x"}))
    code, stdout, err = run("sweep", "latency-vs-power", "--out", out, "--json")
    result = assert_finite_json(code, stdout, err)
    warnings = [line for line in err.splitlines() if line.startswith("collapipe: warning:")]
    assert len(warnings) == 2 and "recomputing" in warnings[0] and "policies" in warnings[1], warnings
    assert list(result["sweeps"]) == ["latency-vs-power"]
    assert summary_problem(json.loads((out / "latency-vs-power" / "summary.json").read_text()), "latency-vs-power") is None


@pytest.mark.parametrize("command", ["sweep", "train"])
@pytest.mark.parametrize("env, field", [
    ({"COLLAPIPE_NUM_PROCESSES": "²"}, "COLLAPIPE_NUM_PROCESSES"),
    ({"COLLAPIPE_NUM_PROCESSES": "２"}, "COLLAPIPE_NUM_PROCESSES"),
    ({"COLLAPIPE_NUM_PROCESSES": "9" * 5000}, "COLLAPIPE_NUM_PROCESSES"),
    ({"COLLAPIPE_COORDINATOR": "localhost:１２３４"}, "COLLAPIPE_COORDINATOR"),
    ({"COLLAPIPE_COORDINATOR": "localhost:" + "1" * 5000}, "COLLAPIPE_COORDINATOR"),
    ({"COLLAPIPE_PROCESS_ID": "١"}, "COLLAPIPE_PROCESS_ID"),
], ids=["superscript", "fullwidth", "5000-digits", "port-fullwidth", "port-5000-digits", "arabic-indic-id"])
def test_multihost_variables_are_one_error(monkeypatch, command, env, field):
    """Refused before JAX starts; train refuses the variables before reading them."""
    base = {"COLLAPIPE_COORDINATOR": "localhost:1234", "COLLAPIPE_NUM_PROCESSES": "2", "COLLAPIPE_PROCESS_ID": "1"}
    for name, value in {**base, **env}.items():
        monkeypatch.setenv(name, value)
    line = assert_one_line_error(*run(command, "--out" if command == "sweep" else "--no-progress",
                                      *(["/nonexistent-out"] if command == "sweep" else [])))
    assert (field if command == "sweep" else "multi-host runs support only") in line and len(line) < 400


def test_unreachable_coordinator_is_one_error_naming_it(monkeypatch):
    from collapipe_jax import distributed

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    for name, value in {"COLLAPIPE_COORDINATOR": f"localhost:{port}", "COLLAPIPE_NUM_PROCESSES": "2",
                        "COLLAPIPE_PROCESS_ID": "1", "COLLAPIPE_INIT_TIMEOUT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert_one_line_error(*run("sweep", "latency-vs-power"), "invalid COLLAPIPE_COORDINATOR",
                          f"no coordinator reached at localhost:{port} within 1 s")
    monkeypatch.setenv("COLLAPIPE_COORDINATOR", "nosuch.invalid:1234")
    assert_one_line_error(*run("sweep", "latency-vs-power"), "'nosuch.invalid' does not resolve")
    monkeypatch.setenv("COLLAPIPE_INIT_TIMEOUT", "0")
    assert_one_line_error(*run("sweep", "latency-vs-power"), "invalid COLLAPIPE_INIT_TIMEOUT")
    with socket.socket() as listener:  # the other outcome: a process 0 that answers its go is joined at once
        listener.bind(("localhost", 0))
        listener.listen()
        address = f"localhost:{listener.getsockname()[1]}"
        with _answering(listener, distributed.GO + "\n") as heard:
            started = time.monotonic()
            distributed.join_coordinator(address, 1, 2, started + 30, 30, "process 1 of 2")
        assert time.monotonic() - started < 10 and heard == [f"{distributed.HELLO} 1 2"]


def test_damaged_cached_tokenizer_is_rebuilt(tmp_path, capsys):
    from collapipe_jax.tasks import vocab

    texts = [de for de, _ in data.load_multi30k(DATA, "train", 50)]
    fresh = vocab.train_bpe(texts, 300, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("bpe-*.json")
    good = cached.read_text()
    for damaged in (good[: len(good) // 2], '{"version": "1.0", "model": {"type": "BPE", "vocab": {"1": "x"}}}',
                    json.dumps({**json.loads(good), "added_tokens": []}).replace('"[PAD]"', '"[XX]"')):
        cached.write_text(damaged)
        rebuilt = vocab.train_bpe(texts, 300, cache_dir=tmp_path)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("collapipe: warning: the cached tokenizer") and "rebuilding" in err[0]
        assert rebuilt.get_vocab() == fresh.get_vocab() and cached.read_text() == good
    vocab.train_bpe(texts, 300, cache_dir=tmp_path)  # an intact cache is read without a word
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------- 12. numbers, sweeps, plots, streams, hosts (a later probe)


@pytest.mark.parametrize("flag", ["--host-devices", "--host-devices="])
@pytest.mark.parametrize("value", ["²", "３", "1" * 5000], ids=["superscript", "fullwidth", "5000-digits"])
def test_host_devices_flag_reads_ascii_digits_only(flag, value):
    """int() reads "３" as 3 and refuses "²" and 5,000 digits with a ValueError: all three are one line."""
    argv = [flag + value] if flag.endswith("=") else [flag, value]
    assert_one_line_error(*run("latency", *argv), "invalid host-devices", "ASCII digits")


def test_scenario_integer_past_the_conversion_limit(tmp_path):
    path = tmp_path / "n.json"
    path.write_text('{"N": ' + "1" * 5000 + "}")
    assert_one_line_error(*run("latency", "--scenario", path), "invalid scenario", "too long to read")


def _closed_stderr(*argv, env=None):
    """The CLI in a subprocess whose stderr is closed (`2>&-`): (exit code, stdout)."""
    proc = subprocess.run(["bash", "-c", 'exec "$@" 2>&-', "_", sys.executable, "-m", "collapipe_jax.cli",
                           *map(str, argv)], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("argv", [["latency", "--seed", "nan"], ["train", "--lr", "nan", "--no-progress"],
                                  ["schedule", "--seeds", "5:2"], ["plot", "/nonexistent-run"]],
                         ids=["latency", "train", "schedule", "plot"])
def test_closed_stderr_keeps_the_error_off_stdout(argv):
    assert _closed_stderr(*argv) == (2, "")


def test_bad_jax_platforms_is_one_line_naming_it():
    proc = subprocess.run([sys.executable, "-m", "collapipe_jax.cli", "latency"], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "bogus"})
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "invalid JAX_PLATFORMS", "'bogus'")


def test_dtype_applies_to_the_device_engine_only():
    for argv in (["--dtype", "float32"], ["--engine", "host", "--dtype", "float32", "--seeds", "0:2"]):
        assert_one_line_error(*run("schedule", "--rounds", "2", *argv), "invalid dtype", "device engine only")


@pytest.mark.parametrize("replot", [False, True])
def test_sweep_refuses_a_seed(tmp_path, replot):
    out = tmp_path / "out"
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", out, "--seed", "7",
                               *(["--replot"] if replot else [])), "invalid seed", "no --seed")
    assert not out.exists()  # refused before any work


def test_infeasible_device_seeds_have_null_totals_as_on_the_host():
    """runs_json (the device engine's records) of one feasible and one infeasible seed, from
    arrays as run_schedules returns them: the infeasible seed's partial sums are null, and the
    table shows '-', as the host engine's records (schedule._host_runs) do."""
    from collapipe_jax.cli import format_schedule_runs
    from collapipe_jax.scheduling.device import constraints
    from collapipe_jax.scheduling.device.run import runs_json
    from collapipe_jax.scheduling.schedule import seeds_summary

    totals = {"code": np.array([constraints.FEASIBLE, constraints.C11]), "code_cluster": np.array([-1, 0]),
              "code_round": np.array([-1, 0]), "total_latency_s": np.array([12.5, 0.0]),
              "total_cmp_s": np.array([4.0, 0.0]), "total_dd_s": np.array([0.5, 0.0]),
              "total_up_s": np.array([8.0, 0.0]),
              "final_Y": np.zeros((2, 3)), "max_Y": np.array([0.25, 0.0]), "violation_rounds": np.zeros((2, 3), int)}
    feasible, infeasible = runs_json({"totals": totals, "rounds": {}}, [4, 5], None)
    assert feasible["total_latency_s"] == 12.5 and feasible["final_Y"] == [0.0, 0.0, 0.0]
    assert infeasible["infeasible"] == {"constraint": "C11'", "cluster": 0, "round": 0}
    assert all(infeasible[k] is None for k in ("total_latency_s", "total_cmp_s", "total_dd_s", "total_up_s", "max_Y",
                                               "final_Y"))
    runs = [feasible, infeasible]
    result = {"scenario": "s", "tunable": "full", "policy": "dssra", "variant": "paper", "lyapunov": "drift", "V": 1.0,
              "rounds_per_run": 1, "engine": "device", "device": "cpu", "seconds": 0.1, "runs": runs,
              "summary": seeds_summary([r["total_latency_s"] for r in runs if r["infeasible"] is None], 2)}
    rows = format_schedule_runs(result).splitlines()
    assert rows[3].split()[:3] == ["4", "12.5", "0"] and rows[4].split()[:3] == ["5", "-", "-"]
    assert rows[-1].startswith("1 of 2 seeds feasible")


def test_float32_objective_overflow_is_refused_not_reported_infeasible(monkeypatch):
    """A float32 device run that reports seeds infeasible at a large V is probed at V = 1 (V
    enters no constraint): a seed feasible there overflowed V·τ and is refused, naming the
    largest V its latency allows; a seed infeasible at V = 1 too stays reported infeasible."""
    from collapipe_jax.options import FLOAT32_MAX
    from collapipe_jax.scheduling import schedule as sched
    from collapipe_jax.scheduling.device import constraints
    from collapipe_jax.scheduling.device import run as device_run

    probes = []

    def probe(scenario, policy, seeds, rounds, config, V, dtype):
        probes.append((V, dtype))
        return {"totals": {"code": probe_codes, "total_latency_s": np.array([100.0, 0.0])}}

    monkeypatch.setattr(device_run, "run_schedules", probe)
    scenario = load_scenario(None, None)
    at_V = {"totals": {"code": np.array([constraints.C11, constraints.C11])}}
    cfg = sched.ScheduleConfig(engine="device", dtype="float32", V=3e38, seeds="0:2", rounds=2)
    probe_codes = np.array([constraints.FEASIBLE, constraints.C11])
    with pytest.raises(ValidationError, match=r"invalid V: .*seed 0: 100 s over 2 rounds allows V <= 3\.4e\+36\)"):
        sched.check_objective_range(scenario, cfg, range(0, 2), None, at_V)
    assert probes == [(sched.PROBE_V, "float32")]
    probe_codes = np.array([constraints.C11, constraints.C11])  # infeasible whatever V: a true C11'
    sched.check_objective_range(scenario, cfg, range(0, 2), None, at_V)
    probes.clear()  # float64, a small V, or no infeasible seed: no probe at all
    for other in ({"dtype": "float64"}, {"V": FLOAT32_MAX * 1e-21}):
        sched.check_objective_range(scenario, sched.ScheduleConfig(**{**vars_of(cfg), **other}), range(0, 2), None,
                                    at_V)
    sched.check_objective_range(scenario, cfg, range(0, 2), None, {"totals": {"code": np.zeros(2, int)}})
    assert probes == []


def vars_of(cfg) -> dict:
    import dataclasses

    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


@pytest.mark.slow
def test_float32_large_V_through_the_device_engine():
    """The reported command: refused in one line; V = 1e36 (V·τ within float32) gives float64's totals."""
    argv = ["schedule", "--engine", "device", "--dtype", "float32", "--seeds", "0:2", "--rounds", "2",
            "--tunable", "lora:8", "--json"]
    assert_one_line_error(*run(*argv[:-1], "--V", "3e38"), "invalid V", "overflows float32", "--dtype float64")
    low = assert_finite_json(*run(*argv, "--V", "1e36"))
    ref = assert_finite_json(*run(*argv, "--V", "1e36", "--dtype", "float64"))
    assert [r["infeasible"] for r in low["runs"]] == [r["infeasible"] for r in ref["runs"]] == [None, None]
    np.testing.assert_allclose([r["total_latency_s"] for r in low["runs"]],
                               [r["total_latency_s"] for r in ref["runs"]], rtol=1e-4)


@pytest.mark.parametrize("value, says", [('"NaN"', "'NaN' (a string)"), ('"Infinity"', "'Infinity' (a string)"),
                                         ("1" * 400, "an integer of about 400 digits")],
                         ids=["nan-string", "infinity-string", "400-digits"])
def test_replot_of_unreadable_numbers(power_sweep, tmp_path, value, says):
    out = tmp_path / "out"
    shutil.copytree(power_sweep, out)
    folder = out / "latency-vs-power"
    saved = json.loads((folder / "tables.json").read_text())
    saved["tables"]["latency-vs-power"][0]["tau_up_s"] = "@"
    (folder / "tables.json").write_text(json.dumps(saved).replace('"@"', value))
    before = _folder_bytes(folder)
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", out, "--replot"), "invalid replot", says,
                          "latency-vs-power[0].tau_up_s")
    assert _folder_bytes(folder) == before


def _rounds_csv(folder: pathlib.Path, rows: list[str], result=None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rounds.csv").write_text("round,loss,tau_round_s,energy_j,accuracy\n" + "\n".join(rows) + "\n")
    if result is not None:
        (folder / "result.json").write_text(json.dumps(result))
    return str(folder)


def test_plot_a_federated_run_beside_a_centralized_one(tmp_path):
    from collapipe_jax.run_plot import curve, read_run

    fed = _rounds_csv(tmp_path / "fed", ["0,2.0,1.5,1.0,0.2", "1,1.5,2.5,1.0,0.3"],
                      {"task": "toutiao", "framework": "collapipe", "seed": 0})
    cen = _rounds_csv(tmp_path / "cen", ["0,1.9,,,0.25", "1,1.2,,,0.5"],  # centralized: no simulated round
                      {"task": "toutiao", "framework": "centralized", "seed": 0})
    assert curve(read_run(cen), "accuracy") == ([0.0, 1.0], None, [0.25, 0.5])
    assert curve(read_run(fed), "accuracy") == ([0.0, 1.0], [1.5, 4.0], [0.2, 0.3])
    png = tmp_path / "both.png"
    result = assert_finite_json(*run("plot", fed, cen, "--out", png, "--json"))
    assert [r["simulated_latency_s"] for r in result["runs"]] == [4.0, None]
    assert [r["points"] for r in result["runs"]] == [2, 2]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run("plot", cen, "--out", tmp_path / "alone.png")  # a centralized run alone
    assert code == 0 and "toutiao/centralized" in out, err
    mixed = _rounds_csv(tmp_path / "mixed", ["0,2.0,1.5,1.0,0.2", "1,1.5,,,0.3"])
    assert_one_line_error(*run("plot", mixed), "invalid run", "tau_round_s must be given on every row",
                          "line 3 differs")


@pytest.mark.parametrize("row, says", [("0,2.0,1e308,1.0,0.2", "tau_round_s must be a finite number within float32"),
                                       ("0,2.0,1.5,1.0,1e308", "accuracy must be a finite number within float32"),
                                       ("1e308,2.0,1.5,1.0,0.2", "round must be a finite number within float32"),
                                       ("0.5,2.0,1.5,1.0,0.2", "round must be an integer")],
                         ids=["tau", "metric", "round", "fractional-round"])
def test_plot_numbers_past_float32_are_one_line(tmp_path, row, says):
    folder = _rounds_csv(tmp_path / "run", [row, row.replace("0,2.0", "1,2.0", 1) if row[0] == "0" else row])
    assert_one_line_error(*run("plot", folder), "invalid run", says)
    assert not (tmp_path / "run" / "curves.png").exists()


def test_plot_draws_dollar_signs_literally(tmp_path):
    mathtext = "$\\frac{"
    named = _rounds_csv(tmp_path / f"run {mathtext}x", ["0,2.0,1.5,1.0,0.2"])  # unfinished: labelled by its folder
    labelled = _rounds_csv(tmp_path / "b", ["0,2.0,1.5,1.0,0.2"], {"task": mathtext, "framework": "$x$$", "seed": 1})
    result = assert_finite_json(*run("plot", named, labelled, "--out", tmp_path / "p.png", "--json"))
    assert [r["label"] for r in result["runs"]] == [f"run {mathtext}x (unfinished)", f"{mathtext}/$x$$, seed 1"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# several hosts: the rendezvous before jax.distributed.initialize (bounded, local only)


@contextlib.contextmanager
def _answering(listener: socket.socket, reply: str | None):
    """A fake process 0 (or another program) on `listener`: accepts one connection, records its
    first line, answers `reply` (None: says nothing; "": closes at once) and keeps the connection
    until the block ends."""
    heard, done = [], threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            heard.append(conn.recv(200).decode().strip())
            if reply == "":  # closes at once
                return
            if reply is not None:
                conn.sendall(reply.encode())
            done.wait(15)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield heard
    finally:
        done.set()
        thread.join(20)


def _hosts_env(monkeypatch, address: str, process_id: int, timeout_s: int = 1) -> None:
    for name, value in {"COLLAPIPE_COORDINATOR": address, "COLLAPIPE_NUM_PROCESSES": "2",
                        "COLLAPIPE_PROCESS_ID": str(process_id), "COLLAPIPE_INIT_TIMEOUT": str(timeout_s)}.items():
        monkeypatch.setenv(name, value)


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_0_with_a_host_that_does_not_resolve(monkeypatch, tmp_path):
    _hosts_env(monkeypatch, "nosuch.invalid:1234", 0)
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", tmp_path), "process 0 of 2",
                          "'nosuch.invalid' does not resolve")


def test_process_0_whose_peer_never_comes(monkeypatch, tmp_path):
    address = f"127.0.0.1:{_free_local_port()}"
    _hosts_env(monkeypatch, address, 0)
    started = time.monotonic()
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", tmp_path), "process 0 of 2",
                          f"process(es) 1 did not join at {address} within 1 s")
    assert time.monotonic() - started < 10


def test_process_0_on_a_port_another_program_holds(monkeypatch, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as other:
        address = f"127.0.0.1:{other.getsockname()[1]}"
        _hosts_env(monkeypatch, address, 0)
        assert_one_line_error(*run("sweep", "latency-vs-power", "--out", tmp_path), "process 0 of 2",
                              f"port {other.getsockname()[1]} cannot be opened", "another program holds it")


@pytest.mark.parametrize("reply, says", [(None, "accepted the connection but sent no go within 1 s"),
                                         ("SSH-2.0-OpenSSH_9.6\r\n", "is not collapipe's process 0"),
                                         ("", "is not collapipe's process 0")],
                         ids=["silent", "another-protocol", "closes"])
def test_process_1_when_another_program_listens(monkeypatch, tmp_path, reply, says):
    with socket.create_server(("127.0.0.1", 0)) as other:
        address = f"127.0.0.1:{other.getsockname()[1]}"
        _hosts_env(monkeypatch, address, 1)
        with _answering(other, reply) as heard:
            line = assert_one_line_error(*run("sweep", "latency-vs-power", "--out", tmp_path), "process 1 of 2",
                                         address, says)
        assert heard == ["collapipe-join 1 2"], line


def test_processes_that_disagree_are_one_line_on_both_sides(monkeypatch, tmp_path):
    """Process 0 of 2 and a process that says there are 3: process 0 names the disagreement, and
    the other process hears that process 0 gave up."""
    from collapipe_jax import distributed

    address = f"127.0.0.1:{_free_local_port()}"
    _hosts_env(monkeypatch, address, 0, timeout_s=20)
    outcome = []

    def other_process():
        try:
            distributed.join_coordinator(address, 1, 3, time.monotonic() + 20, 20, "process 1 of 3")
        except ValidationError as err:
            outcome.append(str(err))

    thread = threading.Thread(target=other_process, daemon=True)
    thread.start()
    assert_one_line_error(*run("sweep", "latency-vs-power", "--out", tmp_path), "invalid COLLAPIPE_NUM_PROCESSES",
                          "process 1 says there are 3 processes, this one 2")
    thread.join(30)
    assert len(outcome) == 1 and "process 0 at" in outcome[0] and "gave up" in outcome[0], outcome


# ----------------------------------------------------------------- 13. training runs and their records


def _records(folder: pathlib.Path) -> dict:
    """The bytes of a log directory's records (the lock file aside)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != LOCK_NAME}


def _another_runs_records(base_run, folder: pathlib.Path) -> dict:
    """`folder` holding the records of the base run (another run, for the runs below)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("result.json", "rounds.csv"):
        shutil.copy(base_run[0] / name, folder / name)
    return _records(folder)


def _reference_cases():
    def metric(value):
        return lambda r: r["final_metrics"].update(accuracy=value)

    return {"nan": (metric(float("nan")), "final_metrics.accuracy"),
            "infinity": (metric(float("inf")), "final_metrics.accuracy"),
            "1e308": (metric(1e308), "final_metrics.accuracy"),
            "huge-int": (metric(10**400), "final_metrics.accuracy"),
            "rounds-int": (lambda r: r.update(rounds=3), "rounds"),
            "local-steps-str": (lambda r: r.update(local_steps="2"), "local_steps"),
            "batch-str": (lambda r: r.update(batch="4"), "batch"),
            "task-missing": (lambda r: r.pop("task"), "task")}


@pytest.mark.parametrize("case", [*_reference_cases(), "fifo"])
def test_reference_result_json_is_checked_before_the_first_round(base_run, tmp_path, monkeypatch, case):
    """Each of these used to train every round and then lose the run's own result.json (NaN not
    JSON, len() of an int, int + str); a FIFO blocked the read forever."""
    _no_work(monkeypatch)
    ref = tmp_path / "ref"
    ref.mkdir()
    if case == "fifo":
        os.mkfifo(ref / "result.json")
        says = ["regular file"]
    else:
        edit, field = _reference_cases()[case]
        result = json.loads((base_run[0] / "result.json").read_text())
        edit(result)
        (ref / "result.json").write_text(json.dumps(result))  # Python writes NaN and Infinity
        says = [f"{ref / 'result.json'}: {field} "]
    line = assert_one_line_error(*run("train", *TRAIN_ARGS, "--reference", ref, "--log-dir", tmp_path / "logs"),
                                 "invalid reference", *says)
    assert len(line) < 600 and _records(tmp_path / "logs") == {}


def test_reference_checks_by_hand(base_run):
    from collapipe_jax.train_records import check_reference, reference_gap

    good = json.loads((base_run[0] / "result.json").read_text())
    assert check_reference(good, "r.json") is good
    for value in (0.0, 1.0, 5e-324):  # the ends of a fraction, and a reference that underflows a ratio
        check_reference({**good, "final_metrics": {"accuracy": value}}, "r.json")
    with pytest.raises(ValidationError, match="final_metrics.bleu"):  # BLEU is on 0..100
        check_reference({**good, "final_metrics": {"bleu": 100.5}}, "r.json")
    check_reference({**good, "final_metrics": {"bleu": 37.5}}, "r.json")
    gap = reference_gap({**good, "final_metrics": {"accuracy": 0.5}}, {**good, "final_metrics": {"accuracy": 5e-324}},
                        "r")
    assert gap["gap_points"]["accuracy"] == pytest.approx(50.0) and gap["gap_pct"] == {}  # 0.5 / 5e-324 is inf
    assert first_non_finite(gap) is None


def test_force_replaces_records_only_when_it_has_new_ones(base_run, tmp_path):
    """A forced run that never starts, or diverges in round 0, leaves the earlier records as they
    were; with the progress bar on, the divergence error starts a line of its own."""
    logs = tmp_path / "logs"
    before = _another_runs_records(base_run, logs)
    for argv in (["--data-dir", tmp_path / "missing"], ["--reference", tmp_path / "missing"]):
        assert_one_line_error(*run("train", *TRAIN_ARGS, "--force", "--log-dir", logs, *argv))
        assert _records(logs) == before
    with_bar = [a for a in TRAIN_ARGS if a != "--no-progress"]
    code, out, err = run("train", *with_bar, "--lr", "1e30", "--rounds", "2", "--force", "--log-dir", logs)
    assert code == 2 and out == "" and _records(logs) == before
    last = err.rstrip("\n").split("\n")[-1]  # lines as a file or a pipe shows them: the bar's \r do not count
    assert last.startswith("collapipe: error: invalid loss: non-finite"), repr(err[-300:])


def test_resume_into_another_runs_log_dir_is_refused(base_run, tmp_path):
    directory = copy_run(base_run, tmp_path)
    other = tmp_path / "other"
    _another_runs_records(base_run, other)
    table = other / "rounds.csv"
    rows = table.read_text().splitlines()
    table.write_text("\n".join([rows[0], rows[1].replace(rows[1].split(",")[1], "2.5"), *rows[2:]]) + "\n")
    before = _records(other)
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--rounds", "2", "--resume", "--checkpoint-dir", directory,
                               "--log-dir", other), "invalid log-dir", "another run's records")
    assert _records(other) == before and Checkpoints(str(directory)).steps() == [1, 0]
    own = tmp_path / "own"  # the run's own records (a copy): continued, here with nothing left to run
    _another_runs_records(base_run, own)
    code, out, err = run("train", *TRAIN_ARGS, "--rounds", "2", "--resume", "--checkpoint-dir", directory,
                         "--log-dir", own, "--json")
    assert code == 0, err[-1000:]
    assert json.loads((own / "result.json").read_text())["final_metrics"] == base_run[1]["final_metrics"]


def test_a_second_run_into_a_locked_log_dir_is_refused_and_the_lock_released(tmp_path, monkeypatch):
    import fcntl

    _no_work(monkeypatch)
    logs = tmp_path / "logs"
    logs.mkdir()
    fd = os.open(logs / LOCK_NAME, os.O_RDWR | os.O_CREAT)  # another run's lock (a second open file description)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert_one_line_error(*run("train", *TRAIN_ARGS, "--log-dir", logs), "invalid log-dir", "in use by another run")
        assert_one_line_error(*run("train", *TRAIN_ARGS, "--seeds", "0:2", "--log-dir", logs), "invalid log-dir",
                              "in use by another run")
    finally:
        os.close(fd)
    # a run that fails after taking the lock gives it back
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--log-dir", logs, "--reference", tmp_path / "missing"),
                          "invalid reference")
    fd = os.open(logs / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


@pytest.mark.parametrize("edit, says", [
    (lambda d: ((d / ckpt_mod.FILES_NAME).write_text("{}"),
                _edit_meta(d, lambda m: m["records"][0].update(loss=m["records"][0]["loss"] + 1.0))),
     "file list collapipe_files.json is missing, empty"),
    (lambda d: (d / "state" / "extra").write_bytes(b"x"), "state/extra is not in its file list"),
], ids=["file-list-emptied-and-meta-edited", "unlisted-file"])
def test_an_empty_or_partial_file_list_is_damage(base_run, tmp_path, capfd, edit, says):
    directory = copy_run(base_run, tmp_path)
    edit(directory / "1")
    resumed = train(tiny_config(checkpoint_dir=str(directory), resume=True, rounds=2))
    notes = [line for line in capfd.readouterr().err.splitlines() if line.startswith("collapipe: warning:")]
    assert len(notes) == 1 and "step 1 is damaged" in notes[0] and says in notes[0], notes
    assert [r["loss"] for r in resumed["rounds"]] == [r["loss"] for r in base_run[1]["rounds"]]  # not the edited one


def test_truncated_checkpoint_metadata_is_one_warning_without_absl(base_run, tmp_path, capfd, caplog):
    """Orbax's `ERROR:absl:Failed to json parse ...` is not logged beside the step's warning (pytest
    takes log records away from stderr, hence caplog as well as capfd)."""
    directory = copy_run(base_run, tmp_path)
    meta = directory / "1" / "_CHECKPOINT_METADATA"
    meta.write_bytes(meta.read_bytes()[:20])
    resumed = train(tiny_config(checkpoint_dir=str(directory), resume=True, rounds=2))
    err = capfd.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("collapipe: warning:")]
    assert not [r.getMessage()[:200] for r in caplog.records if r.name == "absl" and r.levelno >= 30]
    assert "absl" not in err and "Failed to json parse" not in err, err[-1000:]
    assert len(notes) == 1 and "step 1 is damaged" in notes[0] and "_CHECKPOINT_METADATA" in notes[0], notes
    assert resumed["final_metrics"] == base_run[1]["final_metrics"]


def test_resume_with_data_of_another_vocabulary_is_one_line(base_run, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the state was read before the data were compared")

    monkeypatch.setattr(Checkpoints, "_restore_state", never)
    directory = copy_run(base_run, tmp_path)
    other = tmp_path / "data"
    (other / "toutiao").mkdir(parents=True)
    lines = (DATA / "toutiao" / data.TOUTIAO_FILE).read_text(encoding="utf-8").splitlines()[:3000]
    (other / "toutiao" / data.TOUTIAO_FILE).write_text("\n".join(lines).replace("的", "X") + "\n", encoding="utf-8")
    for name in ("chinese_ner", "multi30k"):
        (other / name).symlink_to(DATA / name)
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--rounds", "3", "--resume", "--checkpoint-dir", directory,
                               "--data-dir", other), "invalid resume", "the data differ from the run's", "--data-dir")
    assert sorted(p.name for p in directory.iterdir() if p.is_dir()) == ["0", "1"]  # nothing set aside


def test_seeds_into_another_runs_records_and_seed_with_seeds(base_run, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    logs = tmp_path / "logs"
    before = _another_runs_records(base_run, logs)
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--seeds", "0:2", "--log-dir", logs), "invalid log-dir",
                          "another run's records")
    directory = copy_run(base_run, tmp_path)  # --resume: only a multi-seed summary may be there
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--seeds", "0:2", "--resume", "--checkpoint-dir", directory,
                               "--log-dir", logs), "invalid log-dir", "not a multi-seed summary")
    assert _records(logs) == before and not (logs / "seed-0").exists()
    recipe = _recipe(tmp_path, {"seed": 5, "seeds": "0:2"})
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--config", recipe), "invalid seeds", "not both", "seed 5")


@pytest.mark.parametrize("seeds, says", [("0:" + "9" * 5000, "<= 4294967296"), ("0:1000000000", "at most 1000"),
                                         ("0:4294967296", "at most 1000"), ("5:1006", "at most 1000")],
                         ids=["5000-digits", "1e9", "2^32", "1001"])
def test_seeds_past_the_maximum_are_refused(seeds, says):
    line = assert_one_line_error(*run("train", *TRAIN_ARGS, "--seeds", seeds), "invalid seeds", says)
    assert len(line) < 600


def test_seeds_without_log_dir_leave_their_records_in_a_new_run_dir(tmp_path, monkeypatch):
    """Each seed's run stubbed (the real runs are test_centralized's): the summary and every seed's
    records go to a new runs/<task>-<framework>-<UTC time>/, as a single run's do."""
    from collapipe_jax.sweep import seeds as seeds_mod

    given = []

    def one_seed(cfg):
        given.append(cfg)
        rounds = [{"round": 0, "loss": 1.0 + cfg.seed, "tau_round_s": 1.0, "energy_j": 1.0,
                   "metrics": {"accuracy": 0.25 * (cfg.seed + 1)}, "wall_s": 0.1}]
        return {"final_metrics": rounds[-1]["metrics"], "rounds": rounds, "total_latency_s": 1.0, "total_energy_j": 1.0}

    monkeypatch.setattr(seeds_mod, "train", one_seed)
    monkeypatch.chdir(tmp_path)
    code, out, err = run("train", *TRAIN_ARGS, "--seeds", "0:2", "--json")
    assert code == 0, err
    (made,) = (tmp_path / "runs").iterdir()
    assert [c.log_dir for c in given] == [str(pathlib.Path("runs") / made.name / f"seed-{s}") for s in (0, 1)]
    summary = json.loads((made / "result.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["final_metrics"]["accuracy"] == pytest.approx(0.375)
    assert json.loads(out)["log_dir"] == str(pathlib.Path("runs") / made.name) and "seed-<s>" in err


def test_a_fixed_plan_out_of_range_is_refused_not_clamped():
    from collapipe_jax.train_config import check_plan

    cfg = tiny_config(policy="default", plan_stages=4, plan_micro_batches=4)
    check_plan(cfg, 6, 4, 4)  # S = min(K, L) and m = b: as given
    for changes, field in (({"plan_stages": 5}, "plan-stages"), ({"plan_micro_batches": 5}, "plan-micro-batches")):
        with pytest.raises(ValidationError, match=field):
            check_plan(tiny_config(policy="default", **changes), 6, 4, 4)
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--policy", "default", "--plan-stages", "99"),
                          "invalid plan-stages", "min(K, L) = 4")
    assert_one_line_error(*run("train", *TRAIN_ARGS, "--policy", "default", "--plan-micro-batches", "1000"),
                          "invalid plan-micro-batches", "b = 4")
