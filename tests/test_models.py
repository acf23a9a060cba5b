"""Flax TEB, Transformer and BERT split models against independent computations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from collapipe_jax.errors import ValidationError
from collapipe_jax.models import bert, split, transformer
from collapipe_jax.models.config import ModelConfig, model_preset
from collapipe_jax.models.cost import teb_param_count
from collapipe_jax.models.dropout import SampleDropout
from collapipe_jax.models.dropout import dropout as dropout_fn
from collapipe_jax.models.teb import encoder_reference, init_encoder_stack, init_teb, segment_apply, teb_apply

CFG = ModelConfig("test", d_model=16, n_heads=2, d_ff=24, n_enc_layers=3, n_dec_layers=2, seq_len=6, vocab_size=23)


def _layer_norm(x, p, eps=1e-6):  # flax LayerNorm default epsilon
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _numpy_teb(p, x, ok):
    """The post-LN TEB written out in float64 numpy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    a = p["attn"]
    q = np.einsum("bsd,dhc->bshc", x, a["query"]["kernel"]) + a["query"]["bias"]
    k = np.einsum("bsd,dhc->bshc", x, a["key"]["kernel"]) + a["key"]["bias"]
    v = np.einsum("bsd,dhc->bshc", x, a["value"]["kernel"]) + a["value"]["bias"]
    scores = np.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(ok[:, None, None, :], scores, -1e9)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = np.einsum("bhqk,bkhc->bqhc", probs, v)
    y = _layer_norm(x + np.einsum("bqhc,hcd->bqd", ctx, a["out"]["kernel"]) + a["out"]["bias"], p["ln_attn"])
    h = y @ p["ffn_in"]["kernel"] + p["ffn_in"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return _layer_norm(y + h @ p["ffn_out"]["kernel"] + p["ffn_out"]["bias"], p["ln_ffn"])


def _inputs(batch=3, seed=1):
    x = jax.random.normal(jax.random.key(seed), (batch, CFG.seq_len, CFG.d_model))
    ok = jnp.arange(CFG.seq_len)[None] < jnp.array([6, 4, 1, 6, 3][:batch])[:, None]
    return x, ok


@pytest.mark.parametrize("name", ["tiny", "small", "paper-transformer", "paper-bert"])
def test_teb_param_count_matches_cost_model(name):
    cfg = model_preset(name)
    shapes = jax.eval_shape(lambda k: init_teb(k, cfg), jax.random.key(0))
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == teb_param_count(cfg)


def test_teb_equals_numpy_post_ln_block():
    p = init_teb(jax.random.key(0), CFG)
    x, ok = _inputs()
    got = jax.jit(teb_apply)(p, x, ok)
    want = _numpy_teb(p, np.asarray(x, np.float64), np.asarray(ok))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_padded_keys_do_not_change_real_positions():
    p = init_teb(jax.random.key(0), CFG)
    x, ok = _inputs()
    noise = jax.random.normal(jax.random.key(9), x.shape) * 10
    x2 = jnp.where(ok[..., None], x, noise)
    a, b = teb_apply(p, x, ok), teb_apply(p, x2, ok)
    np.testing.assert_allclose(np.asarray(a)[np.asarray(ok)], np.asarray(b)[np.asarray(ok)], rtol=1e-5, atol=1e-5)
    # an all-padding sample (a padded batch row) stays finite
    assert np.isfinite(np.asarray(teb_apply(p, x, jnp.zeros_like(ok)))).all()


def test_encoder_reference_and_segment_equal_layer_loop():
    stacked = init_encoder_stack(jax.random.key(0), CFG)
    x, ok = _inputs()
    h = x
    teb = jax.jit(teb_apply)
    for layer in range(CFG.n_enc_layers):
        h = teb(jax.tree.map(lambda a: a[layer], stacked), h, ok)
    np.testing.assert_allclose(jax.jit(encoder_reference)(stacked, x, ok), h, rtol=1e-5, atol=1e-5)
    # segment with slot mask [T, F, T]: layers 0 and 2, slot 1 is the identity
    mask = jnp.array([True, False, True])
    h2 = x
    for layer in (0, 2):
        h2 = teb(jax.tree.map(lambda a: a[layer], stacked), h2, ok)
    np.testing.assert_allclose(jax.jit(segment_apply)(stacked, mask, x, ok), h2, rtol=1e-5, atol=1e-5)


def _tokens(batch=4, seed=0):
    toks = jax.random.randint(jax.random.key(seed), (batch, CFG.seq_len), 3, CFG.vocab_size)
    return toks.at[1, 4:].set(0).at[2, 2:].set(0)


@pytest.mark.parametrize("task", ["translation", "ner", "sentence"])
def test_zero_weight_sample_contributes_nothing(task):
    params = split.init_split_model(jax.random.key(0), CFG, task, n_classes=4)
    toks = _tokens()
    batch = {
        "tokens": toks,
        "tgt": toks.at[:, 0].set(transformer.BOS),
        "labels": jnp.where(toks > 0, toks % 4, -1),
        "label": jnp.array([0, 1, 3, 2]),
    }
    # the same three samples with a different 4th sample of weight 0 == the three alone
    garbage = jax.tree.map(lambda a: a.at[3].set(a[3] * 0 + 3), batch)
    garbage["sample_weight"] = jnp.array([1.0, 1.0, 1.0, 0.0])
    dropped = jax.tree.map(lambda a: a[:3], batch)
    loss_fn = jax.jit(split.split_model_loss)
    loss_w, wsum_w = loss_fn(params, garbage)
    loss_d, wsum_d = loss_fn(params, dropped)
    np.testing.assert_allclose(loss_w, loss_d, rtol=1e-5)
    np.testing.assert_allclose(wsum_w, wsum_d)
    assert float(wsum_d) > 0


def test_token_and_sentence_loss_by_hand():
    params = split.init_split_model(jax.random.key(0), CFG, "ner", n_classes=4)
    toks = _tokens()
    labels = jnp.where(toks > 0, toks % 4, -1).at[:, 0].set(-1)
    x, ok = split.embed_apply(params["client"]["embed"], toks)
    enc = jax.jit(encoder_reference)(params["client"]["encoder"], x, ok)
    logits = np.asarray(bert.server_logits(params["server"], enc), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    lab = np.asarray(labels)
    want = -sum(logp[b, s, lab[b, s]] for b in range(4) for s in range(CFG.seq_len) if lab[b, s] >= 0)
    loss, wsum = jax.jit(split.split_model_loss)(params, {"tokens": toks, "labels": labels})
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(wsum) == (lab >= 0).sum()


def test_decoder_is_causal_and_greedy_decode_is_its_argmax():
    params = split.init_split_model(jax.random.key(0), CFG, "translation")
    toks = _tokens()
    x, ok = split.embed_apply(params["client"]["embed"], toks)
    enc = jax.jit(encoder_reference)(params["client"]["encoder"], x, ok)
    dec_in = _tokens(seed=5).at[:, 0].set(transformer.BOS).at[1, 4:].set(7)
    logits_fn = jax.jit(transformer.decoder_logits)
    a = logits_fn(params["server"], enc, ok, dec_in)
    b = logits_fn(params["server"], enc, ok, dec_in.at[:, 3:].set(11))
    np.testing.assert_allclose(a[:, :3], b[:, :3], rtol=1e-5, atol=1e-5)  # future tokens unseen

    out = np.asarray(jax.jit(transformer.greedy_decode, static_argnums=3)(params["server"], enc, ok, 5))
    # step by step: the decoder's argmax on the prefix decoded so far (PAD after EOS)
    prefix = np.full((4, 5), transformer.PAD, np.int32)
    prefix[:, 0] = transformer.BOS
    done = np.zeros(4, bool)
    for i in range(5):
        logits = logits_fn(params["server"], enc, ok, jnp.asarray(prefix))
        tok = np.where(done, transformer.PAD, np.asarray(jnp.argmax(logits[:, i], -1)))
        np.testing.assert_array_equal(out[:, i], tok)
        if i + 1 < 5:
            prefix[:, i + 1] = tok
        done |= tok == transformer.EOS


def test_bad_task_and_classes_rejected():
    with pytest.raises(ValidationError, match="task"):
        split.init_split_model(jax.random.key(0), CFG, "qa")
    with pytest.raises(ValidationError, match="n_classes"):
        split.init_split_model(jax.random.key(0), CFG, "ner", n_classes=1)
    with pytest.raises(ValidationError, match="n_dec_layers"):
        split.init_split_model(jax.random.key(0), CFG.replace(n_dec_layers=0), "translation")


# --------------------------------------------------------------------------- dropout


def _dropped_numpy_teb(p, x, ok, masks, rate):
    """`_numpy_teb` with dropout at the three documented sites: attention probabilities (0), the
    attention output before its residual add (1), the FFN output before its residual add (2)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    keep = 1.0 - rate
    a = p["attn"]
    proj = lambda name: np.einsum("bsd,dhc->bshc", x, a[name]["kernel"]) + a[name]["bias"]  # noqa: E731
    q, k, v = proj("query"), proj("key"), proj("value")
    scores = np.where(ok[:, None, None, :], np.einsum("bqhc,bkhc->bhqk", q, k) / np.sqrt(q.shape[-1]), -1e9)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True) * masks[0] / keep
    attn = np.einsum("bqhc,hcd->bqd", np.einsum("bhqk,bkhc->bqhc", probs, v), a["out"]["kernel"]) + a["out"]["bias"]
    y = _layer_norm(x + attn * masks[1] / keep, p["ln_attn"])
    h = y @ p["ffn_in"]["kernel"] + p["ffn_in"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
    return _layer_norm(y + (h @ p["ffn_out"]["kernel"] + p["ffn_out"]["bias"]) * masks[2] / keep, p["ln_ffn"])


def _sample_keys(seed, n):
    return jax.vmap(lambda b: jax.random.fold_in(jax.random.key(seed), b))(jnp.arange(n))


def test_teb_dropout_equals_numpy_block_with_the_documented_masks():
    p = init_teb(jax.random.key(0), CFG)
    x, ok = _inputs()
    rate = 0.3
    keys = _sample_keys(7, x.shape[0])
    drop = SampleDropout(keys, rate)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(teb_apply)(p, x, ok, drop)
    # masks from the documented derivation: one uint32 draw per sample, cut into the sites in order
    shapes = [(CFG.n_heads, CFG.seq_len, CFG.seq_len), (CFG.seq_len, CFG.d_model), (CFG.seq_len, CFG.d_model)]
    sizes = [int(np.prod(s)) for s in shapes]
    bits = np.stack([np.asarray(jax.random.bits(k, (sum(sizes),), jnp.uint32)) for k in keys])
    parts = np.split(bits >= int(rate * 2**32), np.cumsum(sizes)[:-1], axis=1)
    masks = [part.reshape((-1,) + shape) for part, shape in zip(parts, shapes)]
    assert 0.2 < 1 - np.mean(masks[0]) < 0.4  # a real rate-0.3 draw, not all-ones
    want = _dropped_numpy_teb(p, np.asarray(x, np.float64), np.asarray(ok), masks, rate)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(got) - np.asarray(teb_apply(p, x, ok))).max() > 0.1


def test_encoder_dropout_folds_the_layer_index_into_each_samples_key():
    stacked = init_encoder_stack(jax.random.key(0), CFG)
    x, ok = _inputs()
    drop = SampleDropout(_sample_keys(3, x.shape[0]), 0.2)
    h = x
    for layer in range(CFG.n_enc_layers):
        h = jax.jit(teb_apply)(jax.tree.map(lambda a: a[layer], stacked), h, ok, drop.fold(layer))
    np.testing.assert_allclose(jax.jit(encoder_reference)(stacked, x, ok, drop), h, rtol=1e-5, atol=1e-5)
    # segment_apply draws the masks of the global layer each slot holds (slots 0 and 2 = layers 2, 0)
    mask, slot_layer = jnp.array([True, False, True]), jnp.array([2, 1, 0])
    seg = jax.tree.map(lambda a: a[jnp.array([2, 1, 0])], stacked)
    h2 = x
    for layer in (2, 0):
        h2 = jax.jit(teb_apply)(jax.tree.map(lambda a: a[layer], stacked), h2, ok, drop.fold(layer))
    np.testing.assert_allclose(jax.jit(segment_apply)(seg, mask, x, ok, slot_layer, drop), h2, rtol=1e-5, atol=1e-5)


def test_masks_differ_across_samples_layers_and_keys():
    p = init_teb(jax.random.key(0), CFG)
    x = jnp.broadcast_to(_inputs(1)[0], (4, CFG.seq_len, CFG.d_model))  # four copies of one sample
    ok = jnp.ones((4, CFG.seq_len), bool)
    apply = jax.jit(teb_apply)
    drop = SampleDropout(_sample_keys(0, 4), 0.1)
    plain = np.asarray(apply(p, x, ok))
    np.testing.assert_array_equal(plain[1:], np.broadcast_to(plain[0], plain[1:].shape))
    out = np.asarray(apply(p, x, ok, drop.fold(0)))
    assert min(np.abs(out[i] - out[j]).max() for i in range(4) for j in range(i)) > 1e-3  # samples
    assert np.abs(out - np.asarray(apply(p, x, ok, drop.fold(1)))).max() > 1e-3  # layers
    other = SampleDropout(_sample_keys(1, 4), 0.1)
    assert np.abs(out - np.asarray(apply(p, x, ok, other.fold(0)))).max() > 1e-3  # base keys
    np.testing.assert_array_equal(out, np.asarray(apply(p, x, ok, drop.fold(0))))  # reproducible


def test_dropout_keeps_one_minus_rate_and_rescales():
    rate, n = 0.25, 20000
    drop = SampleDropout(_sample_keys(5, 2), rate)
    keep, keep2 = drop.masks((n,), (3, 4))
    assert keep.shape == (2, n) and keep2.shape == (2, 3, 4)
    out = np.asarray(dropout_fn(drop, jnp.ones((2, n)), keep))
    kept = out != 0
    np.testing.assert_array_equal(out[kept], np.float32(1 / (1 - rate)))
    # dropped fraction per sample within 5 binomial standard deviations of the rate
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert np.all(np.abs((1 - kept.mean(axis=1)) - rate) < 5 * sigma)
    assert (kept[0] != kept[1]).any()


def _split_batch(task, n=5):
    toks = _tokens(n) if n == 4 else jax.random.randint(jax.random.key(n), (n, CFG.seq_len), 3, CFG.vocab_size).at[1, 3:].set(0)
    return {
        "tokens": toks,
        "tgt": toks.at[:, 0].set(transformer.BOS),
        "labels": jnp.where(toks > 0, toks % 4, -1),
        "label": jnp.arange(n) % 4,
    }


@functools.partial(jax.jit, static_argnames="dropout")
def _mean_loss(params, batch, dropout_key=None, dropout=0.0):
    return split.split_model_mean_loss(params, batch, dropout_key=dropout_key, dropout=dropout)


@pytest.mark.parametrize("task", ["translation", "ner", "sentence"])
def test_dropout_off_and_eval_mode_are_the_deterministic_model_bit_for_bit(task):
    params = split.init_split_model(jax.random.key(0), CFG, task, n_classes=4)
    batch = _split_batch(task)
    base = float(_mean_loss(params, batch))
    assert float(_mean_loss(params, batch, jax.random.key(1), dropout=0.0)) == base  # rate 0
    assert float(_mean_loss(params, batch, None, dropout=0.1)) == base  # no key: evaluation
    dropped = float(_mean_loss(params, batch, jax.random.key(1), dropout=0.1))
    assert abs(dropped - base) > 1e-4
    assert float(_mean_loss(params, batch, jax.random.key(1), dropout=0.1)) == dropped  # reproducible
    # a legacy uint32 key (jax.random.PRNGKey) is the same key
    assert float(_mean_loss(params, batch, jax.random.key_data(jax.random.key(1)), dropout=0.1)) == dropped


def test_bad_dropout_and_dtype_rejected():
    params = split.init_split_model(jax.random.key(0), CFG, "ner", n_classes=4)
    batch = _split_batch("ner")
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValidationError, match="dropout"):
            split.split_model_loss(params, batch, dropout_key=jax.random.key(0), dropout=bad)
    for bad in ("float16", "fp32", jnp.float16, 3):
        with pytest.raises(ValidationError, match="dtype"):
            split.split_model_loss(params, batch, dtype=bad)


# --------------------------------------------------------------------------- compute dtype


@pytest.mark.parametrize("task, grads", [("ner", True), ("sentence", False), ("translation", False)])
def test_bfloat16_compute_is_close_to_float32(task, grads):
    params = split.init_split_model(jax.random.key(0), CFG, task, n_classes=4)
    batch = _split_batch(task, n=8)
    eps = float(jnp.finfo(jnp.bfloat16).eps)  # 2^-7
    loss = lambda p, dt: split.split_model_mean_loss(p, batch, dtype=dt)  # noqa: E731
    with jax.default_matmul_precision("highest"):
        fn = jax.jit(jax.value_and_grad(loss) if grads else loss, static_argnums=1)
        (l32, g32), (l16, g16) = [fn(params, dt) if grads else (fn(params, dt), None) for dt in ("float32", "bfloat16")]
    assert l16.dtype == jnp.float32
    # the loss (fp32 log-softmax of bf16 logits) within a few bf16 roundings of the fp32 loss
    assert abs(float(l16) - float(l32)) <= 4 * eps * abs(float(l32))
    assert float(l16) != float(l32)  # and it did run in bf16
    if grads:
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))  # fp32 params, fp32 gradients
        # backprop through the L layers in bf16 amplifies the roundings (measured 4-23 eps over the
        # three tasks, tracking eps: fp16 gives eps_fp16/eps_bf16 times less), hence a looser bound
        flat = lambda t: jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)])  # noqa: E731
        assert float(jnp.linalg.norm(flat(g16) - flat(g32)) / jnp.linalg.norm(flat(g32))) <= 32 * eps


def test_bfloat16_runs_the_matmuls_in_bfloat16():
    params = split.init_split_model(jax.random.key(0), CFG, "translation")
    batch = _split_batch("translation")
    jaxpr = str(jax.make_jaxpr(lambda p: split.split_model_loss(p, batch, dtype="bfloat16"))(params))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and all("bf16" in line.split("dot_general")[0] for line in dots)
    assert "f32[] " in jaxpr.splitlines()[-2] or "f32[]" in jaxpr.split("in (")[-1]


# --------------------------------------------------------------------------- decoding and prediction


def _uncached_greedy(server, enc, ok, max_len):
    """Greedy decoding as it was before the cache: the decoder re-run over the whole prefix."""
    logits_fn = jax.jit(transformer.decoder_logits)
    batch = enc.shape[0]
    prefix = np.full((batch, max_len), transformer.PAD, np.int32)
    prefix[:, 0] = transformer.BOS
    done = np.zeros(batch, bool)
    out = np.full((batch, max_len), transformer.PAD, np.int32)
    for i in range(max_len):
        logits = logits_fn(server, enc, ok, jnp.asarray(prefix))
        tok = np.where(done, transformer.PAD, np.asarray(jnp.argmax(logits[:, i], -1)))
        out[:, i] = tok
        if i + 1 < max_len:
            prefix[:, i + 1] = tok
        done |= tok == transformer.EOS
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_greedy_decode_equals_uncached_on_random_models(seed):
    cfg = CFG.replace(vocab_size=12, n_dec_layers=3, seq_len=9)  # small vocab: EOS and PAD do get emitted
    params = split.init_split_model(jax.random.key(seed), cfg, "translation")
    # sharper logits than at init, so the argmax is decisive and sequences vary
    params["server"]["out_proj"]["kernel"] = params["server"]["out_proj"]["kernel"] * 3
    toks = jax.random.randint(jax.random.key(seed + 10), (6, cfg.seq_len), 3, cfg.vocab_size)
    toks = jnp.where(jnp.arange(cfg.seq_len)[None] < jnp.array([9, 3, 1, 7, 9, 5])[:, None], toks, 0)
    with jax.default_matmul_precision("highest"):
        x, ok = split.embed_apply(params["client"]["embed"], toks)
        enc = jax.jit(encoder_reference)(params["client"]["encoder"], x, ok)
        max_len = 12  # longer than the source: positions past seq_len too
        got = np.asarray(jax.jit(transformer.greedy_decode, static_argnums=3)(params["server"], enc, ok, max_len))
        want = _uncached_greedy(params["server"], enc, ok, max_len)
    np.testing.assert_array_equal(got, want)
    assert len({tuple(r) for r in want}) > 1


def test_all_padding_rows_decode_to_pad_and_stop_the_loop():
    params = split.init_split_model(jax.random.key(0), CFG, "translation")
    toks = _tokens().at[2].set(0)  # row 2 is a padded batch slot
    x, ok = split.embed_apply(params["client"]["embed"], toks)
    enc = encoder_reference(params["client"]["encoder"], x, ok)
    out = np.asarray(jax.jit(transformer.greedy_decode, static_argnums=3)(params["server"], enc, ok, 5))
    assert (out[2] == transformer.PAD).all()
    assert (out[[0, 1, 3]] != transformer.PAD).any()


@pytest.mark.parametrize("task", ["translation", "ner", "sentence"])
def test_predict_batched_equals_predict_per_batch(task):
    params = split.init_split_model(jax.random.key(0), CFG, task, n_classes=4)
    toks = jax.random.randint(jax.random.key(4), (11, CFG.seq_len), 3, CFG.vocab_size)
    toks = jnp.where(jnp.arange(CFG.seq_len)[None] < (jnp.arange(11) % CFG.seq_len + 1)[:, None], toks, 0)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(split.predict_batched, static_argnames=("batch_size", "max_len"))(params, toks, batch_size=4)
        want = np.concatenate([np.asarray(jax.jit(split.predict)(params, toks[i : i + 4])) for i in range(0, 11, 4)])
    assert got.shape == want.shape == ((11, CFG.seq_len) if task != "sentence" else (11,))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValidationError, match="batch_size"):
        split.predict_batched(params, toks, batch_size=0)
