"""One federated CollaPipe round, vmapped over the N clusters (Alg. 1; Eq. 6–9, 25).

Per round t, every cluster n starts from the global client model θ^t (embedding + encoder, the
part that lives in the cluster) and the shared server model ω (decoder / head on the edge
server), makes E local steps on its own mini-batches, and uploads its model through its
assigned channel:

  local steps (Eq. 6), e = 0..E_n−1, global step s = s_0 + e (optim.py):
      θ_n ← θ_n − η(s) D(∇_θ F_n(θ_n, ω; B_n^{t,e}))           (θ_n = θ^t at e = 0; D: SGD/momentum/Adam)
      ω  ← ω  − η(s) D_ω(Σ_{n∈A} D_n ∇_ω F_n / Σ_{n∈A} D_n)    (the server head steps once per local
                                                                step on the weighted mean gradient of
                                                                the clusters whose outputs reach it)
  noisy upload (Eq. 25):  θ̃_n = θ^t + (θ_n − θ^t) + ξ_n,  ξ_n ~ N(0, ε_n · P_n · I),
                          ε_n = C / (p_n h_n + I_i) (Lemma 2) from the system model, P_n = mean((θ_n − θ^t)²)
                          the power of the uploaded update (the CU normalises its payload to unit
                          power and the server rescales it, so ε_n is the noise-to-signal ratio;
                          noise_mode="absolute" adds N(0, ε_n) instead)
  aggregation (Eq. 7–9):  θ̄ = Σ_{n∈A} D_n θ̃_n / Σ_{n∈A} D_n over A = clusters with a channel, then
                          the server optimizer on Δ = θ^t − θ̄ (FedAvg: θ^{t+1} = θ̄; FedAdam/FedYogi);
                          if A = ∅, θ^{t+1} = θ^t.

E is the compiled number of local steps; cluster n makes E_n ≤ E of them (`LocalWork.steps`,
data: local epochs over clusters of different sizes), its later steps masked. The client
optimizer state is either reset every round (`client_state="reset"`, the FedAvg convention: a
cluster's local run starts afresh from the aggregated model), kept per cluster across rounds
(`"keep"`: each cluster's momentum / Adam moments persist, as a device that trains every round
would keep them), or averaged (`"average"`: after the local steps the clusters' optimizer states
are averaged with the aggregation's weights D_n over the uploading clusters, as the model is,
and every cluster starts the next round from that mean; a step count takes the largest); the
learning-rate schedule counts global steps in every case (it never restarts within a round). The server head's
optimizer state and the server optimizer's state persist across rounds.

Per-cluster quantities — the stage layout (S, δ, order as masks), the upload mask, ε_n, D_n, E_n —
are data with a leading N axis, never shapes, so one compiled program serves every decision.

With LoRA (`upload_mask` = the adapters' mask, `direction` frozen on the base) only the
adapters train, and only they are uploaded, noised and averaged: the frozen base never leaves
the cluster and stays θ^t. The server head keeps its own `head_direction` (it trains fully).

`independent=True` is the no-FL variant (the PipeLine baseline): θ carries a leading N axis, each
cluster keeps its own encoder and no client model is uploaded or averaged; the server head takes
the D_n-weighted mean gradient of all clusters.

`pipeline_schedule="pipedream"` (docs/design.md §5, pipeline/pipedream.py) replaces each local
step's one update by m = `n_micro` updates, one per micro-batch of b/m samples, each with the
gradient at the stale, stashed weights of asynchronous 1F1B: encoder layer l of stage j from the
version S_n − 1 − j updates old (S_n the cluster's stage count, from its layout), the embedding
from S_n − 1; the history of versions starts every round as θ^t (the round's upload drains the
pipeline). The server head, past the last stage, steps on every micro-batch with fresh weights.
A step's loss is its micro-batches' Σ loss / Σ weight; `grad_norm` is the first micro-batch's (at θ^t).

`make_round(spec)` returns the jitted vmapped round; `looped_round(spec)` the same computation
as Python loops over the steps and clusters (reference for tests and the benchmark).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from collapipe_jax.choices import CLIENT_STATES, NOISE_MODES, PIPELINE_SCHEDULES  # noqa: F401 (re-exported)
from collapipe_jax.errors import ValidationError
from collapipe_jax.federated.optim import apply_direction
from collapipe_jax.pipeline.pipedream import fresh_history, layer_staleness, push_version, stale_params

# loss_fn(client, server, batch, layout, key) -> (Σ weighted loss, Σ weights); key: dropout
LossFn = Callable[[Any, Any, dict, Any, jax.Array], tuple[jax.Array, jax.Array]]


@struct.dataclass
class Uploads:
    """Per-cluster upload data [N]: who aggregates, with what noise, with what weight."""

    active: jax.Array  # bool [N]: cluster has an uplink channel this round
    eps: jax.Array  # float [N]: ε_n = C / (p_n h_n + I_i) (Eq. 25); unused where inactive
    weight: jax.Array  # float [N]: D_n, the cluster's number of training samples


@struct.dataclass
class LocalWork:
    steps: jax.Array  # int [N]: local steps E_n of each cluster this round (≤ the compiled E)
    step0: jax.Array  # int []: global index of the round's first local step (learning-rate schedule)


@struct.dataclass
class ServerState:
    """What persists between rounds on the server (as FedJAX's ServerState)."""

    client: Any  # θ: the global client model ([N, ...] per cluster when independent)
    server: Any  # ω: the server-side decoder / head
    head_opt: Any  # optimizer state of ω (the client optimizer's transformation)
    fed_opt: Any  # server optimizer state on θ (() for FedAvg)
    client_opt: Any = ()  # [N, ...] per-cluster client optimizer states (client_state "keep"/"average"; () otherwise)


@struct.dataclass
class RoundOutput:
    loss: jax.Array  # float [N]: each cluster's mean training loss over its local steps
    loss_sum: jax.Array  # float [N]: Σ weighted loss over the local steps
    weight_sum: jax.Array  # float [N]
    grad_norm: jax.Array  # float [N]: ‖∇_θ F_n‖ at the round's first local step (θ^t)
    params_finite: jax.Array  # bool []: every new client and server parameter is finite


@dataclasses.dataclass(frozen=True)
class RoundSpec:
    """The static description of a compiled round."""

    loss_fn: LossFn
    direction: optax.GradientTransformation  # client update direction (optim.client_direction)
    schedule: Callable[[jax.Array], jax.Array]  # learning rate of global step s
    server_tx: optax.GradientTransformation | None = None  # on Δ = θ^t − θ̄; None = FedAvg
    local_steps: int = 1  # compiled E
    noise_mode: str = "relative"
    independent: bool = False
    cluster_chunk: int | None = None
    client_state: str = "reset"  # "reset" each round (FedAvg), "keep" per cluster, or "average"
    head_direction: optax.GradientTransformation | None = None  # the server head's (None: `direction`)
    upload_mask: Callable[[Any], Any] | None = None  # params -> bool tree of the uploaded leaves (None: all)
    pipeline_schedule: str = "gpipe"  # "pipedream": n_micro stale-weight updates per local step
    n_micro: int = 1  # pipedream: updates (micro-batches) per local step
    history: int = 1  # pipedream: versions kept (≥ the largest S of the round's layouts)

    @property
    def head(self) -> optax.GradientTransformation:
        return self.direction if self.head_direction is None else self.head_direction

    def __post_init__(self):
        if self.noise_mode not in NOISE_MODES:
            raise ValidationError("noise_mode", f"must be one of {list(NOISE_MODES)}", self.noise_mode)
        chunk = self.cluster_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValidationError("cluster_chunk", "must be None or an integer >= 1", chunk)
        if isinstance(self.local_steps, bool) or not isinstance(self.local_steps, int) or self.local_steps < 1:
            raise ValidationError("local_steps", "must be an integer >= 1", self.local_steps)
        if self.client_state not in CLIENT_STATES:
            raise ValidationError("client_state", f"must be one of {list(CLIENT_STATES)}", self.client_state)
        if self.independent and self.client_state == "average":
            raise ValidationError("client_state", "average needs FL aggregation (a round without it has none)")
        if self.independent and self.server_tx is not None:
            raise ValidationError("server_optimizer", "a round without FL aggregation has no server optimizer")
        if self.pipeline_schedule not in PIPELINE_SCHEDULES:
            raise ValidationError("pipeline_schedule", f"must be one of {list(PIPELINE_SCHEDULES)}",
                                  self.pipeline_schedule)
        for name in ("n_micro", "history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(name, "must be an integer >= 1", value)


def init_server_state(spec: RoundSpec, client, server, n_clusters: int | None = None) -> ServerState:
    """The state before round 0; `n_clusters` is needed for client_state "keep" and "average"."""
    fed_opt = spec.server_tx.init(client) if spec.server_tx is not None else ()
    client_opt = ()
    if spec.client_state != "reset":
        one = client if not spec.independent else jax.tree.map(lambda x: x[0], client)
        client_opt = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_clusters,) + x.shape), spec.direction.init(one))
    return ServerState(client, server, spec.head.init(server), fed_opt, client_opt)


