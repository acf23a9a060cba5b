"""The training driver: tiny two-round runs per task, pipelined vs unsegmented, resume, errors."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from collapipe_jax import train as train_mod
from collapipe_jax.checkpoints import Checkpoints
from collapipe_jax.federated import program
from collapipe_jax.errors import ValidationError
from collapipe_jax.tasks.data import resolve_data_dir
from collapipe_jax.train import TrainConfig, train
from train_helpers import LIBRARY_DEFAULTS, kill_during_second_evaluation

# $COLLAPIPE_DATA if set, else the repository's own data/
DATA = resolve_data_dir()

TINY = dict(rounds=2, batch=4, clusters=2, micro_batches=2, max_examples=24, max_eval_examples=8, seq_len=16,
            data_dir=str(DATA), progress=False)


def tiny(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "cache_dir": str(tmp_path / "cache"), "policy": "default", **changes})


def losses(result):
    return np.array([r["loss"] for r in result["rounds"]])


METRIC = {"multi30k": "bleu", "ner": "entity_f1", "toutiao": "accuracy"}


@pytest.fixture(scope="module")
def toutiao_runs(tmp_path_factory):
    """One pipelined (with checkpoints) and one unsegmented 3-round toutiao run, shared by the
    tests below so that each program is compiled once."""
    tmp = tmp_path_factory.mktemp("toutiao")
    piped = train(tiny(tmp, task="toutiao", rounds=3, checkpoint_dir=str(tmp / "a")))
    plain = train(tiny(tmp, task="toutiao", rounds=3, no_pipeline=True))
    return piped, plain


def check_run(result, task, rounds):
    assert [r["round"] for r in result["rounds"]] == list(range(rounds))
    assert np.all(np.isfinite(losses(result))) and np.all(losses(result) > 0)
    for r in result["rounds"]:
        value = r["metrics"][METRIC[task]]
        assert np.isfinite(value) and (0 <= value <= 100 if task == "multi30k" else 0 <= value <= 1)
        assert r["tau_round_s"] > 0 and r["energy_j"] > 0
        assert isinstance(r["violations"], list)
        # each cluster's time split into computation, D2D and upload (system.report.time_split)
        np.testing.assert_allclose(np.add(r["tau_pipe_cmp_s"], r["tau_pipe_dd_s"]), r["tau_pipe_s"], rtol=1e-6)
        assert r["round_cmp_s"] == max(r["tau_pipe_cmp_s"]) > 0
        assert r["tau_round_s"] == pytest.approx(max(np.add(r["tau_pipe_s"], r["tau_up_s"])), rel=1e-6)
    assert result["final_metrics"] == result["rounds"][-1]["metrics"]
    assert sum(result["samples_per_cluster"]) == 24


def test_toutiao_run(toutiao_runs):
    check_run(toutiao_runs[0], "toutiao", 3)
    assert toutiao_runs[0]["pipelined"]


def test_ner_run(tmp_path):
    check_run(train(tiny(tmp_path, task="ner", no_pipeline=True)), "ner", 2)


@pytest.mark.slow
def test_multi30k_run(tmp_path):
    check_run(train(tiny(tmp_path, task="multi30k", no_pipeline=True)), "multi30k", 2)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ner", "multi30k"])
def test_pipelined_runs_other_tasks(task, tmp_path):
    piped = train(tiny(tmp_path, task=task))
    check_run(piped, task, 2)
    plain = train(tiny(tmp_path, task=task, no_pipeline=True))
    np.testing.assert_allclose(losses(piped), losses(plain), rtol=1e-4)


def test_no_pipeline_gives_same_losses(toutiao_runs):
    piped, plain = toutiao_runs
    assert piped["pipelined"] and not plain["pipelined"]
    np.testing.assert_allclose(losses(piped), losses(plain), rtol=1e-4)


def test_resume_after_kill_equals_uninterrupted(tmp_path, monkeypatch, toutiao_runs):
    full = toutiao_runs[0]

    cfg_b = tiny(tmp_path, task="toutiao", rounds=3, checkpoint_dir=str(tmp_path / "b"))
    kill_during_second_evaluation(monkeypatch, cfg_b)
    with pytest.raises(ValidationError, match="--resume"):
        train(cfg_b)  # a checkpoint is there: refuse to overwrite it silently
    resumed = train(tiny(tmp_path, task="toutiao", rounds=3, checkpoint_dir=str(tmp_path / "b"), resume=True))
    assert [r["round"] for r in resumed["rounds"]] == [0, 1, 2]
    np.testing.assert_array_equal(losses(resumed), losses(full))
    assert resumed["final_metrics"] == full["final_metrics"]
    assert [r["tau_round_s"] for r in resumed["rounds"]] == [r["tau_round_s"] for r in full["rounds"]]
    saved = json.loads((tmp_path / "b" / "result.json").read_text())
    assert saved["final_metrics"] == full["final_metrics"]
    csv_lines = (tmp_path / "b" / "rounds.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("round,loss,tau_round_s,energy_j") and len(csv_lines) == 4
    with pytest.raises(ValidationError, match="other settings"):
        train(tiny(tmp_path, task="toutiao", rounds=4, lr=0.5, checkpoint_dir=str(tmp_path / "b"), resume=True))


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    real = program.compiled_round
    calls = {"n": 0}

    def poisoned(*key):
        fn = real(*key)

        def round_fn(*args):
            state, out = fn(*args)
            calls["n"] += 1
            if calls["n"] == 2:  # round 1 diverges
                out = out.replace(loss=out.loss * np.nan)
            return state, out

        return round_fn

    monkeypatch.setattr(program, "compiled_round", poisoned)
    ckpt = tmp_path / "ck"
    with pytest.raises(train_mod.NonFiniteLossError, match=r"non-finite training loss at round 1.*round 0"):
        train(tiny(tmp_path, task="toutiao", rounds=3, no_pipeline=True, checkpoint_dir=str(ckpt)))
    assert Checkpoints(str(ckpt)).latest() == 0


def test_missing_data_file_is_named(tmp_path):
    (tmp_path / "toutiao").mkdir()
    with pytest.raises(ValidationError, match="toutiao_subset.txt"):
        train(tiny(tmp_path, task="toutiao", data_dir=str(tmp_path)))


def test_bad_config_values():
    with pytest.raises(ValidationError, match="framework"):
        TrainConfig(framework="fedprox")
    with pytest.raises(ValidationError, match="micro-batches"):
        TrainConfig(batch=2, micro_batches=4)
    with pytest.raises(ValidationError, match="policy"):
        TrainConfig(framework="vanilla-fl", policy="random")


# ---------------------------------------------------------------- framework decisions


def _problem(**changes):
    import jax

    from collapipe_jax.scenario import draw_state, scenario_from_model
    from collapipe_jax.scheduling.dssra import round_problem

    sc = scenario_from_model("tiny", **changes)
    state = draw_state(sc, jax.random.PRNGKey(4))
    return sc, state, round_problem(sc, state)


def test_vanilla_fl_picks_fastest_device_that_fits():
    from collapipe_jax.scheduling.dssra import round_problem
    from collapipe_jax.scheduling.frameworks import vanilla_fl_policy

    sc, state, _ = _problem()
    speed = np.asarray(state.phi_flops_per_cycle) * np.asarray(state.f_hz)
    mem = np.array(state.gamma_max_k_bytes)
    mem[0, np.argmax(speed[0])] = 0.5 * sc.L * sc.gamma0_bytes  # the fastest device of cluster 0 is too small
    state = state.replace(gamma_max_k_bytes=mem)
    d = vanilla_fl_policy(round_problem(sc, state)).decision
    delta = np.asarray(d.delta)
    assert np.all(delta.sum(axis=1) == sc.L) and np.all((delta > 0).sum(axis=1) == 1)
    assert np.argmax(delta[0]) == np.argsort(speed[0])[-2]  # the second fastest
    assert all(np.argmax(delta[n]) == np.argmax(speed[n]) for n in range(1, sc.N))
    assert np.all(np.asarray(d.m) == 1)
    # no device holds the encoder: the fastest takes it anyway and the breach of C7 is reported
    state = state.replace(gamma_max_k_bytes=np.zeros_like(mem))
    res = vanilla_fl_policy(round_problem(sc, state))
    assert all(np.argmax(np.asarray(res.decision.delta)[n]) == np.argmax(speed[n]) for n in range(sc.N))
    from collapipe_jax.scheduling.dssra import check_decision

    bad = check_decision(round_problem(sc, state), res.plans, res.channel, res.p_n_w)
    assert {(v["constraint"], v["cluster"]) for v in bad} == {("C7", n) for n in range(sc.N)}


def test_proportional_split_hand_worked():
    from collapipe_jax.scheduling.frameworks import proportional_split

    # L = 7, speeds 3:2:1 → shares 3.5, 2.33, 1.17 → floors 3, 2, 1, the extra to the largest remainder
    assert proportional_split(7, np.array([3.0, 2.0, 1.0]), np.array([9, 9, 9])).tolist() == [4, 2, 1]
    # memory cap of the fastest device at 2 pushes the rest down the remainders
    assert proportional_split(7, np.array([3.0, 2.0, 1.0]), np.array([2, 9, 9])).tolist() == [2, 3, 2]
    # memory for 6 of the 7 TEBs: the split ignores the caps (the host round reports C7)
    assert proportional_split(7, np.array([1.0, 1.0]), np.array([3, 3])).tolist() == [4, 3]


def test_titanic_decision_selects_fast_devices_in_speed_order():
    from collapipe_jax.scenario import orders_of
    from collapipe_jax.scheduling.frameworks import titanic_policy

    sc, state, problem = _problem(L=6)
    d = titanic_policy(problem).decision
    speed = np.asarray(state.phi_flops_per_cycle) * np.asarray(state.f_hz)
    for n, order in enumerate(orders_of(d)):
        assert set(order) <= set(np.argsort(-speed[n])[: (sc.K + 1) // 2].tolist())
        assert list(speed[n, order]) == sorted(speed[n, order], reverse=True)
    assert np.all(np.asarray(d.delta).sum(axis=1) == sc.L)


def test_cli_train_json(tmp_path, capsys, monkeypatch):
    from collapipe_jax import cli

    monkeypatch.chdir(tmp_path)  # the default records go to ./runs/
    # the settings of test_ner_run, so the compiled programs are reused
    argv = ["train", *LIBRARY_DEFAULTS, "--task", "ner", "--no-pipeline", "--policy", "default", "--rounds", "1", "--batch", "4",
            "--clusters", "2", "--micro-batches", "2", "--max-examples", "24", "--max-eval-examples", "8",
            "--seq-len", "16", "--data-dir", str(DATA), "--no-progress"]
    code = cli.main(argv + ["--json"])
    assert code == 0
    out, err = capsys.readouterr()
    out = json.loads(out)
    assert set(out) >= {"rounds", "final_metrics"}
    assert set(out["rounds"][0]) >= {"round", "loss", "metrics", "tau_round_s", "energy_j"}
    # no --log-dir: the run's records in a new runs/ner-collapipe-<UTC time>/, named at the end on stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("ner-collapipe-") and out["log_dir"] == str(pathlib.Path("runs") / run.name)
    assert err.strip().splitlines()[-1].startswith("records of this run") and out["log_dir"] in err
    assert json.loads((run / "result.json").read_text())["final_metrics"] == out["final_metrics"]
    assert (run / "rounds.csv").read_text().splitlines()[0].startswith("round,loss,tau_round_s,energy_j")
    # another run into those records: refused (one line) before any work, unless --force
    code = cli.main(argv + ["--log-dir", str(run), "--rounds", "2"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "another run's records" in lines[0] and "--force" in lines[0]
    assert json.loads((run / "result.json").read_text())["rounds"] == json.loads(json.dumps(out["rounds"]))
    code = cli.main(["train", "--task", "ner", "--data-dir", str(tmp_path), "--no-progress"])
    assert code == 2 and "example_test.txt" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]  # the failed run left no empty record
    shutil.rmtree(tmp_path / "runs")
    assert cli.main(["train", "--task", "ner", "--data-dir", str(tmp_path), "--no-progress"]) == 2
    assert not (tmp_path / "runs").exists()


def test_force_overwrites_another_runs_records(tmp_path, toutiao_runs):
    """The settings of the unsegmented run of `toutiao_runs` (compiled once)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "rounds.csv").write_text("round,loss,tau_round_s,energy_j\n0,1,1,1\n")
    with pytest.raises(ValidationError, match="another run's records"):
        train(tiny(tmp_path, task="toutiao", rounds=3, no_pipeline=True, log_dir=str(logs)))
    assert (logs / "rounds.csv").read_text().count("\n") == 2  # untouched
    forced = train(tiny(tmp_path, task="toutiao", rounds=3, no_pipeline=True, log_dir=str(logs), force=True))
    np.testing.assert_array_equal(losses(forced), losses(toutiao_runs[1]))
    assert len((logs / "rounds.csv").read_text().strip().splitlines()) == 4
    assert json.loads((logs / "result.json").read_text())["final_metrics"] == forced["final_metrics"]


