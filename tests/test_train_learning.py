"""Training that learns (docs/design.md §5): local steps, optimizers, resume with adaptive state,
pre-train → fine-tune (--init-from), LoRA fine-tuning, recipes."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from collapipe_jax import train as train_mod
from collapipe_jax.checkpoints import Checkpoints
from collapipe_jax.cli import main
from collapipe_jax.errors import ValidationError
from collapipe_jax.federated import program
from collapipe_jax.models import cost
from collapipe_jax.models.lora import has_lora, lora_adapters
from collapipe_jax.tasks.data import resolve_data_dir
from collapipe_jax.train import TrainConfig, config_with_recipe, train
from train_helpers import kill_during_second_evaluation

DATA = resolve_data_dir()
TINY = dict(rounds=2, batch=4, clusters=2, micro_batches=2, max_examples=24, max_eval_examples=8, seq_len=16,
            data_dir=str(DATA), progress=False, no_pipeline=True, policy="default")
ADAPTIVE = dict(optimizer="adamw", lr=3e-3, lr_schedule="warmup-cosine", warmup_steps=2, clip_norm=1.0,
                local_steps=2, server_optimizer="adam", server_lr=0.5, client_state="keep", weight_decay=0.01)


def tiny(tmp_path, **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "cache_dir": str(tmp_path / "cache"), **changes})


def losses(result):
    return np.array([r["loss"] for r in result["rounds"]])


def test_resume_with_local_steps_and_adaptive_optimizers(tmp_path, monkeypatch):
    """Adam moments kept per cluster, the server's FedAdam state, the head's state and the
    learning-rate schedule all survive a kill: the resumed run equals the uninterrupted one."""
    full = train(tiny(tmp_path, task="toutiao", rounds=3, checkpoint_dir=str(tmp_path / "a"), **ADAPTIVE))
    assert full["local_steps"] == [2, 2] and full["optimizer"]["name"] == "adamw"
    assert full["server_optimizer"]["name"] == "adam" and all(np.isfinite(losses(full)))
    cfg = tiny(tmp_path, task="toutiao", rounds=3, checkpoint_dir=str(tmp_path / "b"), **ADAPTIVE)
    round_fn = program.compiled_round(train_mod.build_setup(cfg).round_settings(1))
    programs = round_fn._cache_size()
    kill_during_second_evaluation(monkeypatch, cfg)
    resumed = train(dataclasses.replace(cfg, resume=True))
    np.testing.assert_array_equal(losses(resumed), losses(full))
    assert resumed["final_metrics"] == full["final_metrics"]
    # the restored state is placed as a fresh run's: the resumed run reuses the compiled round
    assert round_fn._cache_size() == programs


def test_local_steps_are_charged_e_times(tmp_path):
    """The same fixed decisions with E = 1 and E = 3: the pipeline time and device energy of a
    round triple, the upload is charged once."""
    one = train(tiny(tmp_path, task="toutiao", rounds=1))
    three = train(tiny(tmp_path, task="toutiao", rounds=1, local_steps=3))
    a, b = one["rounds"][0], three["rounds"][0]
    assert a["decision"] == b["decision"] and three["local_steps"] == [3, 3]
    np.testing.assert_allclose(b["tau_pipe_s"], 3 * np.asarray(a["tau_pipe_s"]), rtol=1e-6)
    np.testing.assert_allclose(b["tau_up_s"], a["tau_up_s"], rtol=1e-6)


def test_local_epochs_give_each_cluster_its_steps(tmp_path):
    setup = train_mod.build_setup(tiny(tmp_path, task="toutiao", local_epochs=1.0, clusters=3, max_examples=50))
    sizes = [len(c) for c in setup.clusters]
    assert setup.local_steps.tolist() == [int(np.ceil(d / 4)) for d in sizes]


def test_init_from_moves_a_ner_model_into_toutiao_and_refuses_another_vocabulary(tmp_path, capsys):
    ner = tmp_path / "ner"
    train(tiny(tmp_path, task="ner", rounds=1, checkpoint_dir=str(ner)))
    saved, _ = Checkpoints(str(ner)).restore_raw(0)
    cfg = tiny(tmp_path, task="toutiao", rounds=1, init_from=str(ner))
    state = train_mod.initial_state(train_mod.build_setup(cfg))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 state.server.client, saved["server"]["client"])
    # placed as a fresh run's parameters (not committed to a device): the same compiled round
    assert not any(x.committed for x in jax.tree.leaves(state.server.client))
    head = state.server.server  # toutiao's head is fresh: the NER head has other classes
    assert "cls_head" in head and "cls_head" not in saved["server"]["server"]
    tuned = train(cfg)
    assert np.all(np.isfinite(losses(tuned)))
    mt = tmp_path / "mt"
    train(tiny(tmp_path, task="multi30k", rounds=1, checkpoint_dir=str(mt), max_eval_examples=4))
    code = main(["train", "--task", "toutiao", "--init-from", str(mt), "--no-progress", "--data-dir", str(DATA)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "init-from" in err[0] and "vocabulary" in err[0]


def test_lora_fine_tune_trains_and_uploads_only_the_adapters(tmp_path):
    """lora:4: the frozen base never moves, the adapters do; what is uploaded and counted as
    trainable is the adapters (plus the server head), as cost.py's formula says."""
    cfg = tiny(tmp_path, task="toutiao", rounds=2, tunable="lora:4", model="tiny", **ADAPTIVE)
    setup = train_mod.build_setup(cfg)
    before = train_mod.initial_state(setup).server.client
    assert has_lora(before)
    result = train(cfg)
    model = setup.model_cfg
    assert result["uploaded_bits_per_round"] == pytest.approx(cost.lora_param_bits(model, 4))
    adapters = lora_adapters(before)
    n_adapters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(adapters))
    assert n_adapters == cost.lora_param_count(model, 4)
    ckpt = tmp_path / "lora"
    train(tiny(tmp_path, task="toutiao", rounds=2, tunable="lora:4", checkpoint_dir=str(ckpt), **ADAPTIVE))
    after, _ = Checkpoints(str(ckpt)).restore_raw(1)
    after = after["server"]["client"]
    flat_before = dict(jax.tree_util.tree_leaves_with_path(before))
    moved_adapter = False
    for path, new in jax.tree_util.tree_leaves_with_path(after):
        old = np.asarray(flat_before[path])
        if path[-1].key in ("lora_a", "lora_b"):
            moved_adapter |= not np.array_equal(old, np.asarray(new))
        else:
            np.testing.assert_array_equal(old, np.asarray(new), err_msg=jax.tree_util.keystr(path))
    assert moved_adapter
    server_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(train_mod.initial_state(setup).server.server))
    assert result["trainable_params"] == n_adapters + server_params


