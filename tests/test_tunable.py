"""`tunable = lora:R`: the adapter size, what the state uploads, and Table II running as published."""

import json

import jax
import numpy as np
import pytest

from collapipe_jax.cli import main
from collapipe_jax.errors import ValidationError
from collapipe_jax.federated import program
from collapipe_jax.models import cost
from collapipe_jax.models.config import model_preset
from collapipe_jax.scenario import Scenario, draw_state, round_key, scenario_preset
from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule


def test_adapter_size_by_hand():
    # BERT-base, R = 8: 12 TEBs x 2 projections x 8 x (768 + 768) fp32 values
    assert cost.lora_param_count(model_preset("paper-bert"), 8) == 12 * 2 * 8 * (768 + 768)
    s = scenario_preset("paper-bert").replace(tunable="lora:8")
    assert s.uploaded_theta_bits == 12 * 2 * 8 * 1536 * 32 == 9_437_184  # ≈ 9.44 Mbit
    assert float(draw_state(s, round_key(0, 0)).theta_enc_bits) == 9_437_184
    # the full upload and z^enc are untouched
    full = scenario_preset("paper-bert")
    assert full.uploaded_theta_bits == full.theta_enc_bits == cost.encoder_param_bits(model_preset("paper-bert"))
    assert float(draw_state(s, round_key(0, 0)).z_enc_bits) == full.z_enc_bits
    # the scenario's L, not the model's depth, counts the TEBs
    assert scenario_preset("paper-bert").replace(tunable="lora:2", L=6).uploaded_theta_bits == 6 * 2 * 2 * 1536 * 32


@pytest.mark.parametrize("rank", [1, 4])
def test_adapter_count_matches_the_models_query_and_value_projections(rank):
    """R (d_in + d_out) per query/value kernel of the real Flax encoder, summed over the TEBs."""
    cfg = model_preset("tiny")
    params = program.jitted_init(cfg, "sentence", 5)(jax.random.PRNGKey(0))["client"]
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        key = jax.tree_util.keystr(path)
        if key.endswith("['kernel']") and ("['query']" in key or "['value']" in key):
            layers, d_in, *out = leaf.shape  # [L, d, heads, head_dim]
            total += layers * rank * (d_in + int(np.prod(out)))
    assert total > 0 and cost.lora_param_count(cfg, rank) == total


@pytest.mark.parametrize("bad", ["lora", "lora:0", "lora:-1", "lora:x", "LORA:8", "lora:8.0", "", 8, None])
def test_bad_tunable_is_one_clear_error(bad):
    with pytest.raises(ValidationError) as err:
        Scenario(tunable=bad)
    assert "tunable" in str(err.value)


def test_tunable_in_scenario_json_round_trip(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"preset": "paper-bert", "tunable": "lora:4"}))
    s = Scenario.from_json(path)
    assert s.tunable == "lora:4" and s.uploaded_theta_bits == 12 * 2 * 4 * 1536 * 32
    s.to_json(tmp_path / "t.json")
    assert Scenario.from_json(tmp_path / "t.json") == s
    with pytest.raises(ValidationError, match="model"):  # an unknown model: no width for the adapter size
        Scenario(model="my-own-model", tunable="lora:8")


@pytest.mark.parametrize("preset", ["paper-bert", "paper-transformer"])
@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_table_ii_runs_as_published_with_lora8(preset, variant):
    """The full encoder needs ≥ 60 J per upload against E_n^max = 10 J (C11'); the adapters fit."""
    out = run_schedule(scenario_preset(preset), ScheduleConfig(rounds=3, variant=variant, tunable="lora:8",
                                                               progress=False))
    assert out["tunable"] == "lora:8"
    for r in out["rounds"]:
        assert r["violations"] == []
        assert r["inputs"]["theta_enc_bits"] == scenario_preset(preset).replace(tunable="lora:8").uploaded_theta_bits
        uploading = [n for n, c in enumerate(r["channel"]) if c is not None]
        assert len(uploading) == 3


def test_cli_tunable(capsys):
    assert main(["latency", "--preset", "paper-bert", "--tunable", "lora:8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tunable"] == "lora:8" and out["inputs"]["theta_enc_bits"] == 9_437_184
    assert out["violations"] == []  # the default decision at P_max: ≈ 3 J per upload
    assert max(out["E_com_j"]) < 10.0
    assert main(["latency", "--preset", "paper-bert", "--json"]) == 0
    assert {v["constraint"] for v in json.loads(capsys.readouterr().out)["violations"]} == {"C11'"}
    assert main(["schedule", "--preset", "paper-bert", "--tunable", "lora:8", "--rounds", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(r["violations"] == [] for r in out["rounds"])
    assert main(["sensitivity", "--tunable", "lora:8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tunable"] == "lora:8"
    for command in (["latency"], ["schedule", "--rounds", "1"], ["train"], ["sweep", "latency-vs-power"]):
        assert main(command + ["--tunable", "lora:zero"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "tunable" in err[0]


def test_train_passes_tunable_into_the_scenario(tmp_path):
    from collapipe_jax.train import TrainConfig, build_setup

    setup = build_setup(TrainConfig(task="toutiao", model="tiny", tunable="lora:2", max_examples=40,
                                    max_eval_examples=8, data_dir=None))
    cfg = setup.model_cfg
    assert setup.scenario.tunable == "lora:2"
    assert setup.scenario.uploaded_theta_bits == cfg.n_enc_layers * 2 * 2 * 2 * cfg.d_model * 32