def test_recipe_interval_longer_than_the_rounds_is_shortened(capsys):
    from collapipe_jax.train_config import config_with_recipe, load_recipe

    every = load_recipe("toutiao-cpu")["eval_every"]
    assert every > 20
    assert config_with_recipe({"recipe": "toutiao-cpu", "rounds": 20}).eval_every == 20 // 5
    assert f"every {every} rounds" in capsys.readouterr().err
    assert config_with_recipe({"recipe": "toutiao-cpu", "rounds": 3}).eval_every == 1
    assert config_with_recipe({"recipe": "toutiao-cpu", "rounds": every}).eval_every == every
    assert config_with_recipe({"recipe": "toutiao-cpu", "rounds": 20, "eval_every": every}).eval_every == every


def test_last_round_is_always_evaluated(tmp_path, toutiao_runs):
    result = train(tiny(tmp_path, task="toutiao", rounds=3, no_pipeline=True, eval_every=2))
    assert [bool(r["metrics"]) for r in result["rounds"]] == [False, True, True]
    assert result["rounds"][2]["metrics"] == toutiao_runs[1]["rounds"][2]["metrics"]


def test_train_table_names_simulated_time():
    from collapipe_jax.cli import format_train

    record = {"round": 0, "loss": 1.0, "tau_round_s": 2.5, "energy_j": 3.0, "wall_s": 0.25,
              "metrics": {"accuracy": 0.5}}
    result = {"rounds": [record], "model": "tiny", "clusters": 2, "pipelined": True, "final_metrics": {"accuracy": 0.5}}
    text = format_train(TrainConfig(), result)
    header = text.splitlines()[2].split()
    assert header == ["round", "loss", "sim_latency[s]", "sim_energy[J]", "wall[s]", "accuracy"]
    assert text.splitlines()[4].split() == ["0", "1", "2.5", "3", "0.25", "0.5"]
    assert "not wall time" in text and "tau_round" not in text
    # the line above the table names the recipe whose settings the run took
    assert text.splitlines()[1].startswith("settings: the toutiao-cpu recipe's")
    assert format_train(TrainConfig(recipe="ner-cpu"), result).splitlines()[1].startswith("settings: recipe ner-cpu")