def all_finite(*trees) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def select(mask, on_true, on_false):
    """Per-cluster choice between two pytrees with a leading N axis (mask [N])."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b),
                        on_true, on_false)


def where_tree(cond, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), on_true, on_false)


def cluster_grad(loss_fn: LossFn, client, server, batch, layout, key):
    """One cluster's mean loss and gradients: (loss, loss_sum, weight_sum, ∇_θ, ∇_ω)."""
    def mean_loss(c, s):
        loss_sum, weight_sum = loss_fn(c, s, batch, layout, key)
        return loss_sum / jnp.maximum(weight_sum, 1e-9), (loss_sum, weight_sum)

    (loss, (loss_sum, weight_sum)), (g_client, g_server) = jax.value_and_grad(
        mean_loss, argnums=(0, 1), has_aux=True)(client, server)
    return loss, loss_sum, weight_sum, g_client, g_server


def noisy_upload(global_client, local_client, eps, key, noise_mode: str, mask=None):
    """θ̃_n = θ^t + Δ_n + ξ_n with ξ_n ~ N(0, ε_n P_n) (relative) or N(0, ε_n) (absolute).

    `mask` (a bool tree, None = everything): the leaves that are uploaded; the others are not
    sent and stay θ^t, and the update power P_n is that of the payload alone."""
    if mask is None:
        mask = jax.tree.map(lambda _: True, global_client)
    delta = jax.tree.map(lambda g, loc, sent: loc - g if sent else jnp.zeros((0,), g.dtype),
                         global_client, local_client, mask)
    flat, unravel = ravel_pytree(delta)
    if noise_mode == "none":
        return jax.tree.map(lambda g, r, sent: g + r if sent else g, global_client, unravel(flat), mask)
    power = jnp.mean(jnp.square(flat)) if noise_mode == "relative" else 1.0
    # one flat draw for the whole payload: XLA compiles a 1-D threefry draw far faster than
    # one draw per multi-dimensional leaf
    noise = jax.random.normal(key, flat.shape, flat.dtype)
    received = unravel(flat + jnp.sqrt(eps * power) * noise)
    return jax.tree.map(lambda g, r, sent: g + r if sent else g, global_client, received, mask)


