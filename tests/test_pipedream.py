"""The pipedream reading of the pipeline (docs/design.md §5): stale weights by stage, weight
stashing, m updates per local step; against a plain-Python reference written here, and against
the gpipe reading where they must agree (S = 1, m = 1)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.cli import main
from collapipe_jax.federated.optim import client_direction, learning_rate_schedule
from collapipe_jax.federated.rounds import LocalWork, RoundSpec, Uploads, init_server_state, make_round
from collapipe_jax.pipeline.partition import make_stage_layout, stack_layouts
from collapipe_jax.pipeline.pipedream import layer_staleness

V, D, L, C = 13, 6, 4, 3


def test_layer_staleness_by_hand():
    """δ = (2, 0, 1, 1) in order (3, 0, 2): stages 0, 1, 2 hold layers [0], [1, 2], [3], so
    S = 3 and the ages are 2, 1, 1, 0; the embedding (first stage) is 2 updates old. Padded to
    5 stages of 3 slots, the identity stages change nothing."""
    layout = make_stage_layout([2, 0, 1, 1], [3, 0, 2], n_stages=5, n_slots=3)
    d_layer, d_embed = layer_staleness(layout, 4)
    assert d_layer.tolist() == [2, 1, 1, 0] and int(d_embed) == 2
    one = make_stage_layout([4], [0])
    d_layer, d_embed = layer_staleness(one, 4)
    assert d_layer.tolist() == [0, 0, 0, 0] and int(d_embed) == 0


def toy_loss(client, server, batch, layout, key):
    """Embedding → L residual tanh layers → head, cross-entropy (the layout is used by the
    round for the staleness only; this loss is the unsegmented model)."""
    x = jnp.mean(client["embed"][batch["tokens"]], axis=1)
    for l in range(L):
        x = x + jnp.tanh(x @ client["encoder"]["w"][l])
    logp = jax.nn.log_softmax(x @ server["head"])
    nll = -jnp.take_along_axis(logp, batch["label"][:, None], axis=1)[:, 0]
    return jnp.sum(nll), jnp.asarray(nll.shape[0], jnp.float32)


# per cluster: (δ, order) and the stage of each layer worked out by hand
PLANS = [([1, 1, 1, 1], [0, 1, 2, 3]), ([2, 0, 1, 1], [3, 0, 2]), ([4, 0, 0, 0], [0])]
STAGE_OF_LAYER = [[0, 1, 2, 3], [0, 1, 1, 2], [0, 0, 0, 0]]
N_STAGES = [4, 3, 1]


def toy_problem(n_micro, steps, batch=4, seed=0):
    rng = np.random.default_rng(seed)  # numpy draws: no small JAX programs to compile
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    client = {"embed": f32(rng.normal(size=(V, D))), "encoder": {"w": f32(0.4 * rng.normal(size=(L, D, D)))}}
    server = {"head": f32(rng.normal(size=(D, C)))}
    n = len(PLANS)
    data = {"tokens": jnp.asarray(rng.integers(0, V, (n, steps, batch, 5)), jnp.int32),
            "label": jnp.asarray(rng.integers(0, C, (n, steps, batch)), jnp.int32)}
    layouts = stack_layouts([make_stage_layout(d, o, n_stages=4, n_slots=4) for d, o in PLANS])
    return client, server, data, layouts


def pipedream_spec(n_micro, steps, lr=0.05, history=4):
    return RoundSpec(toy_loss, client_direction("adamw", weight_decay=0.01, clip_norm=5.0),
                     learning_rate_schedule("constant", lr), None, local_steps=steps, noise_mode="none",
                     client_state="reset", pipeline_schedule="pipedream", n_micro=n_micro, history=history)


def reference_round(client, server, data, n_micro, steps_n, lr, weights, active, stale=True):
    """Plain Python: every cluster keeps the list of all its versions; micro-batch u of cluster
    n computes layer l with version max(u − (S_n − 1 − stage(l)), 0) and the embedding with
    max(u − (S_n − 1), 0), and the update goes to the newest version. The head steps once per
    micro-batch on the weighted mean of the clusters' head gradients. Then FedAvg."""
    tx = client_direction("adamw", weight_decay=0.01, clip_norm=5.0)
    step = jax.jit(lambda g, opt, p: (lambda d, o: (jax.tree.map(lambda a, b: a - lr * b, p, d), o))(
        *tx.update(g, opt, p)))  # one optimizer update θ − η D(g), compiled once per tree
    grad = jax.jit(jax.value_and_grad(lambda c, s, b: toy_loss(c, s, b, None, None)[0] / b["label"].shape[0],
                                      argnums=(0, 1)))
    n = len(PLANS)
    versions = [[client] for _ in range(n)]
    opts = [tx.init(client) for _ in range(n)]
    head_opt = tx.init(server)
    losses = [[] for _ in range(n)]
    b_hat = data["label"].shape[2] // n_micro
    for e in range(max(steps_n)):
        for k in range(n_micro):
            g_heads, w = [], []
            for c in range(n):
                u = len(versions[c]) - 1
                s = N_STAGES[c]
                old = lambda age: versions[c][max(u - age, 0) if stale else u]  # noqa: E731 (stale=False: the newest)
                mixed = {"embed": old(s - 1)["embed"],
                         "encoder": {"w": jnp.stack([old(s - 1 - STAGE_OF_LAYER[c][l])["encoder"]["w"][l]
                                                     for l in range(L)])}}
                micro = {key: v[c, e, k * b_hat:(k + 1) * b_hat] for key, v in data.items()}
                loss, (g_client, g_head) = grad(mixed, server, micro)
                live = e < steps_n[c]
                if live:
                    new, opts[c] = step(g_client, opts[c], versions[c][-1])
                    versions[c].append(new)
                    losses[c].append(float(loss))
                g_heads.append(g_head)
                w.append(weights[c] * active[c] * live)
            if sum(w) > 0:
                mean = jax.tree.map(lambda *g: sum(wi * gi for wi, gi in zip(w, g)) / sum(w), *g_heads)
                server, head_opt = step(mean, head_opt, server)
    total = sum(weights[c] * active[c] for c in range(n))
    new_client = jax.tree.map(lambda *v: sum(weights[c] * active[c] * v[c] for c in range(n)) / total,
                              *[versions[c][-1] for c in range(n)])
    return new_client, server, [float(np.mean(x)) for x in losses]