def test_scheduler_policies_in_the_loop(tmp_path, monkeypatch):
    from collapipe_jax.scheduling import policies

    seen = []
    real = policies.POLICIES["loss-only"]

    def spy(problem, Y, rng, losses=None, **kw):
        seen.append(None if losses is None else np.array(losses))
        return real(problem, Y, rng, losses=losses, **kw)

    monkeypatch.setitem(policies.POLICIES, "loss-only", spy)
    loss_only = train(tiny(tmp_path, task="toutiao", policy="loss-only", no_pipeline=True))
    assert seen[0] is None  # round 0: no losses yet
    np.testing.assert_array_equal(seen[1], loss_only["rounds"][0]["cluster_losses"])  # the real ones of round 0

    dssra = train(tiny(tmp_path, task="toutiao", policy="dssra", no_pipeline=True))
    fixed = train(tiny(tmp_path, task="toutiao", policy="default", no_pipeline=True))
    assert all(np.sum(r["decision"]["delta"], axis=1).tolist() == [4, 4] for r in dssra["rounds"])
    # round 0 has empty queues, so DSSRA minimises τ(t) alone: never slower than the fixed decision
    assert dssra["rounds"][0]["tau_round_s"] <= fixed["rounds"][0]["tau_round_s"] * (1 + 1e-6)


