"""Stage layout: hand-worked example, lossless round trip, gradients through the gather, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.pipeline.partition import (
    from_stages,
    make_stage_layout,
    padding_overhead,
    stack_layouts,
    to_stages,
)


def _params(n_layers, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (n_layers, 3, 2)), "b": {"c": jax.random.normal(k2, (n_layers, 4))}}


def _random_decision(rng, n_layers, n_devices):
    cuts = np.sort(rng.integers(0, n_layers + 1, n_devices - 1))
    delta = np.diff(np.concatenate([[0], cuts, [n_layers]]))  # uneven, zeros allowed, Σ = L
    return delta, rng.permutation(n_devices)


def test_hand_worked_layout():
    # devices 0..3 with δ = (2, 0, 1, 3), pipeline order 3 → 1 → 0 → 2; device 1 holds nothing
    lay = make_stage_layout([2, 0, 1, 3], order=[3, 1, 0, 2], n_stages=4, n_layers=6)
    np.testing.assert_array_equal(lay.layer_index, [[0, 1, 2], [3, 4, 0], [5, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(
        lay.slot_mask, [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]]
    )
    np.testing.assert_array_equal(lay.stage_device, [3, 0, 2, -1])
    assert (lay.n_stages, lay.n_slots) == (4, 3)
    over = padding_overhead(lay)
    assert over["S"] == 3 and over["L"] == 6
    assert over["all_slots_over_L"] == pytest.approx(12 / 6)
    assert over["active_stage_slots_over_L"] == pytest.approx(9 / 6)


def test_default_order_and_sizes():
    lay = make_stage_layout([1, 3])
    np.testing.assert_array_equal(lay.layer_index, [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_array_equal(lay.slot_mask, [[1, 0, 0], [1, 1, 1]])


@pytest.mark.parametrize("seed", range(6))
def test_round_trip_and_layer_order(seed):
    rng = np.random.default_rng(seed)
    n_layers, n_devices = int(rng.integers(1, 13)), int(rng.integers(1, 7))
    delta, order = _random_decision(rng, n_layers, n_devices)
    extra_stages, extra_slots = int(rng.integers(0, 2)), int(rng.integers(0, 2))
    s = int((delta > 0).sum())
    lay = make_stage_layout(delta, order, n_stages=s + extra_stages, n_slots=int(delta.max()) + extra_slots)
    params = _params(n_layers, seed)
    staged = to_stages(params, lay)
    back = from_stages(staged, lay, n_layers)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, back)
    # reading the real slots stage by stage, slot by slot gives layers 0..L-1 in order
    mask = np.asarray(lay.slot_mask)
    seq = np.asarray(staged["w"])[mask]
    np.testing.assert_array_equal(seq, np.asarray(params["w"]))
    # each scheduled device's stage holds exactly δ_k layers
    for j, k in enumerate(np.asarray(lay.stage_device)):
        assert mask[j].sum() == (0 if k < 0 else delta[k])


def test_gradient_flows_back_to_unstacked_params():
    lay = make_stage_layout([2, 0, 1, 3], order=[3, 1, 0, 2], n_stages=4)
    params = _params(6)
    coef = jax.random.normal(jax.random.key(5), (4, 3, 3, 2))
    grad = jax.grad(lambda p: jnp.sum(coef * to_stages(p, lay)["w"]))(params)["w"]
    want = np.zeros((6, 3, 2))
    for j in range(4):
        for i in range(3):
            want[lay.layer_index[j, i]] += np.asarray(coef[j, i])  # a gather's adjoint adds up
    np.testing.assert_allclose(grad, want, rtol=1e-6)


def test_vmap_over_cluster_layouts_equals_loop():
    lays = [
        make_stage_layout([2, 0, 1, 3], order=[3, 1, 0, 2], n_stages=4, n_slots=3),
        make_stage_layout([3, 3], n_stages=4, n_slots=3),
        make_stage_layout([1, 1, 1, 3], n_stages=4, n_slots=3),
    ]
    params = _params(6)
    stacked = stack_layouts(lays)
    batched = jax.jit(jax.vmap(to_stages, in_axes=(None, 0)))(params, stacked)
    back = jax.vmap(from_stages, in_axes=(0, 0, None))(batched, stacked, 6)
    for c, lay in enumerate(lays):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[c], b), batched, to_stages(params, lay))
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[c], b), back, params)
    with pytest.raises(ValidationError, match="layouts"):
        stack_layouts([lays[0], make_stage_layout([6])])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(delta=[2, -1, 5]), "delta"),
        (dict(delta=[2, 2], n_layers=6), "delta"),
        (dict(delta=[0, 0]), "delta"),
        (dict(delta=[]), "delta"),
        (dict(delta=[1.5, 2.5]), "delta"),
        (dict(delta=[float("nan"), 2]), "delta"),
        (dict(delta=[[1, 2]]), "delta"),
        (dict(delta=[2, 2], order=[0]), "order"),
        (dict(delta=[2, 2], order=[0, 0, 1]), "order"),
        (dict(delta=[2, 2], order=[0, 2]), "order"),
        (dict(delta=[2, 2, 1], n_stages=2), "n_stages"),
        (dict(delta=[2, 3], n_slots=2), "n_slots"),
    ],
)
def test_bad_decisions_rejected(kwargs, field):
    with pytest.raises(ValidationError) as err:
        make_stage_layout(**kwargs)
    assert err.value.field == field


def test_whole_float_delta_accepted():
    lay = make_stage_layout(np.array([2.0, 0.0, 1.0]), n_layers=3)
    np.testing.assert_array_equal(lay.layer_index, [[0, 1], [2, 0]])
