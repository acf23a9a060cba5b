"""Federated round (Eq. 6–9, 25): vmapped round vs Python loop, aggregation by hand, noise."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.federated.rounds import Uploads, cluster_group_size, looped_round, make_round, noisy_upload

V, D, L, C, B, N = 11, 8, 3, 4, 5, 3


def toy_loss(client, server, batch, layout):
    """Embedding → L residual tanh layers (masked by layout, as the stage masks do) → head, CE."""
    x = jnp.mean(client["embed"][batch["tokens"]], axis=1)
    for l in range(L):
        x = x + layout["mask"][l] * jnp.tanh(x @ client["encoder"]["w"][l])
    logp = jax.nn.log_softmax(x @ server["head"])
    nll = -jnp.take_along_axis(logp, batch["label"][:, None], axis=1)[:, 0]
    return jnp.sum(nll), jnp.asarray(nll.shape[0], jnp.float32)


def toy_setup(seed=0, n=N):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    client = {"embed": jax.random.normal(k[0], (V, D)), "encoder": {"w": 0.3 * jax.random.normal(k[1], (L, D, D))}}
    server = {"head": jax.random.normal(k[2], (D, C))}
    batch = {"tokens": jax.random.randint(k[3], (n, B, 6), 0, V), "label": jax.random.randint(k[4], (n, B), 0, C)}
    layout = {"mask": jnp.asarray(np.random.default_rng(seed).integers(0, 2, (n, L)), jnp.float32)}
    return client, server, batch, layout


def close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("independent", [False, True])
def test_vmapped_round_equals_python_loop(independent):
    client, server, batch, layout = toy_setup()
    if independent:
        client = jax.tree.map(lambda x: jnp.stack([x, 1.1 * x, 0.9 * x]), client)
    uploads = Uploads(active=jnp.array([True, False, True]), eps=jnp.array([0.02, 0.05, 0.01]),
                      weight=jnp.array([10.0, 20.0, 30.0]))
    sgd = optax.sgd(0.1)
    args = (client, server, sgd.init(server), batch, layout, uploads, jax.random.PRNGKey(3))
    out_v = make_round(toy_loss, sgd, sgd, independent=independent)(*args)
    out_l = looped_round(toy_loss, sgd, sgd, independent=independent)(*args)
    close(out_v, out_l)
    assert np.all(np.isfinite(np.asarray(out_v[3].loss)))


@pytest.mark.parametrize("independent", [False, True])
def test_grouped_round_equals_python_loop(independent, n=4, chunk=2):
    """Clusters in a scan over 2 vmapped groups of 2: same round as the loop (k = 1 is covered
    by the hand-computed aggregation and the no-channel tests)."""
    client, server, batch, layout = toy_setup(4, n=n)
    if independent:
        client = jax.tree.map(lambda x: jnp.stack([(1 + 0.1 * i) * x for i in range(n)]), client)
    uploads = Uploads(active=jnp.arange(n) != 1, eps=jnp.linspace(0.01, 0.05, n), weight=jnp.arange(1.0, n + 1) * 10)
    sgd = optax.sgd(0.1)
    args = (client, server, sgd.init(server), batch, layout, uploads, jax.random.PRNGKey(3))
    out_g = make_round(toy_loss, sgd, sgd, independent=independent, cluster_chunk=chunk)(*args)
    close(out_g, looped_round(toy_loss, sgd, sgd, independent=independent)(*args))
    assert out_g[3].loss.shape == (n,)


def test_cluster_group_size_is_largest_divisor():
    assert [cluster_group_size(16, c) for c in (None, 1, 3, 4, 5, 16, 40)] == [16, 1, 2, 4, 4, 16, 16]
    assert cluster_group_size(7, 4) == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValidationError, match="cluster_chunk"):
            make_round(toy_loss, optax.sgd(0.1), optax.sgd(0.1), cluster_chunk=bad)


@pytest.mark.parametrize("chunk", [None, 1])
def test_aggregation_matches_hand_computation_without_noise(chunk):
    client, server, batch, layout = toy_setup(1)
    lr = 0.05
    active = np.array([True, False, True])
    w = np.array([3.0, 5.0, 7.0])
    uploads = Uploads(active=jnp.asarray(active), eps=jnp.zeros(N), weight=jnp.asarray(w))
    sgd = optax.sgd(lr)
    new_c, new_s, _, out = make_round(toy_loss, sgd, sgd, cluster_chunk=chunk)(
        client, server, sgd.init(server), batch, layout, uploads, jax.random.PRNGKey(0))
    # independent computation: per-cluster gradients by jax.grad of the mean loss
    def mean_loss(c, s, n):
        ls, ws = toy_loss(c, s, jax.tree.map(lambda x: x[n], batch), jax.tree.map(lambda x: x[n], layout))
        return ls / ws

    grads = [jax.grad(mean_loss, argnums=(0, 1))(client, server, n) for n in range(N)]
    wa = np.where(active, w, 0) / np.sum(np.where(active, w, 0))
    exp_c = jax.tree.map(lambda p, *g: p - lr * sum(wn * gn for wn, gn in zip(wa, g)), client, *[g[0] for g in grads])
    exp_s = jax.tree.map(lambda p, *g: p - lr * sum(wn * gn for wn, gn in zip(wa, g)), server, *[g[1] for g in grads])
    close(new_c, exp_c)
    close(new_s, exp_s)
    np.testing.assert_allclose(out.loss, [mean_loss(client, server, n) for n in range(N)], rtol=1e-6)


@pytest.mark.parametrize("chunk", [None, 1])
def test_no_channel_means_no_update(chunk):
    client, server, batch, layout = toy_setup(2)
    uploads = Uploads(active=jnp.zeros(N, bool), eps=jnp.full(N, 0.1), weight=jnp.ones(N))
    sgd = optax.sgd(0.1)
    new_c, new_s, _, out = make_round(toy_loss, sgd, sgd, cluster_chunk=chunk)(client, server, sgd.init(server), batch, layout, uploads,
                                                           jax.random.PRNGKey(0))
    close(new_c, client, rtol=0, atol=0)
    close(new_s, server, rtol=0, atol=0)
    assert np.all(np.asarray(out.grad_norm) > 0)  # the clusters did compute; they just did not upload


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_upload_noise_variance(mode):
    glob = {"a": jnp.zeros((200, 100)), "b": jnp.zeros((100,))}
    local = {"a": jnp.full((200, 100), 0.5), "b": jnp.full((100,), 0.5)}  # update power P = 0.25
    eps = 0.04
    up = noisy_upload(glob, local, jnp.asarray(eps), jax.random.PRNGKey(5), mode)
    noise = np.concatenate([np.ravel(up["a"] - 0.5), np.ravel(up["b"] - 0.5)])
    expected_var = eps * (0.25 if mode == "relative" else 1.0)
    assert abs(noise.mean()) < 4 * np.sqrt(expected_var / noise.size)
    assert noise.var() == pytest.approx(expected_var, rel=0.05)  # 20,100 samples: ~1% standard error


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [None, 2])
def test_vmapped_gpipe_round_equals_loop_real_model(chunk):
    """Tiny BERT, each cluster with its own δ / order (stage layouts as data), GPipe encoder;
    all clusters in one vmap, or one cluster at a time in a scan (chunk 2 → groups of 1)."""
    import functools

    from collapipe_jax.models import split
    from collapipe_jax.models.config import model_preset
    from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh
    from collapipe_jax.pipeline.partition import make_stage_layout, stack_layouts

    cfg = model_preset("tiny").replace(vocab_size=50, seq_len=8)
    params = split.init_split_model(jax.random.PRNGKey(0), cfg, "sentence", 5)
    layouts = stack_layouts([make_stage_layout(d, o, 3, 2) for d, o in
                             (([2, 1, 1], [0, 1, 2]), ([0, 2, 2], [2, 1]), ([1, 2, 1], [2, 0, 1]))])
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(1, 50, (3, 4, 8)), jnp.int32),
             "label": jnp.asarray(rng.integers(0, 5, (3, 4)), jnp.int32)}

    def loss(client, server, b, layout):
        enc = pipelined_encoder(layout, 2, mesh=stage_mesh(3))
        return split.split_model_loss({"client": client, "server": server}, b, enc)

    sgd = optax.sgd(0.1)
    uploads = Uploads(active=jnp.array([True, True, False]), eps=jnp.array([0.01, 0.02, 0.03]), weight=jnp.array([4.0, 5.0, 6.0]))
    args = (params["client"], params["server"], sgd.init(params["server"]), batch, layouts, uploads, jax.random.PRNGKey(2))
    close(make_round(loss, sgd, sgd, cluster_chunk=chunk)(*args), looped_round(loss, sgd, sgd)(*args),
          rtol=1e-4, atol=1e-6)
