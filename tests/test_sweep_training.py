"""The training sweep's settings and its NER → Toutiao rows (the paper's flow)."""

import dataclasses
import json

import pytest

from collapipe_jax.sweep import training
from collapipe_jax.tasks.data import resolve_data_dir
from collapipe_jax.train import TrainConfig, config_with_recipe

DATA = resolve_data_dir()


class SilentProgress:
    def __call__(self, n: int = 1) -> None:
        pass

    def expect(self, n: int) -> None:
        pass


def test_quick_toutiao_is_one_setting_for_every_framework():
    configs = {f: training.framework_config("toutiao", f, "quick", seed=1)
               for f in (*training.FRAMEWORKS, "centralized")}
    settings = {f: {k: v for k, v in dataclasses.asdict(c).items() if k != "framework"} for f, c in configs.items()}
    assert all(s == settings["collapipe"] for s in settings.values())
    cfg = configs["collapipe"]
    # enough test titles for a 95% interval of about ±2 points at an accuracy of 0.6
    assert 1.96 * (0.6 * 0.4 / cfg.max_eval_examples) ** 0.5 <= 0.022


def test_transfer_runs_are_the_finetune_recipes_with_the_scratch_rounds():
    scratch = training.framework_config("toutiao", "collapipe", "paper", seed=3)
    runs = training.transfer_configs(scratch, "/tmp/ner-run")
    assert set(runs) == {"ner-full", "ner-lora:8"}
    for start, recipe in (("ner-full", "toutiao-finetune-cpu"), ("ner-lora:8", "toutiao-lora-cpu")):
        expected = config_with_recipe({"recipe": recipe, "framework": "collapipe", "seed": 3, "progress": True,
                                       "rounds": scratch.rounds, "eval_every": scratch.eval_every,
                                       "init_from": "/tmp/ner-run"})
        assert dataclasses.replace(runs[start], recipe=None) == dataclasses.replace(expected, recipe=None)
    ner = training.ner_pretrain_config("paper", DATA.parent / "sweep-out")
    assert ner.checkpoint_dir == ner.log_dir == str(DATA.parent / "sweep-out" / "ner-pretrain")
    assert dataclasses.replace(ner, checkpoint_dir=None, log_dir=None) == config_with_recipe(
        {"recipe": "ner-cpu", "task": "ner", "framework": "collapipe", "progress": True, "seed": 0})


def fake_result(accuracy: float) -> dict:
    return {"model": "tiny", "rounds": [{"loss": 1.0, "wall_s": 0.5}], "final_metrics": {"accuracy": accuracy,
                                                                                          "entity_f1": 0.3}}


def test_transfer_pretrains_ner_once_then_starts_every_seed_from_it(tmp_path, monkeypatch):
    pretrained, finetuned = [], []

    def fake_pretrain(cfg):
        pretrained.append(cfg)
        (tmp_path / "ner-pretrain").mkdir()
        (tmp_path / "ner-pretrain" / "result.json").write_text(json.dumps(fake_result(0.0)))
        return fake_result(0.0)

    def fake_cached_train(cache, cfg):
        finetuned.append(cfg)
        return fake_result({None: 0.5, "lora:8": 0.25}[cfg.tunable] + cfg.seed / 100)

    monkeypatch.setattr(training, "train", fake_pretrain)
    monkeypatch.setattr(training, "cached_train", fake_cached_train)
    ner_cfg = TrainConfig(task="ner", checkpoint_dir=str(tmp_path / "ner-pretrain"), progress=False)
    scratch = [TrainConfig(task="toutiao", rounds=7, seed=s, progress=False) for s in (0, 1)]
    rows = training.transfer_rows(tmp_path, ner_cfg, scratch, SilentProgress())
    assert len(pretrained) == 1 and not pretrained[0].resume  # nothing to resume in a fresh folder
    assert [(c.seed, c.tunable, c.init_from, c.rounds) for c in finetuned] == [
        (s, t, str(tmp_path / "ner-pretrain"), 7) for s in (0, 1) for t in (None, "lora:8")]
    assert [(r["start"], r["seed"], r["tunable"], r["final_accuracy"]) for r in rows] == [
        ("ner-full", 0, "full", 0.5), ("ner-lora:8", 0, "lora:8", 0.25),
        ("ner-full", 1, "full", 0.51), ("ner-lora:8", 1, "lora:8", 0.26)]
    training.transfer_rows(tmp_path, ner_cfg, scratch, SilentProgress())
    assert len(pretrained) == 1  # the finished NER run (its result.json) is reused
    finals = [{"task": "toutiao", "framework": "collapipe", "seed": s, "final_accuracy": 0.6} for s in (0, 1)]
    note = training.transfer_finding({"training-final": finals, "training-transfer": rows})
    assert "ner-full 0.505" in note and "ner-lora:8 0.255" in note and "from scratch 0.6 " in note
    assert "scale only" in training.transfer_finding({"training-final": finals})


