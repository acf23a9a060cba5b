"""LoRA adapters (models/lora.py): identity at init, the rank-R branch by hand, frozen base under
the optimizer, parameter count = formula = cost.py, pipelined == unpipelined with adapters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from collapipe_jax.errors import ValidationError
from collapipe_jax.models import cost, lora, split
from collapipe_jax.models.config import model_preset
from collapipe_jax.models.teb import teb_apply
from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh
from collapipe_jax.pipeline.partition import make_stage_layout
from pipeline_helpers import CFG, RTOL, make_batch, rel_err

RANK = 3


def _params(task="ner", rank=RANK, seed=0):
    params = split.init_split_model(jax.random.key(seed), CFG, task, n_classes=3)
    return params, {**params, "client": lora.add_lora(params["client"], jax.random.key(seed + 1), rank)}


def _trained_b(params, seed=5):
    """Adapters as after some training: B = 0 at init would make the branch (and ∂/∂A) vanish."""
    attn = params["client"]["encoder"]["attn"]
    keys = jax.random.split(jax.random.key(seed), 2)
    new = {n: {**attn[n], "lora_b": 0.3 * jax.random.normal(k, attn[n]["lora_b"].shape)} for n, k in zip(lora.LORA_TARGETS, keys)}
    return {**params, "client": {**params["client"], "encoder": {**params["client"]["encoder"], "attn": {**attn, **new}}}}


def test_adapter_layout_and_init():
    base, adapted = _params()
    attn = adapted["client"]["encoder"]["attn"]
    L, d, h, dh = CFG.n_enc_layers, CFG.d_model, CFG.n_heads, CFG.d_model // CFG.n_heads
    for name in ("query", "value"):
        assert attn[name]["lora_a"].shape == (L, d, RANK) and attn[name]["lora_b"].shape == (L, RANK, h, dh)
        assert (np.asarray(attn[name]["lora_b"]) == 0).all()
        a = np.asarray(attn[name]["lora_a"])
        assert 0.5 < a.std() * np.sqrt(d) < 1.5  # N(0, 1/d)
    assert set(attn["key"]) == set(attn["out"]) == {"kernel", "bias"}
    # the base leaves are returned unchanged
    flat_base, flat_adapted = traverse_util.flatten_dict(base["client"]), traverse_util.flatten_dict(adapted["client"])
    assert set(flat_adapted) - set(flat_base) == {("encoder", "attn", n, leaf) for n in ("query", "value") for leaf in lora.LORA_LEAVES}
    for path, value in flat_base.items():
        assert flat_adapted[path] is value


@pytest.mark.parametrize("task", ["ner", "translation"])
def test_adapter_init_leaves_the_output_unchanged(task):
    base, adapted = _params(task)
    batch = make_batch(5, 2)
    if task == "translation":
        batch = {"tokens": batch["tokens"], "tgt": jnp.roll(batch["tokens"], 1, axis=1).at[:, 0].set(1)}
    loss = jax.jit(split.split_model_loss)
    np.testing.assert_array_equal(np.asarray(loss(adapted, batch)), np.asarray(loss(base, batch)))  # B = 0: exactly


def test_branch_equals_alpha_over_r_times_bax_by_hand():
    _, adapted = _params()
    params = jax.tree.map(lambda a: a[2], _trained_b(adapted)["client"]["encoder"])  # layer 2
    x = jax.random.normal(jax.random.key(3), (2, CFG.seq_len, CFG.d_model))
    ok = jnp.ones((2, CFG.seq_len), bool)
    # the adapted block == the base block with W_q, W_v replaced by W + (α/R)·A B (merged weights)
    merged = jax.tree.map(lambda a: a, params)
    for name in ("query", "value"):
        p = merged["attn"].pop(name)
        delta = np.einsum("dr,rhc->dhc", np.asarray(p["lora_a"], np.float64), np.asarray(p["lora_b"], np.float64))
        merged["attn"][name] = {"kernel": jnp.asarray(np.asarray(p["kernel"], np.float64) + lora.LORA_ALPHA / RANK * delta,
                                                      jnp.float32), "bias": p["bias"]}
    with jax.default_matmul_precision("highest"):
        got, want = jax.jit(teb_apply)(params, x, ok), jax.jit(teb_apply)(merged, x, ok)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    base = {**params, "attn": {k: {n: v for n, v in p.items() if not n.startswith("lora")} for k, p in params["attn"].items()}}
    assert np.abs(np.asarray(teb_apply(base, x, ok)) - np.asarray(got)).max() > 1e-2  # the branch matters


def test_mask_and_frozen_base_get_no_update():
    _, adapted = _params()
    mask = lora.lora_trainable_mask(adapted["client"])
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert sum(flat.values()) == 4 and all(("lora_" in k) == m for k, m in flat.items())
    batch = make_batch(5, 2)
    opt = lora.freeze_base(optax.adam(1e-2))
    client = adapted["client"]
    state = opt.init(client)
    # optimizer state only for the adapters (4 leaves), none for the frozen base
    n_state = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state) if hasattr(x, "shape") and x.ndim > 0)
    assert n_state == 2 * cost.lora_param_count(CFG, RANK)  # adam's two moments

    def loss(c):
        return split.split_model_mean_loss({**adapted, "client": c}, batch)

    @jax.jit
    def step(c, s):
        grads = jax.grad(loss)(c)
        updates, s = opt.update(grads, s, c)
        return optax.apply_updates(c, updates), s, grads

    new, state, grads = step(client, state)
    new, state, _ = step(new, state)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(client)[0]]
    for path, old, upd, m in zip(paths, jax.tree.leaves(client), jax.tree.leaves(new), jax.tree.leaves(mask)):
        if not m:
            np.testing.assert_array_equal(np.asarray(upd), np.asarray(old), err_msg=path)
    # the frozen weights do have gradients: it is the optimizer that keeps them
    assert max(float(jnp.abs(g).max()) for g, m in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if not m) > 1e-3
    b_new = new["encoder"]["attn"]["query"]["lora_b"]
    assert float(jnp.abs(b_new).max()) > 1e-3  # the adapters train (∂/∂B ≠ 0 at B = 0)
    assert float(loss(new)) < float(loss(client))


def test_adapters_split_and_merge():
    _, adapted = _params()
    adapters = lora.lora_adapters(adapted["client"])
    assert set(adapters) == {"encoder"} and set(adapters["encoder"]["attn"]) == {"query", "value"}
    assert sum(x.size for x in jax.tree.leaves(adapters)) == cost.lora_param_count(CFG, RANK)
    doubled = jax.tree.map(lambda a: 2 * a, adapters)
    merged = lora.merge_adapters(adapted["client"], doubled)
    value, old = merged["encoder"]["attn"]["value"], adapted["client"]["encoder"]["attn"]["value"]
    np.testing.assert_array_equal(value["lora_a"], 2 * old["lora_a"])
    assert value["kernel"] is old["kernel"]
    with pytest.raises(ValidationError, match="adapters"):
        lora.merge_adapters(adapted["client"], {"encoder": {"attn": {"key": {"lora_a": 0}}}})


@pytest.mark.parametrize("name, rank", [("paper-bert", 8), ("paper-transformer", 4), ("small", 8)])
def test_parameter_count_equals_formula_and_cost_model(name, rank):
    cfg = model_preset(name)
    params = jax.eval_shape(lambda k: split.init_split_model(k, cfg, "ner", n_classes=3), jax.random.key(0))
    adapted = jax.eval_shape(lambda c, k: lora.add_lora(c, k, rank), params["client"], jax.random.key(1))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(lora.lora_adapters(adapted)))
    L, d = cfg.n_enc_layers, cfg.d_model
    assert count == L * 2 * rank * (d + d) == cost.lora_param_count(cfg, rank)
    assert cost.tunable_param_bits(cfg, f"lora:{rank}") == count * 32
    assert cost.tunable_param_bits(cfg, "full") == cost.encoder_param_bits(cfg)


def test_bert_base_rank_8_is_9_44_mbit():
    bits = cost.lora_param_bits(model_preset("paper-bert"), 8)
    assert bits == 12 * 2 * 8 * (768 + 768) * 32 == 9_437_184
    sizes = cost.model_size_inputs(model_preset("paper-bert"), 8, tunable="lora:8")
    assert sizes["theta_enc_bits"] == bits


@pytest.mark.parametrize("bad", ["lora", "lora:0", "lora:-2", "lora:x", "LoRA:8", "half", 8])
def test_bad_tunable_rejected(bad):
    with pytest.raises(ValidationError, match="tunable"):
        cost.parse_tunable(bad)


def test_bad_add_lora_rejected():
    base, adapted = _params()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValidationError, match="rank"):
            lora.add_lora(base["client"], jax.random.key(0), bad)
    with pytest.raises(ValidationError, match="already"):
        lora.add_lora(adapted["client"], jax.random.key(0), 2)
    with pytest.raises(ValidationError, match="client_params"):
        lora.add_lora(base, jax.random.key(0), 2)


def test_pipelined_equals_unpipelined_with_lora_and_dropout():
    _, adapted = _params()
    params = _trained_b(adapted)
    batch = make_batch(7, 4)
    layout = make_stage_layout([2, 0, 3, 3], order=[3, 1, 2, 0], n_layers=CFG.n_enc_layers)
    mesh = stage_mesh(3, jax.devices()[:3])
    opts = dict(dropout_key=jax.random.key(9), dropout=0.1)

    def adapter_loss(adapters, encoder_fn):
        client = lora.merge_adapters(params["client"], adapters)
        return split.split_model_mean_loss({**params, "client": client}, batch, encoder_fn, **opts)

    adapters = lora.lora_adapters(params["client"])
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(jax.value_and_grad(lambda a: adapter_loss(a, split.encoder_reference)))(adapters)
        got = jax.jit(jax.value_and_grad(lambda a: adapter_loss(a, pipelined_encoder(layout, 3, mesh))))(adapters)
    assert abs(float(got[0]) - float(ref[0])) <= RTOL * abs(float(ref[0]))
    assert rel_err(got[1], ref[1]) <= RTOL
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(ref[1]))  # A and B both get gradients
