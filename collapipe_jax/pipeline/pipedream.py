"""The asynchronous reading of the pipeline: PipeDream-style 1F1B with weight stashing, simulated.

Synchronous GPipe (gpipe.py) computes the unsegmented gradient whatever S and m are, so under
it S and m cannot change learning. Asynchronous 1F1B (PipeDream, Narayanan et al., 2019) is the
standard reading under which they do (docs/design.md §5, "The pipedream reading"):

* every micro-batch of b̂ = b/m samples is one optimizer update, so a local step makes m updates;
* in 1F1B steady state stage j (of S, j = 0 the first) has S − j micro-batches in flight: when
  it runs the forward of micro-batch u it has applied the updates of micro-batches 0 … u − (S − j),
  so it computes with the weights that are d_j = S − 1 − j updates old relative to the last
  stage (which is never stale);
* weight stashing: the backward of micro-batch u on stage j uses the version its forward used,
  so the gradient of u is the exact gradient of the loss at the *mixed* parameters θ_mix(u)
  whose stage-j part is θ^{(u − d_j)}; it is applied to the newest weights:
      θ^{(u+1)} = θ^{(u)} − η D(∇ F(θ_mix(u); B_u));
* warm-up: versions older than the round's first are the round's first (u − d_j < 0 reads
  θ^{(0)}), which is what a pipeline that starts filled with the same weights computes.

This module is the bookkeeping, pure and vmappable over clusters (the stage layout is data):

    layer_staleness(layout, n_layers) -> (d_l int [L], d_embed int [])
        d_l = S − 1 − (stage of layer l), S the layout's number of non-empty stages; the
        embedding sits on the first stage, d_embed = S − 1. (The head/decoder lives on the
        edge server past the last stage and is never stale.)
    fresh_history(params, depth) -> every leaf stacked [depth, ...]: depth copies of params
    push_version(history, params) -> the history with params as age 0, the oldest dropped
    stale_params(history, d_l, d_embed) -> the mixed parameters: leaf ["encoder"][l] from age
        d_l, every other client leaf from age d_embed (ages past depth − 1 read the oldest)

The history holds ages 0 … depth − 1 (age 0 = the newest weights); depth = the padded stage
count of the round suffices, since d ≤ S − 1. It is *simulated*: one device computes the
mixed-parameter gradient with the unsegmented encoder, not a shard_map 1F1B schedule.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from collapipe_jax.pipeline.partition import StageLayout


def layer_staleness(layout: StageLayout, n_layers: int) -> tuple[jax.Array, jax.Array]:
    """(d_l [L], d_embed []): updates of staleness of each encoder layer and of the embedding."""
    mask = jnp.asarray(layout.slot_mask)
    stages = jnp.sum(jnp.any(mask, axis=-1))  # S: the non-empty stages (they come first)
    stage_of_slot = jnp.broadcast_to(jnp.arange(mask.shape[0])[:, None], mask.shape)
    age = (stages - 1 - stage_of_slot).astype(jnp.int32)
    # masked slots scatter to the out-of-range index L and are dropped
    index = jnp.where(mask, jnp.asarray(layout.layer_index), n_layers).reshape(-1)
    d_layer = jnp.zeros((n_layers,), jnp.int32).at[index].set(age.reshape(-1), mode="drop")
    return d_layer, (stages - 1).astype(jnp.int32)


def fresh_history(params, depth: int):
    """A history whose every age holds `params` (the round's start: all stages share θ^t)."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (depth,) + x.shape), params)


def push_version(history, params):
    """params becomes age 0; every version ages by one and the oldest is dropped."""
    return jax.tree.map(lambda h, p: jnp.concatenate([p[None].astype(h.dtype), h[:-1]], axis=0), history, params)


def stale_params(history, d_layer: jax.Array, d_embed: jax.Array):
    """The parameters micro-batch u computes with: encoder layer l from age d_l, the rest of the
    client model (the embedding, on the first stage) from age d_embed."""
    depth = jax.tree.leaves(history)[0].shape[0]
    d_layer = jnp.minimum(d_layer, depth - 1)
    d_embed = jnp.minimum(d_embed, depth - 1)
    layers = jnp.arange(d_layer.shape[0])

    def pick(path, h):
        if getattr(path[0], "key", None) == "encoder":  # [depth, L, ...]: layer l's row from its own age
            return h[d_layer, layers]
        return h[d_embed]

    return jax.tree_util.tree_map_with_path(pick, history)
