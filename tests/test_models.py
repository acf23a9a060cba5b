"""Flax TEB, Transformer and BERT split models against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from collapipe_jax.errors import ValidationError
from collapipe_jax.models import bert, split, transformer
from collapipe_jax.models.config import ModelConfig, model_preset
from collapipe_jax.models.cost import teb_param_count
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
