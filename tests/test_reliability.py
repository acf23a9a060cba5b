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
import subprocess
import sys

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

DATA = resolve_data_dir()
REPO = pathlib.Path(__file__).resolve().parents[1]
RELAXED = str(REPO / "sweeps" / "scenarios" / "paper-bert-relaxed.json")  # DSSRA feasible every round
TRAIN_ARGS = ["--task", "toutiao", "--model", "tiny", "--batch", "4", "--clusters", "2", "--micro-batches", "2",
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