@pytest.mark.slow
def test_transfer_rows_train_from_a_real_ner_checkpoint(tmp_path):
    tiny = dict(rounds=1, batch=4, clusters=2, micro_batches=2, max_examples=24, max_eval_examples=8, seq_len=16,
                policy="default", no_pipeline=True, data_dir=str(DATA), cache_dir=str(tmp_path / "cache"),
                progress=False)
    run_dir = str(tmp_path / "ner-pretrain")
    ner_cfg = TrainConfig(task="ner", checkpoint_dir=run_dir, log_dir=run_dir, **tiny)
    scratch = [TrainConfig(task="toutiao", **tiny)]
    rows = training.transfer_rows(tmp_path, ner_cfg, scratch, SilentProgress())
    assert [(r["start"], r["tunable"]) for r in rows] == [("ner-full", "full"), ("ner-lora:8", "lora:8")]
    assert all(0.0 <= r["final_accuracy"] <= 1.0 and r["ner_rounds"] == 1 for r in rows)
    lora = json.loads((tmp_path / "runs" / "toutiao-from-ner-lora8-seed0.json").read_text())
    full = json.loads((tmp_path / "runs" / "toutiao-from-ner-full-seed0.json").read_text())
    assert lora["trainable_params"] < full["trainable_params"]


@pytest.mark.parametrize("task", training.TASKS)
def test_quick_settings_are_one_setting_per_task_for_every_framework(task):
    configs = [training.framework_config(task, f, "quick", seed=2) for f in (*training.FRAMEWORKS, "centralized")]
    settings = [{k: v for k, v in dataclasses.asdict(c).items() if k != "framework"} for c in configs]
    assert all(s == settings[0] for s in settings) and configs[0].seed == 2
    assert {k: v for k, v in settings[0].items() if k in training.QUICK_TASK[task]} == {
        k: v for k, v in training.QUICK_TASK[task].items()}


def test_learning_vs_s_m_runs_each_plan_under_each_available_reading():
    assert training.schedules_available()[0] == "gpipe"
    assert set(training.schedules_available()) <= set(training.SCHEDULES)
    assert (2, 2) in training.sm_plans("multi30k", "quick") and (2, 2) in training.sm_plans("multi30k", "paper")
    ner = training.sm_plans("ner", "quick")  # Fig. 10: the smallest and largest m at the largest S
    assert max(S for S, _ in ner) == 4 and {m for S, m in ner if S == 4} >= {1, 4}
    for schedule in training.schedules_available():
        cfg = training.sm_config("ner", 4, 1, "quick", seed=1, schedule=schedule)
        assert (cfg.plan_stages, cfg.plan_micro_batches, cfg.micro_batches, cfg.policy) == (4, 1, 1, "default")
        assert cfg.pipelined == (schedule == "pipedream")  # gpipe's shared computation runs unsegmented
        assert getattr(cfg, training.SCHEDULE_FIELD, "gpipe") == schedule
    if "pipedream" not in training.schedules_available():
        with pytest.raises(ValueError, match="pipeline_schedule"):
            training.sm_config("ner", 4, 1, "quick", schedule="pipedream")


def tiny_sm_config(tmp_path):
    """A stand-in for `training.sm_config`: one plan's run of a tiny NER model (2 rounds of 1 step)."""
    tiny = dict(task="ner", model="tiny", rounds=2, local_steps=1, batch=4, clusters=2, max_examples=24,
                max_eval_examples=8, eval_every=2, seq_len=16, data_dir=str(DATA), cache_dir=str(tmp_path / "cache"),
                policy="default", progress=False)

    def tiny_config(task, S, m, scale, seed=0, schedule="gpipe"):
        return training.with_schedule(TrainConfig(**tiny, plan_stages=S, plan_micro_batches=m, micro_batches=m,
                                                  seed=seed, log_dir=str(tmp_path / f"log-{S}-{m}-{schedule}")),
                                      schedule)

    return tiny_config


@pytest.mark.slow
def test_gpipe_plans_of_a_seed_share_one_training_computation(tmp_path, monkeypatch):
    """The first plan trains; the second takes its losses with its own host rounds, and equals
    the second plan trained by itself: the same decisions and latency, losses equal to float
    round-off (synchronous GPipe: the gradient does not depend on S and m)."""
    tiny_config = tiny_sm_config(tmp_path)
    trained = []
    real_train = training.cached_train
    monkeypatch.setattr(training, "sm_config", tiny_config)
    monkeypatch.setattr(training, "SM_PLANS", {"quick": ((1, 2), (2, 1))})
    monkeypatch.setattr(training, "cached_train", lambda cache, cfg: trained.append(cfg) or real_train(cache, cfg))
    results = training.plan_results("ner", "quick", 0, "gpipe", tmp_path, SilentProgress())
    assert [(c.plan_stages, c.plan_micro_batches) for c in trained] == [(1, 2)]  # one computation
    shared = results[(2, 1)]
    assert shared["shared_with"] == {"S": 1, "m": 2}
    own = training.train(tiny_config("ner", 2, 1, "quick", schedule="gpipe"))
    for a, b in zip(shared["rounds"], own["rounds"]):
        assert a["decision"] == b["decision"] and a["tau_round_s"] == b["tau_round_s"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert shared["total_latency_s"] == own["total_latency_s"] != results[(1, 2)]["total_latency_s"]


@pytest.mark.slow
@pytest.mark.skipif("pipedream" not in training.schedules_available(), reason="no pipeline_schedule field")
def test_pipedream_plans_each_train_and_learn_differently(tmp_path, monkeypatch):
    tiny_config = tiny_sm_config(tmp_path)
    monkeypatch.setattr(training, "sm_config", tiny_config)
    monkeypatch.setattr(training, "SM_PLANS", {"quick": ((1, 2), (4, 2))})
    results = training.plan_results("ner", "quick", 0, "pipedream", tmp_path, SilentProgress())
    assert all("shared_with" not in r for r in results.values())
    assert results[(1, 2)]["rounds"][-1]["loss"] != results[(4, 2)]["rounds"][-1]["loss"]  # stale weights at S = 4
