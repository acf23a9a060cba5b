"""The centralized reference (`train --framework centralized`), `--reference` gaps and the
fine-tuning flow's position embeddings: checked against plain JAX computations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax import train as train_mod
from collapipe_jax.checkpoints import Checkpoints
from collapipe_jax.cli import main
from collapipe_jax.models import split
from collapipe_jax.models.teb import encoder_reference
from collapipe_jax.tasks.batching import gather, local_batches
from collapipe_jax.tasks.data import resolve_data_dir
from collapipe_jax.train import TrainConfig, train
from train_helpers import LIBRARY_DEFAULTS, kill_during_second_evaluation

DATA = resolve_data_dir()
TINY = dict(task="toutiao", rounds=2, batch=4, clusters=2, micro_batches=2, max_examples=24, max_eval_examples=8,
            seq_len=16, data_dir=str(DATA), progress=False)


def tiny(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "cache_dir": str(tmp_path / "cache"), **changes})


def losses(result):
    return np.array([r["loss"] for r in result["rounds"]])


def test_centralized_sgd_equals_plain_gradient_descent_on_the_clusters_batches_together(tmp_path):
    """E = 2 SGD steps a round: each step is θ ← θ − η ∇ mean loss over the N clusters' step-e
    mini-batches together, written here with jax.grad on the whole model."""
    lr = 0.1
    cfg = tiny(tmp_path, framework="centralized", optimizer="sgd", lr=lr, local_steps=2, dropout=0.0,
               checkpoint_dir=str(tmp_path / "c"))
    result = train(cfg)
    setup = train_mod.build_setup(cfg)
    params = train_mod.program.jitted_init(setup.model_cfg, "sentence", setup.task.n_labels)(
        jax.random.PRNGKey(cfg.seed))

    @jax.jit  # one compilation for the 4 steps (the encoder's scan recompiles on every eager call)
    @jax.value_and_grad
    def loss_and_grad(p, batch):
        loss_sum, weight_sum = split.split_model_loss(p, batch, encoder_reference)
        return loss_sum / weight_sum

    expected_losses = []
    for t in range(cfg.rounds):
        idx = local_batches(setup.clusters, cfg.batch, setup.local_steps, t, cfg.seed)  # [N, E, b]
        step_losses = []
        for e in range(2):
            batch = {k: jnp.asarray(v) for k, v in gather(setup.task.train, np.concatenate(idx[:, e])).items()}
            loss, grad = loss_and_grad(params, batch)
            params = jax.tree.map(lambda p, g: p - lr * g, params, grad)
            step_losses.append(float(loss))
        expected_losses.append(np.mean(step_losses))
    np.testing.assert_allclose(losses(result), expected_losses, rtol=1e-5)
    saved, _ = Checkpoints(str(tmp_path / "c")).restore_raw(cfg.rounds - 1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
                 saved["server"]["client"], params["client"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
                 saved["server"]["server"], params["server"])
    assert result["total_latency_s"] is None and result["uploaded_bits_per_round"] == 0.0
    assert result["rounds"][0]["tau_round_s"] is None and result["policy"] is None


def test_centralized_with_one_cluster_is_the_noiseless_unpipelined_federated_run(tmp_path):
    """N = 1, no upload noise: FedAvg of one upload is the uploaded model, so the federated run
    and the centralized one train the same (AdamW with kept state, clipping, dropout masks)."""
    same = dict(clusters=1, optimizer="adamw", lr=3e-3, weight_decay=0.01, lr_schedule="warmup-cosine",
                warmup_steps=1, clip_norm=1.0, client_state="keep", local_steps=2, dropout=0.1, rounds=3)
    central = train(tiny(tmp_path, framework="centralized", **same))
    federated = train(tiny(tmp_path, framework="collapipe", policy="default", no_pipeline=True, noise_mode="none",
                           **same))
    assert all(r["decision"]["channel"] == [0] for r in federated["rounds"])  # the one cluster uploads
    np.testing.assert_allclose(losses(central), losses(federated), rtol=1e-4)
    assert not np.allclose(losses(central)[0], losses(central)[1:])  # it trains


def test_a_killed_centralized_run_resumes_exactly(tmp_path, monkeypatch):
    same = dict(framework="centralized", rounds=3, optimizer="adamw", lr=3e-3, lr_schedule="warmup-cosine",
                warmup_steps=1, local_steps=2)
    full = train(tiny(tmp_path, checkpoint_dir=str(tmp_path / "a"), **same))
    kill_during_second_evaluation(monkeypatch, tiny(tmp_path, checkpoint_dir=str(tmp_path / "b"), **same))
    resumed = train(tiny(tmp_path, checkpoint_dir=str(tmp_path / "b"), resume=True, **same))
    np.testing.assert_array_equal(losses(resumed), losses(full))
    assert resumed["final_metrics"] == full["final_metrics"]


@pytest.fixture(scope="module")
def reference_pair(tmp_path_factory):
    """A centralized run and a federated run given it as `--reference` (the same samples), shared
    by the tests that read their results."""
    tmp = tmp_path_factory.mktemp("pair")
    central = train(tiny(tmp, framework="centralized", log_dir=str(tmp / "central")))
    fed = train(tiny(tmp, policy="default", no_pipeline=True, reference=str(tmp / "central")))
    return central, fed


def test_reference_names_the_gap_to_a_centralized_run(reference_pair):
    central, fed = reference_pair
    ref = fed["reference"]
    assert ref["framework"] == "centralized" and ref["same_samples"] and ref["samples"] == 2 * 2 * 4
    for name, value in central["final_metrics"].items():
        assert ref["gap"][name] == pytest.approx(fed["final_metrics"][name] - value)
        assert ref["gap_points"][name] == pytest.approx(100 * (fed["final_metrics"][name] - value))


def test_init_from_a_longer_sequence_takes_the_first_position_embeddings(tmp_path):
    ner = tmp_path / "ner"
    train(tiny(tmp_path, task="ner", rounds=1, seq_len=16, policy="default", no_pipeline=True,
               checkpoint_dir=str(ner)))
    saved, _ = Checkpoints(str(ner)).restore_raw(0)
    state = train_mod.initial_state(train_mod.build_setup(tiny(tmp_path, seq_len=8, init_from=str(ner))))
    np.testing.assert_array_equal(np.asarray(state.server.client["embed"]["pos_embed"]),
                                  np.asarray(saved["server"]["client"]["embed"]["pos_embed"])[:8])


@pytest.mark.parametrize("flags, field", [
    (["--framework", "centralized", "--policy", "dssra"], "policy"),
    (["--framework", "centralized", "--local-epochs", "1"], "local-epochs"),
    (["--framework", "centralized", "--server-optimizer", "adam"], "server-optimizer"),
    (["--framework", "centralized", "--plan-stages", "2"], "plan-stages"),
    (["--reference", "/nonexistent/run"], "reference"),
    (["--seeds", "3:3"], "seeds"),
    (["--seeds", "1"], "seeds"),
    (["--seeds", "a:b"], "seeds"),
])
def test_bad_flags_are_one_line_naming_the_field(flags, field, capsys):
    code = main(["train", "--no-progress", "--data-dir", str(DATA), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0], err


def test_reference_of_another_task_is_refused(tmp_path, capsys):
    train(tiny(tmp_path, task="ner", rounds=1, framework="centralized", log_dir=str(tmp_path / "ner")))
    code = main(["train", "--task", "toutiao", "--no-progress", "--data-dir", str(DATA), "--reference",
                 str(tmp_path / "ner")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "reference" in err[0] and "ner" in err[0]


def test_seeds_run_each_seed_and_give_the_mean_and_student_t_interval(tmp_path, capsys):
    code = main(["train", *LIBRARY_DEFAULTS, "--task", "toutiao", "--seeds", "0:2", "--rounds", "1", "--batch", "4", "--clusters", "2",
                 "--micro-batches", "2", "--max-examples", "24", "--max-eval-examples", "8", "--seq-len", "16",
                 "--no-pipeline", "--policy", "default", "--no-progress", "--data-dir", str(DATA),
                 "--log-dir", str(tmp_path / "runs"), "--json"])
    assert code == 0
    summary = json.loads((tmp_path / "runs" / "result.json").read_text())
    single = train(tiny(tmp_path, rounds=1, seed=1, policy="default", no_pipeline=True))
    assert summary["seeds"] == [0, 1] and summary["n"] == 2
    assert summary["per_seed"][1]["final_metrics"] == pytest.approx(single["final_metrics"])
    for name, mean in summary["final_metrics"].items():
        values = [r["final_metrics"][name] for r in summary["per_seed"]]
        half = 12.706205 * np.std(values, ddof=1) / np.sqrt(2)  # t(0.975, 1 degree of freedom)
        assert mean == pytest.approx(np.mean(values))
        assert summary["ci95"][name] == pytest.approx([np.mean(values) - half, np.mean(values) + half], rel=1e-5)
    assert (tmp_path / "runs" / "seed-0" / "result.json").is_file()
    capsys.readouterr()
    code = main(["train", "--seeds", "0:2", "--seed", "1", "--no-progress", "--data-dir", str(DATA)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "seeds" in err[0]


def test_training_sweep_tables_hold_the_centralized_reference_and_seeds(tmp_path, monkeypatch, reference_pair):
    """compute → findings of the training sweep on real run results (one federated and one
    centralized tiny run, reused for every framework and seed with per-seed accuracies)."""
    from collapipe_jax.sweep import training

    central, fed = reference_pair
    accuracy = {"collapipe": [0.70, 0.72], "vanilla-fl": [0.70, 0.71], "pipeline": [0.69, 0.70],
                "titanic": [0.70, 0.72], "centralized": [0.75, 0.76]}

    def fake_train(cache, cfg):
        result = json.loads(json.dumps(central if cfg.centralized else fed))
        result["final_metrics"] = {"accuracy": accuracy[cfg.framework][cfg.seed]}
        return result

    monkeypatch.setattr(training, "cached_train", fake_train)
    monkeypatch.setattr(training, "TASKS", ("toutiao",))
    monkeypatch.setattr(training, "SEEDS", {"quick": (0, 1)})
    tables = training.compute("quick", tmp_path, SilentProgress())
    finals = tables["training-final"]
    assert {(r["framework"], r["seed"]) for r in finals} == {(f, s) for f in accuracy for s in (0, 1)}
    central_rows = [r for r in tables["training"] if r["framework"] == "centralized"]
    assert central_rows and all(r["cumulative_latency_s"] is None and r["S"] == 1.0 for r in central_rows)
    out = training.findings(tables)
    gap = next(n for n in out["findings"] if "gap to the centralized" in n)
    assert "collapipe -4.5" in gap  # 71 - 75.5 points, by hand
    (acc,) = [c for c in out["claims"] if c["id"] == "fig6-accuracy-vs-pipeline"]
    assert acc["n"] == 2 and acc["measured"]["difference_pp"] == pytest.approx(1.5)


class SilentProgress:
    """A sweep's progress (`sweep.base.Progress`) that shows nothing."""

    def __call__(self, n: int = 1) -> None:
        pass

    def expect(self, n: int) -> None:
        pass