def test_pipedream_round_equals_plain_python_reference():
    """Three clusters with S = 4, 3, 1 (padded to 4 stages), m = 2 micro-batches of 2, E = 3
    local steps (the third masked for cluster 1), AdamW with clipping, one cluster without a
    channel: the jitted vmapped round equals the reference loop."""
    m, steps_n = 2, [3, 2, 3]
    client, server, data, layouts = toy_problem(m, 3)
    spec = pipedream_spec(m, 3)
    weights, active = np.array([3.0, 5.0, 4.0]), np.array([True, True, False])
    uploads = Uploads(active=jnp.asarray(active), eps=jnp.zeros(3), weight=jnp.asarray(weights, jnp.float32))
    work = LocalWork(jnp.asarray(steps_n, jnp.int32), jnp.asarray(0, jnp.int32))
    with jax.default_matmul_precision("highest"):
        state, out = make_round(spec)(init_server_state(spec, client, server), data, layouts, uploads, work,
                                      jax.random.PRNGKey(1))
        ref_client, ref_server, ref_losses = reference_round(client, server, data, m, steps_n, 0.05, weights, active)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6)  # noqa: E731
    jax.tree.map(close, state.client, ref_client)
    jax.tree.map(close, state.server, ref_server)
    close(out.loss, ref_losses)
    # the staleness matters here: the same updates at the newest weights end elsewhere
    fresh_client, _, _ = reference_round(client, server, data, m, steps_n, 0.05, weights, active, stale=False)
    assert float(jnp.max(jnp.abs(state.client["encoder"]["w"] - fresh_client["encoder"]["w"]))) > 1e-4


def _real_round(schedule, n_micro, delta, order, steps=2):
    """One round of the tiny BERT through program.RoundSettings (the trainer's path): losses and
    the new client model. SGD: Adam would turn the float noise of gradients that are zero in
    exact arithmetic (the attention key bias) into whole steps, and the models would differ."""
    from collapipe_jax.federated import program
    from collapipe_jax.models import split
    from collapipe_jax.models.config import model_preset

    cfg = model_preset("tiny").replace(vocab_size=40, seq_len=8)
    params = split.init_split_model(jax.random.PRNGKey(0), cfg, "sentence", 3)
    s = int(np.count_nonzero(delta))
    settings = program.RoundSettings(pipelined=True, n_micro=n_micro, n_stages=s, local_steps=steps, optimizer="sgd",
                                     lr=0.1, dropout=0.1, noise_mode="none", client_state="keep",
                                     pipeline_schedule=schedule)
    spec = settings.spec()
    rng = np.random.default_rng(0)
    data = {"tokens": jnp.asarray(rng.integers(1, 40, (2, steps, 4, 8)), jnp.int32),
            "label": jnp.asarray(rng.integers(0, 3, (2, steps, 4)), jnp.int32)}
    layouts = program.stage_layouts(np.array([delta, delta]), [order, order], s, max(delta))
    uploads = Uploads(active=jnp.array([True, True]), eps=jnp.zeros(2), weight=jnp.array([1.0, 2.0]))
    work = LocalWork(jnp.asarray([steps, steps], jnp.int32), jnp.asarray(0, jnp.int32))
    state = init_server_state(spec, params["client"], params["server"], 2)
    new, out = program.compiled_round(settings)(state, data, layouts, uploads, work, jax.random.PRNGKey(3))
    return np.asarray(out.loss), new.client


