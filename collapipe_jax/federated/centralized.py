"""The centralized reference of a federated run: the same model, optimizer, learning-rate
schedule, dropout and samples, trained on one device with no pipeline, no upload and no
aggregation.

Per round t (E steps, global step s = s_0 + e, e = 0..E−1) the one device takes, at step e, the
N clusters' mini-batches of the federated run's step e together (N·b samples) and steps

    θ ← θ − η(s) D(∇_θ F(θ, ω; ∪_n B_n^{t,e}))        ω ← ω − η(s) D_ω(∇_ω F(θ, ω; ∪_n B_n^{t,e}))

with the client optimizer D of the federated run on the client model θ (embedding + encoder)
and its own state on the server model ω, as the federated round's server head has (so a clip
norm, too, applies to θ and to ω separately, as in the federated round). The
optimizer state persists over the run (one device trains every step). What this leaves out
against the federated round (rounds.py) is exactly what federation costs: the E local steps on
separate shards before the average (client drift), the noisy upload (Eq. 25) and the
aggregation (Eq. 7–9). GPipe does not enter either way (it computes the unsegmented gradient).

The dropout key of step e is the federated round's key of (step e, cluster 0), so with N = 1 the
centralized step and the federated round see the same masks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from collapipe_jax.federated.optim import apply_direction
from collapipe_jax.federated.rounds import RoundOutput, RoundSpec, ServerState, all_finite, cluster_grad, step_keys


def init_centralized_state(spec: RoundSpec, client, server) -> ServerState:
    """The state before round 0: the models and the optimizer states of θ and ω (no server
    optimizer: fed_opt is empty)."""
    return ServerState(client, server, spec.head.init(server), (), spec.direction.init(client))


def make_centralized_round(spec: RoundSpec):
    """The jitted centralized round: (ServerState, batch [E, B, ...], step0, key) →
    (ServerState, RoundOutput with one entry per output: the device's mean loss over the E steps).

    `spec.loss_fn` is called with `layout=None` (an unpipelined loss ignores it)."""

    def round_fn(state: ServerState, batch, step0, key):
        dropout_key, _ = jax.random.split(key)  # as the federated round splits its key

        def step(carry, xs):
            client, client_opt, server, head_opt = carry
            batch_e, e = xs
            loss, loss_sum, weight_sum, g_client, g_server = cluster_grad(
                spec.loss_fn, client, server, batch_e, None, step_keys(dropout_key, e, 1)[0])
            lr = spec.schedule(step0 + e)
            direction, client_opt = spec.direction.update(g_client, client_opt, client)
            client = apply_direction(client, direction, lr)
            head_dir, head_opt = spec.head.update(g_server, head_opt, server)
            server = apply_direction(server, head_dir, lr)
            return (client, client_opt, server, head_opt), (loss, loss_sum, weight_sum, optax.tree.norm(g_client))

        init = (state.client, state.client_opt, state.server, state.head_opt)
        (client, client_opt, server, head_opt), (loss, loss_sum, weight_sum, gnorm) = jax.lax.scan(
            step, init, (batch, jnp.arange(spec.local_steps)))
        out = RoundOutput(jnp.mean(loss)[None], jnp.sum(loss_sum)[None], jnp.sum(weight_sum)[None], gnorm[:1],
                          all_finite(client, server))
        return ServerState(client, server, head_opt, (), client_opt), out

    return jax.jit(round_fn)


def centralized_indices(indices):
    """The federated round's sample indices [N, E, b] as the centralized run's [E, N·b]: step e
    takes the N clusters' step-e mini-batches together."""
    n, e, b = indices.shape
    return indices.transpose(1, 0, 2).reshape(e, n * b)
