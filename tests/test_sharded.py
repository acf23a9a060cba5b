"""Sharded evaluation over 8 host devices (and the default backend's devices) equals the
single-device result and the per-configuration loop."""

import jax
import numpy as np
import pytest

from collapipe_jax.scenario import scenario_preset
from collapipe_jax.system import evaluate
from collapipe_jax.system.sharded import batch_mesh, evaluate_sharded, stack
from devices import default_devices_dividing, host_devices
from test_system import _random_batch

# 8 host CPU devices always; on a GPU/TPU run also every accelerator device
MESHES = ["host"] + ([] if jax.default_backend() == "cpu" else ["default"])


@pytest.mark.parametrize("where", MESHES)
@pytest.mark.parametrize("batch", [16, 13])  # 13: padded to a multiple of the device count
def test_sharded_equals_single_device(batch, where):
    devices = host_devices() if where == "host" else jax.devices()
    assert where != "host" or len(devices) == 8
    scenario = scenario_preset("paper-bert")
    states, decisions = _random_batch(scenario, batch, seed=2)
    states, decisions = stack(states), stack(decisions)
    sharded = evaluate_sharded(states, decisions, "consistent", mesh=batch_mesh(devices))
    single = evaluate_sharded(states, decisions, "consistent", mesh=batch_mesh(devices[:1]))
    loop = [evaluate(jax.tree.map(lambda x: x[i], states), jax.tree.map(lambda x: x[i], decisions), "consistent")
            for i in range(batch)]
    assert sharded.tau_round_s.shape == (batch,)
    assert len(sharded.tau_round_s.sharding.device_set) == len(devices)
    for name in ("tau_round_s", "tau_pipe_s", "E_sch_j", "Gamma"):
        np.testing.assert_allclose(getattr(sharded, name), getattr(single, name), rtol=1e-6)
        np.testing.assert_allclose(getattr(sharded, name), np.stack([getattr(m, name) for m in loop]), rtol=1e-6)


def test_chunked_power_grad_equals_per_configuration_grad():
    from collapipe_jax.system import round_latency_of_power
    from collapipe_jax.system.sharded import chunked_power_grad, from_chunks, to_chunks

    scenario = scenario_preset("paper-transformer")
    states, decisions = _random_batch(scenario, 16, seed=6)
    states, decisions = stack(states), stack(decisions)
    fn = chunked_power_grad(batch_mesh(default_devices_dividing(8)), "paper")  # 8 chunks of 2
    tau, grad = from_chunks(fn(to_chunks((states, decisions), 2)))
    for i in range(16):
        s, d = jax.tree.map(lambda x: x[i], states), jax.tree.map(lambda x: x[i], decisions)
        expected = jax.grad(round_latency_of_power)(d.p_n_w, s, d)
        np.testing.assert_allclose(grad[i], expected, rtol=1e-5)
        np.testing.assert_allclose(tau[i], evaluate(s, d).tau_round_s, rtol=1e-6)


def test_chunked_summary_fields_equal_full_metrics():
    from collapipe_jax.system.sharded import SUMMARY_FIELDS, chunked_evaluator, from_chunks, to_chunks

    scenario = scenario_preset("paper-bert")
    states, decisions = _random_batch(scenario, 8, seed=7)
    states, decisions = stack(states), stack(decisions)
    fn, sharding = chunked_evaluator(batch_mesh(default_devices_dividing(8)), "paper", SUMMARY_FIELDS)
    out = from_chunks(fn(jax.device_put(to_chunks((states, decisions), 1), sharding)))
    full = jax.vmap(lambda s, d: evaluate(s, d))(states, decisions)
    assert sorted(out) == sorted(SUMMARY_FIELDS)
    for name in SUMMARY_FIELDS:
        np.testing.assert_allclose(out[name], getattr(full, name), rtol=1e-6)
