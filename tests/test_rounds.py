"""Federated round (Alg. 1; Eq. 6–9, 25): vmapped round vs Python loops, local steps, client and
server optimizers, aggregation by hand, noise."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.federated.optim import client_direction, learning_rate_schedule, server_transform
from collapipe_jax.federated.rounds import (LocalWork, RoundSpec, Uploads, cluster_group_size, init_server_state,
                                            looped_round, make_round, noisy_upload)

V, D, L, C, B, N = 11, 8, 3, 4, 5, 3


def toy_loss(client, server, batch, layout, key, jitter=0.01):
    """Embedding → L residual tanh layers (masked by layout, as the stage masks do) → head, CE.
    `jitter` scales a key-dependent perturbation, standing in for dropout (so the keys matter)."""
    x = jnp.mean(client["embed"][batch["tokens"]], axis=1)
    if jitter:
        x = x + jitter * jax.random.normal(key, x.shape)
    for l in range(L):
        x = x + layout["mask"][l] * jnp.tanh(x @ client["encoder"]["w"][l])
    logp = jax.nn.log_softmax(x @ server["head"])
    nll = -jnp.take_along_axis(logp, batch["label"][:, None], axis=1)[:, 0]
    return jnp.sum(nll), jnp.asarray(nll.shape[0], jnp.float32)


plain_loss = functools.partial(toy_loss, jitter=0.0)


def toy_setup(seed=0, n=N, steps=1):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    client = {"embed": jax.random.normal(k[0], (V, D)), "encoder": {"w": 0.3 * jax.random.normal(k[1], (L, D, D))}}
    server = {"head": jax.random.normal(k[2], (D, C))}
    batch = {"tokens": jax.random.randint(k[3], (n, steps, B, 6), 0, V),
             "label": jax.random.randint(k[4], (n, steps, B), 0, C)}
    layout = {"mask": jnp.asarray(np.random.default_rng(seed).integers(0, 2, (n, L)), jnp.float32)}
    return client, server, batch, layout


def spec_of(loss=toy_loss, optimizer="sgd", lr=0.1, server="avg", server_lr=1.0, **kw):
    return RoundSpec(loss, client_direction(optimizer, weight_decay=0.01 if optimizer == "adamw" else 0.0),
                     learning_rate_schedule("constant", lr), server_transform(server, server_lr), **kw)


def work(steps, step0=0):
    return LocalWork(jnp.asarray(steps, jnp.int32), jnp.asarray(step0, jnp.int32))


def close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("independent, optimizer, server, steps, client_state", [
    (False, "sgd", "avg", [1, 1, 1], "reset"),
    (True, "sgd", "avg", [1, 1, 1], "reset"),
    (False, "adamw", "adam", [3, 1, 2], "reset"),
    (False, "momentum", "yogi", [2, 2, 2], "reset"),
    (True, "adam", "avg", [3, 2, 3], "reset"),
    (False, "adam", "avg", [2, 1, 2], "keep"),
    (False, "adam", "avg", [2, 1, 2], "average"),
])
def test_vmapped_round_equals_python_loop(independent, optimizer, server, steps, client_state):
    E = max(steps)
    client, server_params, batch, layout = toy_setup(steps=E)
    if independent:
        client = jax.tree.map(lambda x: jnp.stack([x, 1.1 * x, 0.9 * x]), client)
        server = "avg"
    spec = spec_of(optimizer=optimizer, server=server, server_lr=0.3, local_steps=E, independent=independent,
                   client_state=client_state)
    uploads = Uploads(active=jnp.array([True, False, True]), eps=jnp.array([0.02, 0.05, 0.01]),
                      weight=jnp.array([10.0, 20.0, 30.0]))
    with jax.default_matmul_precision("highest"):
        state = init_server_state(spec, client, server_params, N)
        args = (state, batch, layout, uploads, work(steps, 7), jax.random.PRNGKey(3))
        out_v = make_round(spec)(*args)
        out_l = looped_round(spec)(*args)
        close(out_v, out_l)
        if client_state != "reset":  # a second round starts from the kept (or averaged) per-cluster states
            again = (out_v[0], batch, layout, uploads, work(steps, 9), jax.random.PRNGKey(4))
            close(make_round(spec)(*again), looped_round(spec)(*again))
            # Adam's step count of cluster 1: its own, or the largest when averaged
            assert int(out_v[0].client_opt[0].count[1]) == (steps[1] if client_state == "keep" else max(steps))
    assert np.all(np.isfinite(np.asarray(out_v[1].loss)))


@pytest.mark.parametrize("independent", [False, True])
def test_grouped_round_equals_python_loop(independent, n=4, chunk=2):
    """Cluster gradients in a lax.map over 2 vmapped groups of 2: the same round as the loops."""
    client, server, batch, layout = toy_setup(4, n=n, steps=2)
    if independent:
        client = jax.tree.map(lambda x: jnp.stack([(1 + 0.1 * i) * x for i in range(n)]), client)
    uploads = Uploads(active=jnp.arange(n) != 1, eps=jnp.linspace(0.01, 0.05, n), weight=jnp.arange(1.0, n + 1) * 10)
    spec = spec_of(local_steps=2, independent=independent, cluster_chunk=chunk)
    with jax.default_matmul_precision("highest"):
        args = (init_server_state(spec, client, server), batch, layout, uploads, work([2, 1, 2, 2]),
                jax.random.PRNGKey(3))
        out_g = make_round(spec)(*args)
        close(out_g, looped_round(spec)(*args))
    assert out_g[1].loss.shape == (n,)


def test_cluster_group_size_is_largest_divisor():
    assert [cluster_group_size(16, c) for c in (None, 1, 3, 4, 5, 16, 40)] == [16, 1, 2, 4, 4, 16, 16]
    assert cluster_group_size(7, 4) == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValidationError, match="cluster_chunk"):
            spec_of(cluster_chunk=bad)
    with pytest.raises(ValidationError, match="local_steps"):
        spec_of(local_steps=0)


def mean_loss(c, s, batch, layout, n, e):
    pick = lambda t: jax.tree.map(lambda x: x[n], t)  # noqa: E731
    ls, ws = plain_loss(c, s, jax.tree.map(lambda x: x[e], pick(batch)), pick(layout), None)
    return ls / ws


@pytest.mark.parametrize("chunk", [None, 1])
def test_two_sgd_steps_and_fedavg_match_hand_computation(chunk):
    """E = 2 plain SGD steps per cluster (cluster 1 stops after one), the head stepping on the
    weighted mean head gradient of the uploading clusters, then FedAvg without noise."""
    client, server, batch, layout = toy_setup(1, steps=2)
    lr = 0.05
    active = np.array([True, False, True])
    w = np.array([3.0, 5.0, 7.0])
    steps = [2, 1, 2]
    uploads = Uploads(active=jnp.asarray(active), eps=jnp.zeros(N), weight=jnp.asarray(w))
    spec = spec_of(loss=plain_loss, lr=lr, local_steps=2, cluster_chunk=chunk)
    with jax.default_matmul_precision("highest"):
        new, out = make_round(spec)(init_server_state(spec, client, server), batch, layout, uploads, work(steps),
                                    jax.random.PRNGKey(0))
        grad = jax.grad(mean_loss, argnums=(0, 1))
        sub = lambda p, g: jax.tree.map(lambda a, b: a - lr * b, p, g)  # noqa: E731
        thetas, omega, losses = [client] * N, server, [[], [], []]
        for e in range(2):
            g_heads, wts = [], []
            for n in range(N):
                gc, gs = grad(thetas[n], omega, batch, layout, n, e)
                if e < steps[n]:
                    losses[n].append(float(mean_loss(thetas[n], omega, batch, layout, n, e)))
                    thetas[n] = sub(thetas[n], gc)
                g_heads.append(gs)
                wts.append(w[n] * active[n] * (e < steps[n]))
            wts = np.asarray(wts) / np.sum(wts)
            omega = sub(omega, jax.tree.map(lambda *g: sum(wn * gn for wn, gn in zip(wts, g)), *g_heads))
        wa = np.where(active, w, 0) / np.sum(np.where(active, w, 0))
        expected = jax.tree.map(lambda *t: sum(wn * tn for wn, tn in zip(wa, t)), *thetas)
    close(new.client, expected)
    close(new.server, omega)
    np.testing.assert_allclose(out.loss, [np.mean(x) for x in losses], rtol=1e-5)


def test_fedadam_server_step_matches_hand_computation():
    """One FedAdam step from a fresh state: m = (1−β1)Δ, v = (1−β2)Δ², bias-corrected
    θ^{t+1} = θ^t − η_s Δ / (|Δ| + ε) with Δ = θ^t − θ̄ (ε = 1e-3)."""
    client, server, batch, layout = toy_setup(5)
    uploads = Uploads(active=jnp.array([True, True, False]), eps=jnp.zeros(N), weight=jnp.array([1.0, 3.0, 2.0]))
    avg, adam = spec_of(loss=plain_loss), spec_of(loss=plain_loss, server="adam", server_lr=0.2)
    with jax.default_matmul_precision("highest"):
        mean, _ = make_round(avg)(init_server_state(avg, client, server), batch, layout, uploads, work([1] * N),
                                  jax.random.PRNGKey(0))
        stepped, _ = make_round(adam)(init_server_state(adam, client, server), batch, layout, uploads, work([1] * N),
                                      jax.random.PRNGKey(0))
    expected = jax.tree.map(lambda t, m: t - 0.2 * (t - m) / (jnp.abs(t - m) + 1e-3), client, mean.client)
    close(stepped.client, expected, rtol=1e-4, atol=1e-6)


def test_fedavgm_server_momentum_matches_hand_computation():
    """Two FedAvgM rounds (server lr η, momentum β): v1 = Δ1, θ1 = θ0 − η v1; v2 = β v1 + Δ2,
    θ2 = θ1 − η v2, with Δ_t the FedAvg pseudo-gradient θ^{t−1} − θ̄ of the same round."""
    client, server, batch, layout = toy_setup(6)
    uploads = Uploads(active=jnp.array([True, True, False]), eps=jnp.zeros(N), weight=jnp.array([1.0, 3.0, 2.0]))
    eta, beta = 0.7, 0.9
    avg = spec_of(loss=plain_loss)
    spec = RoundSpec(plain_loss, client_direction("sgd"), learning_rate_schedule("constant", 0.1),
                     server_transform("sgd", eta, beta))
    run = lambda sp, st: make_round(sp)(st, batch, layout, uploads, work([1] * N), jax.random.PRNGKey(0))[0]  # noqa: E731
    with jax.default_matmul_precision("highest"):
        s1 = run(spec, init_server_state(spec, client, server))
        s2 = run(spec, s1)
        mean1 = run(avg, init_server_state(avg, client, server)).client  # the local steps ignore the server optimizer
        mean2 = run(avg, s1.replace(fed_opt=())).client
    d1 = jax.tree.map(jnp.subtract, client, mean1)
    theta1 = jax.tree.map(lambda t, d: t - eta * d, client, d1)
    close(s1.client, theta1)
    d2 = jax.tree.map(jnp.subtract, theta1, mean2)
    close(s2.client, jax.tree.map(lambda t, a, b: t - eta * (beta * a + b), theta1, d1, d2), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # ~10-20 s: keeps the default suite near 10 minutes on 2 cores
def test_client_state_reset_keep_average():
    """Round 1 starts every cluster from a fresh Adam state under all three; from round 2 on
    they differ. "average" holds the D_n-weighted mean (over the uploading clusters) of the
    states "keep" holds, in every cluster."""
    client, server, batch, layout = toy_setup(7)
    uploads = Uploads(active=jnp.array([True, False, True]), eps=jnp.zeros(N), weight=jnp.array([1.0, 5.0, 3.0]))
    out = {}
    with jax.default_matmul_precision("highest"):
        for mode in ("reset", "keep", "average"):
            spec = spec_of(loss=plain_loss, optimizer="adam", lr=0.05, client_state=mode)
            s1 = make_round(spec)(init_server_state(spec, client, server, N), batch, layout, uploads, work([1] * N),
                                  jax.random.PRNGKey(0))[0]
            s2 = make_round(spec)(s1, batch, layout, uploads, work([1] * N, 1), jax.random.PRNGKey(1))[0]
            out[mode] = (s1, s2)
    close(out["reset"][0].client, out["keep"][0].client)  # different programs: equal up to round-off
    close(out["keep"][0].client, out["average"][0].client)
    for a, b in (("reset", "keep"), ("keep", "average"), ("reset", "average")):
        diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(out[a][1].client),
                                                                    jax.tree.leaves(out[b][1].client)))
        assert diff > 1e-6, (a, b)
    kept_mu = np.asarray(out["keep"][0].client_opt[0].mu["encoder"]["w"])  # [N, ...]
    w = np.array([1.0, 0.0, 3.0])
    expected = np.tensordot(w / w.sum(), kept_mu, axes=1)
    averaged = np.asarray(out["average"][0].client_opt[0].mu["encoder"]["w"])
    for n in range(N):
        np.testing.assert_allclose(averaged[n], expected, rtol=1e-5, atol=1e-8)


def test_noise_off_round_is_the_noiseless_aggregate():
    """noise_mode none gives exactly the aggregate of ε = 0, whatever ε(p_n) the decision
    charged; with that ε and relative noise the aggregate moves."""
    client, server, batch, layout = toy_setup(8)
    eps = jnp.array([0.05, 0.2, 0.1])
    with jax.default_matmul_precision("highest"):
        def agg(mode, e):
            spec = spec_of(loss=plain_loss, noise_mode=mode)
            up = Uploads(active=jnp.ones(N, bool), eps=e, weight=jnp.array([1.0, 2.0, 3.0]))
            return make_round(spec)(init_server_state(spec, client, server), batch, layout, up, work([1] * N),
                                    jax.random.PRNGKey(5))[0].client
        off, exact, noisy = agg("none", eps), agg("relative", jnp.zeros(N)), agg("relative", eps)
    close(off, exact, rtol=0, atol=0)
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(off), jax.tree.leaves(noisy))) > 1e-6


def test_average_client_state_needs_aggregation():
    with pytest.raises(ValidationError, match="client_state"):
        spec_of(independent=True, client_state="average")


@pytest.mark.parametrize("chunk", [None, 1])
def test_no_channel_means_no_update(chunk):
    client, server, batch, layout = toy_setup(2)
    uploads = Uploads(active=jnp.zeros(N, bool), eps=jnp.full(N, 0.1), weight=jnp.ones(N))
    spec = spec_of(cluster_chunk=chunk)
    new, out = make_round(spec)(init_server_state(spec, client, server), batch, layout, uploads, work([1] * N),
                                jax.random.PRNGKey(0))
    close(new.client, client, rtol=0, atol=0)
    close(new.server, server, rtol=0, atol=0)
    assert np.all(np.asarray(out.grad_norm) > 0)  # the clusters did compute; they just did not upload


def test_noiseless_upload_and_masked_upload():
    """noise_mode none delivers the update exactly; a mask uploads only its leaves (the others
    stay θ^t, and the noise power is the payload's)."""
    glob = {"a": jnp.zeros((50, 40)), "frozen": jnp.ones((30,))}
    local = {"a": jnp.full((50, 40), 0.5), "frozen": jnp.full((30,), 3.0)}
    exact = noisy_upload(glob, local, jnp.asarray(0.3), jax.random.PRNGKey(1), "none")
    close(exact, local, rtol=0, atol=0)
    mask = {"a": True, "frozen": False}
    up = noisy_upload(glob, local, jnp.asarray(0.04), jax.random.PRNGKey(2), "relative", mask)
    np.testing.assert_array_equal(up["frozen"], glob["frozen"])
    noise = np.ravel(up["a"] - 0.5)
    assert noise.var() == pytest.approx(0.04 * 0.25, rel=0.1)  # P = 0.25 from the sent leaf alone


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


def test_learning_rate_schedules():
    cos = learning_rate_schedule("warmup-cosine", 1.0, warmup_steps=10, total_steps=110)
    lin = learning_rate_schedule("warmup-linear", 1.0, warmup_steps=10, total_steps=110)
    for sched in (cos, lin):
        assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5) and float(sched(10)) == pytest.approx(1.0)
        assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)
    assert float(cos(60)) == pytest.approx(0.5, rel=1e-5)  # half-way through the cosine
    assert float(lin(60)) == pytest.approx(0.5, rel=1e-5)
    assert float(learning_rate_schedule("constant", 0.3)(1000)) == pytest.approx(0.3)


