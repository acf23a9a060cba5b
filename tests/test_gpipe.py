"""GPipe through shard_map equals the unpipelined model: loss, gradients, schedule, vmap over clusters.

Runs on the 8 host CPU devices of tests/conftest.py and on one-device meshes (stages folded).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.models.teb import encoder_reference, init_encoder_stack
from collapipe_jax.pipeline.gpipe import gpipe_encoder, gpipe_ticks, stage_mesh
from collapipe_jax.pipeline.partition import make_stage_layout, stack_layouts, to_stages
from devices import host_devices
from pipeline_helpers import CFG, RTOL, rel_err

reference = jax.jit(encoder_reference)  # compiled once per shape (eager scans recompile per call)


def _trace_pattern(n_stages, n_micro):
    """Independent GPipe schedule: stage j busy at tick t iff it has micro-batch t − j."""
    ticks = n_stages + n_micro - 1
    return np.array([[0 <= t - j < n_micro for j in range(n_stages)] for t in range(ticks)])


@pytest.mark.parametrize("n_micro, mesh_devices", [(3, 2), (1, 1), (5, 4)])
def test_schedule_has_s_plus_m_minus_1_ticks(n_micro, mesh_devices):
    stacked = init_encoder_stack(jax.random.key(0), CFG)
    layout = make_stage_layout([3, 0, 2, 1, 2], order=[4, 0, 1, 3, 2], n_layers=8)  # S = 4
    x = jax.random.normal(jax.random.key(1), (6, CFG.seq_len, CFG.d_model))
    pad = jnp.arange(CFG.seq_len)[None] < jnp.array([6, 2, 4, 1, 6, 3])[:, None]
    mesh = stage_mesh(4, host_devices(mesh_devices))
    out, active = jax.jit(
        lambda s, x, m: gpipe_encoder(s, layout.slot_mask, x, m, n_micro=n_micro, mesh=mesh, return_trace=True)
    )(to_stages(stacked, layout), x, pad)
    assert active.shape == (gpipe_ticks(4, n_micro), 4) == (4 + n_micro - 1, 4)
    np.testing.assert_array_equal(active, _trace_pattern(4, n_micro))
    assert (np.asarray(active).sum(axis=0) == n_micro).all()  # every stage sees every micro-batch once
    np.testing.assert_allclose(out, reference(stacked, x, pad), rtol=RTOL, atol=1e-5)


def test_masked_slots_change_nothing():
    stacked = init_encoder_stack(jax.random.key(0), CFG)
    layout = make_stage_layout([1, 4, 0, 3], order=[2, 3, 1, 0], n_stages=4, n_slots=5)
    mask = np.asarray(layout.slot_mask)
    staged = jax.tree.map(np.asarray, to_stages(stacked, layout))
    # fill every masked slot with large garbage instead of the copy of layer 0 (numpy: cheap)
    rng = np.random.default_rng(7)
    expand = lambda p: mask.reshape(mask.shape + (1,) * (p.ndim - 2))  # noqa: E731
    dirty = jax.tree.map(lambda s: np.where(expand(s), s, 50.0 * rng.standard_normal(s.shape)).astype(s.dtype), staged)
    x = jax.random.normal(jax.random.key(1), (4, CFG.seq_len, CFG.d_model))
    pad = jnp.ones((4, CFG.seq_len), bool).at[1, 3:].set(False)
    w = jax.random.normal(jax.random.key(2), x.shape)
    mesh = stage_mesh(4, host_devices(2))
    loss = lambda s: jnp.sum(w * gpipe_encoder(s, mask, x, pad, n_micro=2, mesh=mesh))  # noqa: E731
    (l_clean, g_clean), (l_dirty, g_dirty) = map(jax.jit(jax.value_and_grad(loss)), (staged, dirty))
    # Σ w·out cancels (random signs), so its error is measured against Σ|w| (|out| ~ 1 after LN)
    scale = float(jnp.sum(jnp.abs(w)))
    np.testing.assert_allclose(l_dirty, l_clean, rtol=0, atol=1e-7 * scale)
    np.testing.assert_allclose(l_clean, jnp.sum(w * reference(stacked, x, pad)), rtol=0, atol=RTOL * scale)
    for g_c, g_d in zip(jax.tree.leaves(g_clean), jax.tree.leaves(g_dirty)):
        g_c, g_d = np.asarray(g_c), np.asarray(g_d)
        np.testing.assert_allclose(g_d, g_c, rtol=1e-5, atol=1e-6)
        assert np.abs(np.where(expand(g_d), 0.0, g_d)).max() == 0.0  # masked slots: zero gradient


def test_vmap_over_clusters_equals_python_loop():
    stacked = init_encoder_stack(jax.random.key(0), CFG)
    decisions = [([3, 0, 2, 3], [0, 1, 2, 3]), ([1, 1, 6], [2, 0, 1]), ([2, 6], [1, 0])]
    layouts = [make_stage_layout(d, o, n_stages=3, n_slots=6, n_layers=8) for d, o in decisions]
    stacked_layouts = stack_layouts(layouts)
    xs = jax.random.normal(jax.random.key(1), (3, 5, CFG.seq_len, CFG.d_model))
    pads = jnp.arange(CFG.seq_len)[None, None] < jax.random.randint(jax.random.key(2), (3, 5, 1), 1, 7)
    w = jax.random.normal(jax.random.key(3), xs.shape)
    mesh = stage_mesh(3)

    def cluster_out(params, lay, x, pad):
        return gpipe_encoder(to_stages(params, lay), lay.slot_mask, x, pad, n_micro=2, mesh=mesh)

    # forward: vmapped over the cluster axis == the same function in a Python loop (== unpipelined)
    outs = jax.jit(jax.vmap(cluster_out, (None, 0, 0, 0)))(stacked, stacked_layouts, xs, pads)
    one = jax.jit(cluster_out)
    for c, lay in enumerate(layouts):
        np.testing.assert_allclose(outs[c], one(stacked, lay, xs[c], pads[c]), rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(outs[c], reference(stacked, xs[c], pads[c]), rtol=RTOL, atol=1e-5)

    # gradient of Σ_clusters w·out w.r.t. the shared [L, ...] params == Σ over a loop of the
    # unpipelined clusters' gradients
    def vmapped_loss(p):
        return jnp.sum(w * jax.vmap(cluster_out, (None, 0, 0, 0))(p, stacked_layouts, xs, pads))

    loss_v, grad_v = jax.jit(jax.value_and_grad(vmapped_loss))(stacked)
    ref_step = jax.jit(jax.value_and_grad(lambda p, x, pad, w: jnp.sum(w * encoder_reference(p, x, pad))))
    per_cluster = [ref_step(stacked, xs[c], pads[c], w[c]) for c in range(3)]
    np.testing.assert_allclose(float(loss_v), sum(float(l) for l, _ in per_cluster), rtol=0, atol=RTOL * float(jnp.sum(jnp.abs(w))))
    grad_loop = jax.tree.map(lambda *gs: sum(gs), *[g for _, g in per_cluster])
    assert rel_err(grad_v, grad_loop) <= RTOL


def test_stage_mesh_sizes():
    devs = host_devices()
    assert len(devs) == 8
    assert stage_mesh(6, devs).size == 6
    assert stage_mesh(12, devs).size == 6  # largest divisor of 12 that is <= 8
    assert stage_mesh(5, devs[:4]).size == 1
    assert stage_mesh(4, devs[:3]).size == 2
    assert stage_mesh(7, devs).size == 7
    default = stage_mesh(12)  # no devices given: the default backend's
    assert set(default.devices.flat) <= set(jax.devices()) and 12 % default.size == 0
    with pytest.raises(ValidationError, match="n_stages"):
        stage_mesh(0)


def test_bad_arguments_rejected():
    stacked = init_encoder_stack(jax.random.key(0), CFG, 4)
    layout = make_stage_layout([2, 2])
    x = jnp.zeros((2, CFG.seq_len, CFG.d_model))
    pad = jnp.ones((2, CFG.seq_len), bool)
    staged = to_stages(stacked, layout)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValidationError, match="n_micro"):
            gpipe_encoder(staged, layout.slot_mask, x, pad, n_micro=bad)
    with pytest.raises(ValidationError, match="mesh"):
        gpipe_encoder(staged, layout.slot_mask, x, pad, n_micro=1, mesh=stage_mesh(3, host_devices()))