def test_recipe_values_and_flags_override(tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"about": "a test recipe", "optimizer": "adamw", "lr": 0.002, "rounds": 7}))
    cfg = config_with_recipe({"recipe": str(recipe), "lr": 0.01})
    assert (cfg.optimizer, cfg.lr, cfg.rounds) == ("adamw", 0.01, 7)
    recipe.write_text(json.dumps({"optimiser": "adamw"}))
    with pytest.raises(ValidationError, match="unknown setting"):
        config_with_recipe({"recipe": str(recipe)})
    with pytest.raises(ValidationError, match="config"):
        config_with_recipe({"recipe": str(tmp_path / "missing.json")})


@pytest.mark.parametrize("changes, field", [
    (dict(local_steps=2, local_epochs=1.0), "local-epochs"),
    (dict(local_steps=0), "local-steps"),
    (dict(optimizer="lamb"), "optimizer"),
    (dict(lr_schedule="step"), "lr-schedule"),
    (dict(clip_norm=0.0), "clip-norm"),
    (dict(dropout=1.0), "dropout"),
    (dict(label_smoothing=-0.1), "label-smoothing"),
    (dict(dtype="float16"), "dtype"),
    (dict(server_optimizer="adagrad"), "server-optimizer"),
    (dict(framework="pipeline", policy=None, server_optimizer="adam"), "server-optimizer"),
    (dict(warmup_steps=-1), "warmup-steps"),
    (dict(client_state="sometimes"), "client-state"),
    (dict(framework="pipeline", policy=None, client_state="average"), "client-state"),
    (dict(server_optimizer="sgd", server_momentum=1.0), "server-momentum"),
    (dict(server_optimizer="sgd", server_momentum=-0.1), "server-momentum"),
    (dict(server_optimizer="adam", server_momentum=0.9), "server-momentum"),
])
def test_new_flags_are_validated(changes, field):
    with pytest.raises(ValidationError, match=field):
        TrainConfig(**{**TINY, **changes})


def test_every_shipped_recipe_is_a_valid_config():
    recipes = sorted(train_mod.RECIPE_DIR.glob("*.json"))
    assert {p.stem.split("-")[0] for p in recipes} >= {"toutiao", "ner", "multi30k"}
    for path in recipes:
        cfg = config_with_recipe({"recipe": path.stem})
        assert cfg.task == path.stem.split("-")[0]  # <task>-[flow-]<scale>
        assert json.loads(path.read_text())["about"]  # each says how it was chosen (or that it was not measured)
