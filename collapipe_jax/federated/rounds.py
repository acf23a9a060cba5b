"""One federated CollaPipe round, vmapped over the N clusters (Eq. 6–9, Eq. 25).

Per round t, every cluster n starts from the global client model θ^t (embedding + encoder, the
part that lives in the cluster) and the shared server model ω^t (decoder / head on the edge
server), trains on its mini-batch B_n^t, and uploads its model through its assigned channel:

  local step (Eq. 6):        θ_n = θ^t − η ∇_θ F_n(θ^t, ω^t; B_n^t)
  noisy upload (Eq. 25):     θ̃_n = θ^t + (θ_n − θ^t) + ξ_n,   ξ_n ~ N(0, ε_n · P_n · I),
                             ε_n = C / (p_n h_n + I_i)  (Lemma 2), the channel's noise variance
                             per unit transmit power, P_n = mean((θ_n − θ^t)²) the power of the
                             uploaded update (the CU normalises its payload to unit power before
                             transmission and the server rescales it, so ε_n is the noise-to-
                             signal ratio; noise_mode="absolute" adds N(0, ε_n) to θ_n instead)
  aggregation (Eq. 7–9):     θ^{t+1} = Σ_{n∈A} D_n θ̃_n / Σ_{n∈A} D_n, A = clusters with a channel
                             (a cluster without one skips this round's aggregation; if A = ∅,
                             θ^{t+1} = θ^t)
  server (shared head):      ω^{t+1} = ω^t − η Σ_{n∈A} D_n ∇_ω F_n / Σ_{n∈A} D_n
                             (the server sees only the clusters whose encoder outputs reached it)

Per-cluster quantities — the stage layout (S, δ, order as masks), the upload mask, ε_n, D_n —
are data with a leading N axis, never shapes, so one compiled program serves every decision.
The local model is one optax step (SGD as in the paper) on the cluster's batch; the optimizer
state of θ is fresh each round (plain SGD has none), ω's persists on the server.

`independent=True` is the no-FL variant (the PipeLine baseline): θ carries a leading N axis,
each cluster keeps its own encoder and no client model is uploaded or averaged; the server head
(which every cluster's encoder output reaches) takes the D_n-weighted mean gradient of all clusters.

`make_round(...)` returns the jitted vmapped round; `looped_round(...)` the same computation as
a Python loop over the clusters (reference for tests and the benchmark).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from collapipe_jax.errors import ValidationError

LossFn = Callable[[Any, Any, dict, Any], tuple[jax.Array, jax.Array]]
NOISE_MODES = ("relative", "absolute")


@struct.dataclass
class Uploads:
    """Per-cluster upload data [N]: who aggregates, with what noise, with what weight."""

    active: jax.Array  # bool [N]: cluster has an uplink channel this round
    eps: jax.Array  # float [N]: ε_n = C / (p_n h_n + I_i) (Eq. 25); unused where inactive
    weight: jax.Array  # float [N]: D_n, the cluster's number of training samples


@struct.dataclass
class RoundOutput:
    loss: jax.Array  # float [N]: each cluster's mean training loss on its batch, before the update
    loss_sum: jax.Array  # float [N]
    weight_sum: jax.Array  # float [N]
    grad_norm: jax.Array  # float [N]: ‖∇_θ F_n‖ of the local step
    params_finite: jax.Array  # bool []: every new client and server parameter is finite


def all_finite(*trees) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def eps_of(c_noise, p_n, h_n, interference):
    """Eq. 25: ε_n = C / (p_n h_n + I_i)."""
    return c_noise / (p_n * h_n + interference)


def _mean_loss(loss_fn: LossFn):
    def f(client, server, batch, layout):
        loss_sum, weight_sum = loss_fn(client, server, batch, layout)
        return loss_sum / jnp.maximum(weight_sum, 1e-9), (loss_sum, weight_sum)

    return f


def cluster_step(loss_fn: LossFn, client_opt: optax.GradientTransformation, client, server, batch, layout):
    """One cluster's local step: (θ_n, ∇_ω F_n, loss, loss_sum, weight_sum, ‖∇_θ F_n‖)."""
    (loss, (loss_sum, weight_sum)), (g_client, g_server) = jax.value_and_grad(
        _mean_loss(loss_fn), argnums=(0, 1), has_aux=True
    )(client, server, batch, layout)
    updates, _ = client_opt.update(g_client, client_opt.init(client), client)
    new_client = optax.apply_updates(client, updates)
    return new_client, g_server, loss, loss_sum, weight_sum, optax.tree.norm(g_client)