def weighted_average(trees, weights):
    """Σ_n w_n tree_n / Σ_n w_n over a leading N axis (zeros when every w_n = 0)."""
    w = weights / jnp.maximum(jnp.sum(weights), 1e-30)
    return jax.tree.map(lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=1), trees)


def average_states(opt_states, weights):
    """The clusters' optimizer states [N, ...] replaced by their weighted mean (client_state
    "average"), broadcast back to N; integer leaves (step counts) take the largest. With no
    weight (no uploading cluster) the states stay as they are."""
    any_w = jnp.sum(weights) > 0

    def mean(x):
        if jnp.issubdtype(x.dtype, jnp.integer):
            m = jnp.max(x, axis=0)
        else:
            m = jnp.tensordot((weights / jnp.maximum(jnp.sum(weights), 1e-30)).astype(x.dtype), x, axes=1)
        return jnp.where(any_w, jnp.broadcast_to(m, x.shape), x)

    return jax.tree.map(mean, opt_states)


def server_update(spec: RoundSpec, state: ServerState, uploaded, uploads: Uploads):
    """Eq. 7–9 then the server optimizer: (θ^{t+1}, its optimizer state)."""
    w = jnp.where(uploads.active, uploads.weight, 0.0)
    any_active = jnp.sum(w) > 0
    mean = weighted_average(uploaded, w)
    if spec.server_tx is None:
        return where_tree(any_active, mean, state.client), state.fed_opt
    pseudo_grad = jax.tree.map(jnp.subtract, state.client, mean)
    updates, fed_opt = spec.server_tx.update(pseudo_grad, state.fed_opt, state.client)
    new_client = optax.apply_updates(state.client, updates)
    return where_tree(any_active, new_client, state.client), where_tree(any_active, fed_opt, state.fed_opt)


