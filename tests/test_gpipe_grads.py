"""Pipelined (GPipe, shard_map) loss and gradients equal the unpipelined split model's, 1e-5 relative.

Random uneven δ with zeros, m ∈ {1, 2, 3, 5}, S up to 6, on 8 host devices (one stage per device)
and on small meshes down to one device (stages folded), without and with dropout (per-sample
keys: the pipelined model must draw the unpipelined model's masks). The cases not in the default
suite and the full S × m × mesh × dropout matrix are marked slow (compiles dominate: ~10 s a
case on 2 CPU cores). Matmul precision is pinned to "highest" (the tolerance is fp32's).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.models import split
from collapipe_jax.models.dropout import sample_dropout
from collapipe_jax.models.teb import encoder_reference, init_encoder_stack
from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh
from collapipe_jax.pipeline.partition import make_stage_layout
from devices import host_devices
from pipeline_helpers import CFG, RTOL, make_batch, random_decision, rel_err


@functools.cache
def _reference_step(dropout):
    key = jax.random.key(17) if dropout else None
    return jax.jit(jax.value_and_grad(lambda p, b: split.split_model_mean_loss(p, b, dropout_key=key, dropout=dropout)))


@functools.cache
def _params(task):
    return split.init_split_model(jax.random.key(0), CFG, task, n_classes=3)


def _task_batch(task, n, seed):
    batch = make_batch(n, seed)
    if task == "translation":  # target = the source shifted, BOS first; the last sample weightless
        batch = {"tokens": batch["tokens"], "tgt": jnp.roll(batch["tokens"], 1, axis=1).at[:, 0].set(1)}
        batch["sample_weight"] = jnp.ones((n,)).at[-1].set(0.0)
    elif task == "sentence":
        batch = {"tokens": batch["tokens"], "label": jnp.arange(n) % 3}
    return batch


# (δ over K devices with zeros, n_stages, m, batch size, devices on the mesh)
CASES = [
    pytest.param(dict(seed=1, n_devices=8, n_stages=6, m=5, batch=7, mesh_devices=8), id="8dev-S6-m5-b7"),
    pytest.param(dict(seed=1, n_devices=8, n_stages=6, m=3, batch=7, mesh_devices=1, remat=True), id="1dev-S6-m3-b7-remat"),
    pytest.param(dict(seed=2, n_devices=6, n_stages=5, m=2, batch=7, mesh_devices=8), id="8dev-S5-m2-b7", marks=pytest.mark.slow),
    pytest.param(dict(seed=3, n_devices=4, n_stages=4, m=1, batch=7, mesh_devices=2), id="2dev-S4pad-m1-b7", marks=pytest.mark.slow),
    pytest.param(dict(seed=4, n_devices=5, n_stages=4, m=3, batch=7, mesh_devices=8, task="translation"), id="translation-8dev-S4-m3-b7", marks=pytest.mark.slow),
    pytest.param(dict(seed=5, n_devices=5, n_stages=3, m=2, batch=7, mesh_devices=1, task="sentence"), id="sentence-1dev-S3-m2-b7", marks=pytest.mark.slow),
    pytest.param(dict(seed=2, n_devices=6, n_stages=5, m=2, batch=7, mesh_devices=8, dropout=0.2), id="8dev-S5-m2-b7-dropout"),
    pytest.param(dict(seed=1, n_devices=8, n_stages=6, m=3, batch=7, mesh_devices=1, remat=True, dropout=0.2), id="1dev-S6-m3-b7-remat-dropout", marks=pytest.mark.slow),
    pytest.param(dict(seed=4, n_devices=5, n_stages=4, m=3, batch=7, mesh_devices=8, task="translation", dropout=0.1), id="translation-8dev-S4-m3-b7-dropout", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", CASES)
def test_pipelined_loss_and_grads_equal_unpipelined(case):
    task = case.get("task", "ner")
    params = _params(task)
    delta, order = random_decision(case["seed"], CFG.n_enc_layers, case["n_devices"], case["n_stages"] - 1)
    assert (delta == 0).any() or case["n_devices"] == case["n_stages"]
    layout = make_stage_layout(delta, order, n_stages=case["n_stages"], n_layers=CFG.n_enc_layers)
    mesh = stage_mesh(case["n_stages"], host_devices(case["mesh_devices"]))
    if case["mesh_devices"] == 8:
        assert mesh.size == case["n_stages"]  # one stage per device
    batch = _task_batch(task, case["batch"], case["seed"])
    rate = case.get("dropout", 0.0)
    key = jax.random.key(17) if rate else None
    encoder = pipelined_encoder(layout, case["m"], mesh, remat=case.get("remat", False))
    pipe_loss = lambda p, b: split.split_model_mean_loss(p, b, encoder, dropout_key=key, dropout=rate)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        ref = _reference_step(rate)(params, batch)
        got = jax.jit(jax.value_and_grad(pipe_loss))(params, batch)
    assert abs(float(got[0]) - float(ref[0])) <= RTOL * abs(float(ref[0]))
    assert rel_err(got[1], ref[1]) <= RTOL
    if rate:  # the masks matter: the deterministic model's loss is elsewhere
        plain = jax.jit(split.split_model_mean_loss)(params, batch)
        assert abs(float(plain) - float(ref[0])) > 100 * RTOL * abs(float(ref[0]))


# The full matrix: S = 1..6, m ∈ {1, 2, 3, 5}, one device and 8 host devices, dropout.
@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.0, 0.2])
@pytest.mark.parametrize("mesh_devices", [1, 8])
@pytest.mark.parametrize("n_micro", [1, 2, 3, 5])
@pytest.mark.parametrize("n_stages", [1, 2, 3, 4, 5, 6])
def test_full_matrix_encoder_grads(n_stages, n_micro, mesh_devices, rate):
    n_layers = 7
    stacked = init_encoder_stack(jax.random.key(n_stages), CFG, n_layers)
    delta, order = random_decision(10 * n_stages + n_micro, n_layers, 8, n_stages)
    # keep the first n_stages scheduled devices in order; give the rest of the layers to the last
    scheduled = [k for k in order if delta[k] > 0][:n_stages]
    new_delta = np.zeros(8, int)
    new_delta[scheduled] = delta[scheduled]
    new_delta[scheduled[-1]] += n_layers - new_delta.sum()
    layout = make_stage_layout(new_delta, order, n_layers=n_layers)
    assert layout.n_stages == n_stages
    mesh = stage_mesh(n_stages, host_devices(mesh_devices))
    x = jax.random.normal(jax.random.key(1), (7, CFG.seq_len, CFG.d_model))
    pad = jnp.arange(CFG.seq_len)[None] < jnp.array([6, 2, 4, 1, 6, 3, 5])[:, None]
    w = jax.random.normal(jax.random.key(2), x.shape)
    drop = sample_dropout(jax.random.key(3), 7, rate)
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(w * encoder_reference(p, x, pad, drop)), argnums=(0, 1)))(stacked, x)
        pipe = lambda p, x: jnp.sum(w * pipelined_encoder(layout, n_micro, mesh)(p, x, pad, drop))  # noqa: E731
        got = jax.jit(jax.value_and_grad(pipe, argnums=(0, 1)))(stacked, x)
    # Σ w·out cancels (random signs), so its error is measured against Σ|w| (|out| ~ 1 after LN)
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=RTOL * float(jnp.sum(jnp.abs(w))))
    assert rel_err(got[1], ref[1]) <= RTOL