def noisy_upload(global_client, local_client, eps, key, noise_mode: str):
    """θ̃_n = θ^t + Δ_n + ξ_n with ξ_n ~ N(0, ε_n P_n) (relative) or N(0, ε_n) (absolute)."""
    delta, unravel = ravel_pytree(jax.tree.map(jnp.subtract, local_client, global_client))
    power = jnp.mean(jnp.square(delta)) if noise_mode == "relative" else 1.0
    # one flat draw for the whole payload: XLA compiles a 1-D threefry draw far faster than
    # one draw per multi-dimensional leaf
    noise = jax.random.normal(key, delta.shape, delta.dtype)
    received = unravel(delta + jnp.sqrt(eps * power) * noise)
    return jax.tree.map(jnp.add, global_client, received)


def weighted_average(trees, weights):
    """Σ_n w_n tree_n / Σ_n w_n over a leading N axis; w = 0 everywhere → None-safe zeros."""
    total = jnp.sum(weights)
    w = weights / jnp.maximum(total, 1e-30)
    return jax.tree.map(lambda x: jnp.tensordot(w.astype(x.dtype), x, axes=1), trees)


def aggregate(global_client, uploaded, g_server_all, uploads: Uploads):
    """Eq. 7–9 over the clusters with a channel; (θ^{t+1}, averaged ∇_ω, any_active)."""
    w = jnp.where(uploads.active, uploads.weight, 0.0)
    any_active = jnp.sum(w) > 0
    averaged = weighted_average(uploaded, w)
    new_client = jax.tree.map(lambda a, g: jnp.where(any_active, a, g), averaged, global_client)
    g_server = weighted_average(g_server_all, w)  # zeros when nobody uploads: ω unchanged by SGD
    return new_client, g_server, any_active


def cluster_group_size(n_clusters: int, cluster_chunk: int | None) -> int:
    """Clusters vectorised together: all N (cluster_chunk None), else the largest divisor of N
    not above cluster_chunk, so every group has the same shape and the step compiles once."""
    if cluster_chunk is None or cluster_chunk >= n_clusters:
        return n_clusters
    return max(k for k in range(1, cluster_chunk + 1) if n_clusters % k == 0)