def cluster_group_size(n_clusters: int, cluster_chunk: int | None) -> int:
    """Clusters vectorised together: all N (cluster_chunk None), else the largest divisor of N
    not above cluster_chunk, so every group has the same shape and the step compiles once."""
    if cluster_chunk is None or cluster_chunk >= n_clusters:
        return n_clusters
    return max(k for k in range(1, cluster_chunk + 1) if n_clusters % k == 0)


def step_keys(key, e, n_clusters: int):
    """The dropout key of (round, local step e, cluster n): a pure function, shared by the
    vmapped and the looped round."""
    return jax.vmap(lambda n: jax.random.fold_in(jax.random.fold_in(key, e), n))(jnp.arange(n_clusters))


def make_round(spec: RoundSpec):
    """The jitted round: (ServerState, batch [N, E, b, ...], layout [N], Uploads, LocalWork, key)
    → (ServerState, RoundOutput).

    `cluster_chunk` bounds how many clusters' gradients are computed at once: None, one `vmap`
    over all N; an integer k, a `lax.map` over N/k groups of k vmapped clusters (k rounded down
    to a divisor of N), which bounds the activations held at once (CPU caches, device memory at
    large N). The result is the same up to float round-off.
    """
    vgrad = jax.vmap(lambda c, s, b, lay, k: cluster_grad(spec.loss_fn, c, s, b, lay, k), in_axes=(0, None, 0, 0, 0))

    def grads(clients, server, batch, layout, keys):
        n = keys.shape[0]
        k = cluster_group_size(n, spec.cluster_chunk)
        if k == n:
            return vgrad(clients, server, batch, layout, keys)
        groups = jax.tree.map(lambda x: x.reshape((n // k, k) + x.shape[1:]), (clients, batch, layout, keys))
        out = jax.lax.map(lambda g: vgrad(g[0], server, g[1], g[2], g[3]), groups)
        return jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), out)

    def round_fn(state: ServerState, batch, layout, uploads: Uploads, work: LocalWork, key):
        n = uploads.active.shape[0]
        dropout_key, noise_key = jax.random.split(key)
        if spec.independent:
            clients = state.client
        else:
            clients = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state.client)
        head_weight = uploads.weight if spec.independent else jnp.where(uploads.active, uploads.weight, 0.0)

        def update(carry, g_client, g_server, live, lr):
            """One optimizer update of every live cluster and of the server head."""
            clients, client_opt, server, head_opt = carry
            direction, new_opt = jax.vmap(spec.direction.update)(g_client, client_opt, clients)
            clients = select(live, apply_direction(clients, direction, lr), clients)
            client_opt = select(live, new_opt, client_opt)
            w = head_weight * live
            head_dir, new_head_opt = spec.head.update(weighted_average(g_server, w), head_opt, server)
            stepped = jnp.sum(w) > 0
            server = where_tree(stepped, apply_direction(server, head_dir, lr), server)
            head_opt = where_tree(stepped, new_head_opt, head_opt)
            return clients, client_opt, server, head_opt

        def local_step(carry, xs):
            batch_e, e = xs
            live = e < work.steps
            loss, loss_sum, weight_sum, g_client, g_server = grads(carry[0], carry[2], batch_e, layout,
                                                                    step_keys(dropout_key, e, n))
            carry = update(carry, g_client, g_server, live, spec.schedule(work.step0 + e))
            gnorm = jax.vmap(optax.tree.norm)(g_client)
            return carry, (loss * live, loss_sum * live, weight_sum * live, gnorm)

        def pipedream_step(carry, xs):
            """m updates, one per micro-batch, each at the stashed stale weights (module doc)."""
            carry, history = carry
            batch_e, e = xs
            live = e < work.steps
            lr = spec.schedule(work.step0 + e)
            m = spec.n_micro
            micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape((n, m, x.shape[1] // m) + x.shape[2:]), 1, 0),
                                 batch_e)  # [m, N, b/m, ...]
            keys = step_keys(dropout_key, e, n)

            def micro_step(carry, ys):
                carry, history = carry
                batch_k, k = ys
                mixed = jax.vmap(stale_params)(history, d_layer, d_embed)
                # m = 1 keeps the step's keys (then S = 1 is the gpipe round bit for bit)
                keys_k = keys if m == 1 else jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, k)
                loss, loss_sum, weight_sum, g_client, g_server = grads(mixed, carry[2], batch_k, layout, keys_k)
                carry = update(carry, g_client, g_server, live, lr)
                history = select(live, jax.vmap(push_version)(history, carry[0]), history)
                return (carry, history), (loss_sum, weight_sum, jax.vmap(optax.tree.norm)(g_client))

            (carry, history), (loss_sum, weight_sum, gnorm) = jax.lax.scan(
                micro_step, (carry, history), (micro, jnp.arange(m)))
            loss_sum, weight_sum = jnp.sum(loss_sum, 0), jnp.sum(weight_sum, 0)
            loss = loss_sum / jnp.maximum(weight_sum, 1e-9)
            return (carry, history), (loss * live, loss_sum * live, weight_sum * live, gnorm[0])

        per_step = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batch)  # [E, N, b, ...]
        keep = spec.client_state != "reset"
        client_opt = state.client_opt if keep else jax.vmap(spec.direction.init)(clients)
        init = (clients, client_opt, state.server, state.head_opt)
        if spec.pipeline_schedule == "pipedream":
            n_layers = jax.tree.leaves(state.client["encoder"])[0].shape[1 if spec.independent else 0]
            d_layer, d_embed = jax.vmap(lambda lay: layer_staleness(lay, n_layers))(layout)
            history = jax.vmap(lambda c: fresh_history(c, spec.history))(clients)  # reset to θ^t every round
            ((clients, client_opt, server, head_opt), _), (loss, loss_sum, weight_sum, gnorm) = jax.lax.scan(
                pipedream_step, (init, history), (per_step, jnp.arange(spec.local_steps)))
        else:
            (clients, client_opt, server, head_opt), (loss, loss_sum, weight_sum, gnorm) = jax.lax.scan(
                local_step, init, (per_step, jnp.arange(spec.local_steps)))
        if spec.independent:
            new_client, fed_opt = clients, state.fed_opt
        else:
            keys = jax.random.split(noise_key, n)
            mask = None if spec.upload_mask is None else spec.upload_mask(state.client)
            send = functools.partial(noisy_upload, noise_mode=spec.noise_mode, mask=mask)
            uploaded = jax.vmap(send, in_axes=(None, 0, 0, 0))(state.client, clients, uploads.eps, keys)
            new_client, fed_opt = server_update(spec, state, uploaded, uploads)
            if spec.client_state == "average":
                client_opt = average_states(client_opt, jnp.where(uploads.active, uploads.weight, 0.0))
        new_state = ServerState(new_client, server, head_opt, fed_opt, client_opt if keep else ())
        out = RoundOutput(jnp.sum(loss, 0) / jnp.maximum(work.steps, 1), jnp.sum(loss_sum, 0), jnp.sum(weight_sum, 0),
                          gnorm[0], all_finite(new_client, server))
        return new_state, out

    return jax.jit(round_fn)