def test_vanilla_fl_framework_run(tmp_path):
    result = train(tiny(tmp_path, task="toutiao", framework="vanilla-fl", policy=None))
    assert not result["pipelined"] and result["policy"] == "vanilla-fl"
    assert all(np.count_nonzero(row) == 1 for r in result["rounds"] for row in r["decision"]["delta"])
    assert all(r["decision"]["m"] == [1, 1] for r in result["rounds"])
    assert np.all(np.isfinite(losses(result)))


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["pipeline", "titanic"])
def test_other_framework_runs(framework, tmp_path):
    result = train(tiny(tmp_path, task="toutiao", framework=framework, policy=None))
    check_run(result, "toutiao", 2)
    plain = train(tiny(tmp_path, task="toutiao", framework=framework, policy=None, no_pipeline=True))
    np.testing.assert_allclose(losses(result), losses(plain), rtol=1e-4)


def test_non_iid_setup_skews_labels(tmp_path):
    kw = dict(task="toutiao", clusters=3, max_examples=300)
    iid = train_mod.build_setup(tiny(tmp_path, **kw))
    skew = train_mod.build_setup(tiny(tmp_path, non_iid=True, dirichlet_alpha=0.1, **kw))
    for setup in (iid, skew):
        assert np.array_equal(np.sort(np.concatenate(setup.clusters)), np.arange(300))
        assert setup.weights.tolist() == [len(c) for c in setup.clusters]
    labels = iid.task.partition_labels

    def top_share(setup):
        return np.mean([np.bincount(labels[c]).max() / len(c) for c in setup.clusters])

    assert top_share(skew) > 1.5 * top_share(iid)  # each cluster dominated by fewer labels