def make_round(
    loss_fn: LossFn,
    client_opt: optax.GradientTransformation,
    server_opt: optax.GradientTransformation,
    *,
    noise_mode: str = "relative",
    independent: bool = False,
    cluster_chunk: int | None = None,
):
    """The jitted round: (client, server, server_opt_state, batch[N], layout[N], uploads, key)
    → (client', server', server_opt_state', RoundOutput).

    client has no cluster axis (FL: the global θ) unless `independent` (then [N, ...]).

    `cluster_chunk` bounds how many clusters are vectorised at once. None: one `vmap` over all
    N. An integer k: a `lax.scan` over N/k groups of k clusters (k rounded down to a divisor of
    N), each group vmapped; the Eq. 7–9 sums Σ_n D_n θ̃_n and Σ_n D_n ∇_ω F_n are accumulated
    group by group, so neither the N uploaded models [N, |θ|] nor all N clusters' activations
    are ever live at once. Same result up to float round-off (the sums are taken in another
    order). It trades parallelism for working-set size: on a CPU, where one cluster's step
    already fills the cores, groups whose working set stays in cache are faster than one wide
    vmap (benchmarks/bench_federated.py); on a GPU/TPU it bounds device memory for large N.
    """
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}")
    if cluster_chunk is not None and (isinstance(cluster_chunk, bool) or not isinstance(cluster_chunk, int)
                                      or cluster_chunk < 1):
        raise ValidationError("cluster_chunk", "must be None or an integer >= 1", cluster_chunk)
    step = functools.partial(cluster_step, loss_fn, client_opt)
    client_axis = 0 if independent else None
    vstep = jax.vmap(step, in_axes=(client_axis, None, 0, 0))
    vupload = jax.vmap(noisy_upload, in_axes=(None, 0, 0, 0, None))

    def finish(server, server_opt_state, new_client, g_server, metrics):
        updates, server_opt_state = server_opt.update(g_server, server_opt_state, server)
        new_server = optax.apply_updates(server, updates)
        return new_client, new_server, server_opt_state, RoundOutput(
            *metrics, all_finite(new_client, new_server)
        )

    def round_all(client, server, server_opt_state, batch, layout, uploads: Uploads, key):
        local, g_server_all, loss, loss_sum, weight_sum, gnorm = vstep(client, server, batch, layout)
        if independent:
            new_client, g_server = local, weighted_average(g_server_all, uploads.weight)
        else:
            keys = jax.random.split(key, loss.shape[0])
            uploaded = vupload(client, local, uploads.eps, keys, noise_mode)
            new_client, g_server, _ = aggregate(client, uploaded, g_server_all, uploads)
        return finish(server, server_opt_state, new_client, g_server, (loss, loss_sum, weight_sum, gnorm))

    def round_grouped(client, server, server_opt_state, batch, layout, uploads: Uploads, key):
        n_clusters = uploads.active.shape[0]
        k = cluster_group_size(n_clusters, cluster_chunk)
        if k == n_clusters:  # one group: the plain vmap, without a one-trip loop around it
            return round_all(client, server, server_opt_state, batch, layout, uploads, key)
        groups = lambda tree: jax.tree.map(lambda x: x.reshape((n_clusters // k, k) + x.shape[1:]), tree)  # noqa: E731
        # the normalised Eq. 7–9 weights of `aggregate` / `weighted_average`, applied per group
        w = uploads.weight if independent else jnp.where(uploads.active, uploads.weight, 0.0)
        w_norm = w / jnp.maximum(jnp.sum(w), 1e-30)
        keys = jax.random.split(key, n_clusters)
        per_cluster = (batch, layout, uploads.eps, keys, w_norm) + ((client,) if independent else ())
        zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
        weighted_sum = lambda wg, tree: jax.tree.map(lambda x: jnp.tensordot(wg.astype(x.dtype), x, axes=1), tree)  # noqa: E731

        def group(acc, xs):
            b, lay, eps, ks, wg = xs[:5]
            c = xs[5] if independent else client
            local, g_s, loss, loss_sum, weight_sum, gnorm = vstep(c, server, b, lay)
            acc_g = jax.tree.map(jnp.add, acc["server"], weighted_sum(wg, g_s))
            metrics = (loss, loss_sum, weight_sum, gnorm)
            if independent:
                return {"server": acc_g}, (local, metrics)
            uploaded = vupload(client, local, eps, ks, noise_mode)
            acc_c = jax.tree.map(jnp.add, acc["client"], weighted_sum(wg, uploaded))
            return {"client": acc_c, "server": acc_g}, metrics

        init = {"server": zeros(server)} if independent else {"client": zeros(client), "server": zeros(server)}
        acc, ys = jax.lax.scan(group, init, groups(per_cluster))
        flat = lambda tree: jax.tree.map(lambda x: x.reshape((n_clusters,) + x.shape[2:]), tree)  # noqa: E731
        if independent:
            new_client, metrics = flat(ys)
        else:
            any_active = jnp.sum(w) > 0  # nobody uploads: θ unchanged (the sums are 0)
            new_client = jax.tree.map(lambda a, g: jnp.where(any_active, a, g), acc["client"], client)
            metrics = flat(ys)
        return finish(server, server_opt_state, new_client, acc["server"], metrics)

    return jax.jit(round_all if cluster_chunk is None else round_grouped)


def looped_round(
    loss_fn: LossFn,
    client_opt: optax.GradientTransformation,
    server_opt: optax.GradientTransformation,
    *,
    noise_mode: str = "relative",
    independent: bool = False,
):
    """The same round as `make_round`, as a Python loop over clusters of a jitted per-cluster
    step (what one would write without vmap). Reference for tests and the benchmark."""
    step = jax.jit(functools.partial(cluster_step, loss_fn, client_opt))
    upload = jax.jit(noisy_upload, static_argnums=4)

    @jax.jit
    def finish(client, server, server_opt_state, uploaded, g_server_all, uploads):
        if independent:
            new_client, g_server = uploaded, weighted_average(g_server_all, uploads.weight)
        else:
            new_client, g_server, _ = aggregate(client, uploaded, g_server_all, uploads)
        updates, server_opt_state = server_opt.update(g_server, server_opt_state, server)
        new_server = optax.apply_updates(server, updates)
        return new_client, new_server, server_opt_state, all_finite(new_client, new_server)

    def round_fn(client, server, server_opt_state, batch, layout, uploads: Uploads, key):
        n_clusters = uploads.active.shape[0]
        keys = jax.random.split(key, n_clusters)
        outs = []
        for n in range(n_clusters):
            pick = lambda t: jax.tree.map(lambda x: x[n], t)  # noqa: E731
            c = pick(client) if independent else client
            local, g_s, loss, ls, ws, gn = step(c, server, pick(batch), pick(layout))
            up = local if independent else upload(client, local, uploads.eps[n], keys[n], noise_mode)
            outs.append((up, g_s, loss, ls, ws, gn))
        stack = lambda i: jax.tree.map(lambda *xs: jnp.stack(xs), *[o[i] for o in outs])  # noqa: E731
        new_client, new_server, server_opt_state, finite = finish(
            client, server, server_opt_state, stack(0), stack(1), uploads
        )
        return new_client, new_server, server_opt_state, RoundOutput(stack(2), stack(3), stack(4), stack(5), finite)

    return round_fn