def looped_round(spec: RoundSpec):
    """The same round as `make_round`, as Python loops over the local steps and the clusters of
    a jitted per-cluster gradient (what one would write without vmap and scan). Reference for
    tests and the benchmark; the gpipe reading only."""
    if spec.pipeline_schedule != "gpipe":
        raise ValidationError("pipeline_schedule", "the looped reference runs the gpipe reading only",
                              spec.pipeline_schedule)
    grad = jax.jit(lambda c, s, b, lay, k: cluster_grad(spec.loss_fn, c, s, b, lay, k))
    pick = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731

    def round_fn(state: ServerState, batch, layout, uploads: Uploads, work: LocalWork, key):
        n = uploads.active.shape[0]
        dropout_key, noise_key = jax.random.split(key)
        clients = [pick(state.client, i) if spec.independent else state.client for i in range(n)]
        keep = spec.client_state != "reset"
        opts = [pick(state.client_opt, i) if keep else spec.direction.init(c) for i, c in enumerate(clients)]
        server, head_opt = state.server, state.head_opt
        head_weight = uploads.weight if spec.independent else jnp.where(uploads.active, uploads.weight, 0.0)
        sums = [[0.0, 0.0, 0.0] for _ in range(n)]
        first_norm = [None] * n
        for e in range(spec.local_steps):
            keys = step_keys(dropout_key, e, n)
            lr = spec.schedule(work.step0 + e)
            g_servers, weights = [], []
            for i in range(n):
                loss, ls, ws, g_c, g_s = grad(clients[i], server, pick(pick(batch, i), e), pick(layout, i), keys[i])
                if e == 0:
                    first_norm[i] = optax.tree.norm(g_c)
                live = e < int(work.steps[i])
                if live:
                    direction, opts[i] = spec.direction.update(g_c, opts[i], clients[i])
                    clients[i] = apply_direction(clients[i], direction, lr)
                    sums[i] = [sums[i][0] + loss, sums[i][1] + ls, sums[i][2] + ws]
                g_servers.append(g_s)
                weights.append(head_weight[i] * live)
            w = jnp.asarray(weights)
            if float(jnp.sum(w)) > 0:
                head_dir, head_opt = spec.head.update(weighted_average(stack(g_servers), w), head_opt, server)
                server = apply_direction(server, head_dir, lr)
        if spec.independent:
            new_client, fed_opt = stack(clients), state.fed_opt
        else:
            keys = jax.random.split(noise_key, n)
            mask = None if spec.upload_mask is None else spec.upload_mask(state.client)
            uploaded = stack([noisy_upload(state.client, clients[i], uploads.eps[i], keys[i], spec.noise_mode, mask)
                              for i in range(n)])
            new_client, fed_opt = server_update(spec, state, uploaded, uploads)
            if spec.client_state == "average":
                opts = [pick(average_states(stack(opts), jnp.where(uploads.active, uploads.weight, 0.0)), i)
                        for i in range(n)]
        steps = jnp.maximum(work.steps, 1)
        out = RoundOutput(jnp.asarray([s[0] for s in sums]) / steps, jnp.asarray([s[1] for s in sums]),
                          jnp.asarray([s[2] for s in sums]), jnp.asarray(first_norm), all_finite(new_client, server))
        return ServerState(new_client, server, head_opt, fed_opt, stack(opts) if keep else ()), out

    return round_fn