def test_cluster_chunk_gives_the_same_run(tmp_path, toutiao_runs):
    """Clusters vmapped one group at a time: the same losses as the all-clusters round."""
    grouped = train(tiny(tmp_path, task="toutiao", rounds=3, no_pipeline=True, cluster_chunk=1))
    np.testing.assert_allclose(losses(grouped), losses(toutiao_runs[1]), rtol=1e-5)
    with pytest.raises(ValidationError, match="cluster-chunk"):
        tiny(tmp_path, task="toutiao", cluster_chunk=0)


# ---------------------------------------------------------------- a run without --config


@pytest.mark.parametrize("task", ["toutiao", "ner", "multi30k"])
def test_a_run_without_config_takes_the_learning_settings_of_its_tasks_cpu_recipe(tmp_path, monkeypatch, capsys,
                                                                                   task):
    """A bare `collapipe train --task T` learns on the CPU: the optimizer, schedule, local steps,
    batch, dropout and evaluation size of sweeps/recipes/T-cpu.json (read here from the file),
    20 rounds and the default model; its table names the recipe. No training: `train` is
    replaced by a stub that records the config it was given."""
    from collapipe_jax import cli

    recipe = json.loads((train_mod.RECIPE_DIR / f"{task}-cpu.json").read_text())
    seen = []

    def stub(cfg):
        seen.append(cfg)
        return {"rounds": [], "model": cfg.model, "clusters": 3, "pipelined": True, "final_metrics": {}}

    monkeypatch.setattr("collapipe_jax.train.train", stub)  # the command imports it on use
    assert cli.main(["train", "--task", task, "--log-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    cfg = seen.pop()
    for name in ("optimizer", "lr", "weight_decay", "lr_schedule", "warmup_steps", "local_steps", "batch",
                 "client_state", "dropout", "max_eval_examples"):
        assert getattr(cfg, name) == recipe[name], name
    assert cfg.label_smoothing == recipe.get("label_smoothing", 0.0)
    assert (cfg.rounds, cfg.model, cfg.seq_len, cfg.eval_every, cfg.clip_norm) == (20, "tiny", None, 1, None)
    assert cfg.recipe is None and TrainConfig().optimizer == "sgd"  # the library's own defaults are unchanged
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"settings: the {task}-cpu recipe's") and "no --config" in out[1]
    # a flag given replaces the recipe's value; --local-epochs replaces its local steps
    assert cli.main(["train", "--task", task, "--optimizer", "sgd", "--rounds", "3", "--local-epochs", "1",
                     "--log-dir", str(tmp_path / "run2"), "--no-progress"]) == 0
    cfg = seen.pop()
    assert (cfg.optimizer, cfg.rounds, cfg.local_steps, cfg.local_epochs) == ("sgd", 3, None, 1.0)
    assert cfg.lr == recipe["lr"]


def test_help_states_the_defaults_of_a_run_without_config():
    from test_cli import subcommand_help

    text = " ".join(subcommand_help("train").split())
    assert "--optimizer OPTIMIZER client optimizer" in text
    assert "[default without --config: adamw (the task's CPU recipe's); with a --config that leaves it out: sgd]" in text
    assert "--rounds ROUNDS number of rounds [default without --config: 20; with a --config that leaves it out: 2]" in text
    assert "without --config, a run takes the learning settings of its task's CPU recipe" in text


def test_vocab_size_sizes_the_multi30k_bpe_and_the_model(tmp_path):
    kw = dict(task="multi30k", max_examples=200, max_eval_examples=8)
    small = train_mod.build_setup(tiny(tmp_path, vocab_size=300, **kw))
    default = train_mod.build_setup(tiny(tmp_path, **kw))
    assert small.task.vocab_size <= 300 < default.task.vocab_size  # 200 pairs hold more than 300 BPE tokens
    assert small.model_cfg.vocab_size == small.task.vocab_size
    assert int(small.task.train["tokens"].max()) < small.task.vocab_size
    assert int(small.task.train["tgt"].max()) < small.task.vocab_size