def test_weight_decay_skips_biases_and_scales():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "ln": {"scale": jnp.ones(2)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = client_direction("adamw", weight_decay=0.5)
    d, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(d["dense"]["kernel"], 0.5)  # λθ on the matrix
    np.testing.assert_allclose(d["dense"]["bias"], 0.0)
    np.testing.assert_allclose(d["ln"]["scale"], 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [None, 2])
def test_vmapped_gpipe_round_equals_loop_real_model(chunk):
    """Tiny BERT, each cluster with its own δ / order (stage layouts as data), GPipe encoder;
    all clusters in one vmap, or one cluster at a time (chunk 2 → groups of 1)."""
    from collapipe_jax.models import split
    from collapipe_jax.models.config import model_preset
    from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh
    from collapipe_jax.pipeline.partition import make_stage_layout, stack_layouts

    cfg = model_preset("tiny").replace(vocab_size=50, seq_len=8)
    params = split.init_split_model(jax.random.PRNGKey(0), cfg, "sentence", 5)
    layouts = stack_layouts([make_stage_layout(d, o, 3, 2) for d, o in
                             (([2, 1, 1], [0, 1, 2]), ([0, 2, 2], [2, 1]), ([1, 2, 1], [2, 0, 1]))])
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(1, 50, (3, 2, 4, 8)), jnp.int32),
             "label": jnp.asarray(rng.integers(0, 5, (3, 2, 4)), jnp.int32)}

    def loss(client, server, b, layout, key):
        enc = pipelined_encoder(layout, 2, mesh=stage_mesh(3))
        return split.split_model_loss({"client": client, "server": server}, b, enc)

    spec = spec_of(loss=loss, optimizer="adam", lr=0.01, local_steps=2, cluster_chunk=chunk)
    uploads = Uploads(active=jnp.array([True, True, False]), eps=jnp.array([0.01, 0.02, 0.03]),
                      weight=jnp.array([4.0, 5.0, 6.0]))
    with jax.default_matmul_precision("highest"):
        args = (init_server_state(spec, params["client"], params["server"]), batch, layouts, uploads, work([2, 1, 2]),
                jax.random.PRNGKey(2))
        close(make_round(spec)(*args), looped_round(spec)(*args), rtol=1e-4, atol=1e-6)