@pytest.mark.slow  # ~10-20 s: keeps the default suite near 10 minutes on 2 cores
def test_s1_m1_pipedream_is_gpipe_toy():
    """One stage, one micro-batch: nothing is stale and a step is one update, so the pipedream
    round is the gpipe round (same loss function, same optimizer): same losses, same model."""
    client, server, data, _ = toy_problem(1, 2)
    layouts = stack_layouts([make_stage_layout([4], [0], n_stages=1, n_slots=4)] * len(PLANS))
    uploads = Uploads(active=jnp.array([True, True, True]), eps=jnp.zeros(3), weight=jnp.array([1.0, 2.0, 3.0]))
    work = LocalWork(jnp.asarray([2, 2, 1], jnp.int32), jnp.asarray(0, jnp.int32))
    out = {}
    pipedream = pipedream_spec(1, 2, history=1)
    for name, spec in (("pipedream", pipedream), ("gpipe", dataclasses.replace(pipedream, pipeline_schedule="gpipe"))):
        out[name] = make_round(spec)(init_server_state(spec, client, server), data, layouts, uploads, work,
                                     jax.random.PRNGKey(0))
    np.testing.assert_allclose(out["pipedream"][1].loss, out["gpipe"][1].loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), out["pipedream"][0].client,
                 out["gpipe"][0].client)


@pytest.mark.slow
def test_s1_m1_pipedream_is_gpipe():
    """The same through the trainer's round settings with the tiny BERT and dropout on: gpipe
    runs the shard_map encoder, pipedream the unsegmented one, equal up to float round-off."""
    loss_g, client_g = _real_round("gpipe", 1, [4], [0])
    loss_p, client_p = _real_round("pipedream", 1, [4], [0])
    np.testing.assert_allclose(loss_p, loss_g, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), client_p, client_g)


@pytest.mark.slow
def test_gpipe_ignores_s_and_m_pipedream_does_not():
    """gpipe: S = 4, m = 4 gives the losses of S = 1, m = 1 (the same gradient); pipedream with
    S = 4, m = 4 learns differently (four stale updates per step)."""
    loss_1, _ = _real_round("gpipe", 1, [4], [0])
    loss_g, _ = _real_round("gpipe", 4, [1, 1, 1, 1], [0, 1, 2, 3])
    loss_p, _ = _real_round("pipedream", 4, [1, 1, 1, 1], [0, 1, 2, 3])
    np.testing.assert_allclose(loss_g, loss_1, rtol=1e-5)
    assert np.all(np.abs(loss_p - loss_g) > 1e-4 * np.abs(loss_g))


@pytest.mark.parametrize("flags, field", [
    (["--pipeline-schedule", "1f1b"], "pipeline-schedule"),
    (["--pipeline-schedule", "pipedream", "--no-pipeline"], "pipeline-schedule"),
    (["--pipeline-schedule", "pipedream", "--framework", "vanilla-fl"], "pipeline-schedule"),
    (["--pipeline-schedule", "pipedream", "--batch", "6", "--micro-batches", "4"], "micro-batches"),
    (["--pipeline-schedule", "pipedream", "--policy", "default", "--plan-micro-batches", "2", "--micro-batches", "4"],
     "plan-micro-batches"),
])
def test_bad_pipeline_schedule_is_one_line_exit_2(capsys, tmp_path, flags, field):
    code = main(["train", "--task", "toutiao", "--log-dir", str(tmp_path / "run"), "--no-progress", *flags])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and field in lines[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("variant, stage, dd_last, gpipe_round, pipedream_round", [
    # consistent: t = (2, 3, 1); GPipe E (Σt + (m − 1) max t) = 3 (6 + 3) = 27,
    # 1F1B Σt + (E m − 1) max t = 6 + 5 · 3 = 21
    ("consistent", [2.0, 3.0, 1.0], 0.0, 27.0, 21.0),
    # paper: u = (2, 3, 1.5), τ^dd_last = 0.5, S = 3; GPipe E ((S + m − 1) max u − τ^dd_last) = 3 (12 − 0.5)
    # = 34.5, 1F1B (S + E m − 1) max u − τ^dd_last = 8 · 3 − 0.5 = 23.5
    ("paper", [2.0, 3.0, 1.5], 0.5, 34.5, 23.5),
])
def test_pipedream_latency_by_hand(variant, stage, dd_last, gpipe_round, pipedream_round):
    """S = 3 devices (a fourth unscheduled), m = 2, E = 3 local steps."""
    from collapipe_jax.system.latency import pipedream_latency, pipeline_latency

    stage_s = jnp.asarray([stage + [0.0]])
    scheduled = jnp.asarray([[True, True, True, False]])
    last = jnp.asarray([[False, False, True, False]])
    tau_dd = jnp.asarray([[0.1, 0.2, dd_last, 0.0]])
    per_step = pipeline_latency(stage_s, 2, scheduled, last, tau_dd, variant)
    np.testing.assert_allclose(3 * per_step, [gpipe_round], rtol=1e-6)
    np.testing.assert_allclose(pipedream_latency(stage_s, 2, 3, scheduled, last, tau_dd, variant), [pipedream_round],
                               rtol=1e-6)
    # one local step: the two readings take the same time
    np.testing.assert_allclose(pipedream_latency(stage_s, 2, 1, scheduled, last, tau_dd, variant), per_step, rtol=1e-6)
