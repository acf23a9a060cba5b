"""GPipe over the encoder's stages with `jax.shard_map` and `jax.lax.ppermute`.

Synchronous GPipe (Huang et al., 2019) as CollaPipe runs it inside a cluster (Eq. 15: a batch
of b samples split into m micro-batches of b̂ samples flows through the S stages):

* tick t = 0 … S + m − 2 (S + m − 1 ticks): stage j works on micro-batch t − j when
  0 ≤ t − j < m, and is idle (a bubble) otherwise; bubbles are masked to zeros so that they
  are finite, change nothing and get zero gradient, and a device whose stages are all idle
  skips the compute (`lax.cond`; under an outer `vmap` the cond becomes a select and the
  bubble is computed and discarded, which is still correct);
* between ticks every stage hands its output to the next with `ppermute` over the mesh axis
  `axis_name` ("stage"); the last stage's outputs at ticks S − 1 … S + m − 2 are the encoder
  outputs of micro-batches 0 … m − 1;
* the backward pass is `jax.grad` through the `shard_map`: all forwards, then all backwards
  (the transposed schedule, ppermute reversed), as in GPipe.

Stages are folded onto the devices there are: with D devices on the mesh (D divides S), device
i holds stages i·S/D … (i+1)·S/D − 1 and runs them with `vmap` over its local stage axis,
shifting activations locally between its own stages and with `ppermute` to the next device.
D = S is one stage per device (a GPU/TPU mesh or `--xla_force_host_platform_device_count`),
D = 1 is the whole pipeline on one device. `stage_mesh(n_stages)` picks the largest D ≤ the
device count that divides S.

Micro-batching rule (b not divisible by m): b̂ = ⌈b/m⌉ and the batch is padded with
m·b̂ − b all-padding samples (pad_mask False) that are dropped from the output, so they
contribute neither to the loss nor to any gradient.

Dropout: the per-sample keys (`models.dropout.SampleDropout`, one key per sample of the batch)
are micro-batched like the data, so stage j at tick t holds the keys of micro-batch t − j; each
slot folds in its global layer index (`slot_layer` = the layout's layer_index). Every sample
thus draws, at every layer, the masks the unpipelined encoder draws for it (tested).

Synchronous GPipe computes exactly the unpipelined function, so the gradient does not depend
on m (tests/test_gpipe.py checks this to 1e-5 relative): m changes only the schedule and its
latency (Eq. 15), which the system model charges. The federated trainer may therefore compile
one static n_micro for all clusters and still train the same model as with each cluster's m.

Interface:
    gpipe_encoder(staged_params, slot_mask, x, pad_mask, *, n_micro, mesh=None,
                  axis_name="stage", return_trace=False, remat=False, slot_layer=None,
                  drop=None) -> out [B, s, d]
        staged_params: TEB params [S, J, ...] (`partition.to_stages`), slot_mask bool [S, J],
        x [B, s, d], pad_mask bool [B, s]; slot_layer int [S, J] and drop (keys [B]) for
        dropout; differentiable, jit-able, and vmappable over a leading cluster axis of all the
        arrays (per-cluster layouts are data).
    pipelined_encoder(layout, n_micro, mesh=None, remat=False) -> encoder_fn(stacked [L, ...], x,
        pad_mask, drop=None), a drop-in for `teb.encoder_reference` in `models.split.split_model_loss`.
    stage_mesh(n_stages, devices=None, axis_name="stage") -> Mesh
    gpipe_ticks(n_stages, n_micro) = S + m − 1
    micro_batch_size(batch, n_micro) = ⌈b/m⌉
    pipelined_step_memory(cfg, layout, n_micro, batch, mesh=None, remat=False) -> per-device
        compiled memory of one training step (Table III), from XLA's memory_analysis().
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from collapipe_jax.errors import ValidationError
from collapipe_jax.models.config import ModelConfig
from collapipe_jax.models.dropout import SampleDropout
from collapipe_jax.models.teb import segment_apply
from collapipe_jax.pipeline.partition import StageLayout, to_stages


def gpipe_ticks(n_stages: int, n_micro: int) -> int:
    """Ticks of one GPipe forward: S + m − 1 (the last micro-batch leaves stage S−1 at tick S+m−2)."""
    return n_stages + n_micro - 1


def micro_batch_size(batch: int, n_micro: int) -> int:
    """b̂ = ⌈b/m⌉; the batch is padded to m·b̂ samples with weightless all-padding samples."""
    return math.ceil(batch / n_micro)


def stage_mesh(n_stages: int, devices: Sequence[jax.Device] | None = None, axis_name: str = "stage") -> Mesh:
    """1-D mesh over the largest number of devices D ≤ len(devices) that divides n_stages."""
    if not isinstance(n_stages, (int, np.integer)) or n_stages < 1:
        raise ValidationError("n_stages", "must be a positive integer", n_stages)
    devices = list(jax.devices() if devices is None else devices)
    n_dev = max(k for k in range(1, min(n_stages, len(devices)) + 1) if n_stages % k == 0)
    return Mesh(np.array(devices[:n_dev]), (axis_name,))


def _pipeline_body(params, slot_mask, slot_layer, xs, masks, drops, *, n_micro, n_stages, n_dev, axis_name, remat):
    """Per-device program: its S/D local stages over S + m − 1 ticks."""
    n_local = n_stages // n_dev
    dev = jax.lax.axis_index(axis_name)
    stage_ids = dev * n_local + jnp.arange(n_local)
    state0 = jax.lax.pcast(jnp.zeros((n_local,) + xs.shape[1:], xs.dtype), axis_name, to="varying")
    run_stages = jax.vmap(segment_apply)  # the local stages of a tick run side by side
    if remat:  # keep only each tick's stage inputs for the backward pass, recompute the rest
        run_stages = jax.checkpoint(run_stages)
    shift = [(i, (i + 1) % n_dev) for i in range(n_dev)]

    def tick(state, t):
        # Global stage 0 (first local stage of device 0) reads micro-batch t.
        inject = jax.lax.dynamic_index_in_dim(xs, jnp.minimum(t, n_micro - 1), keepdims=False)
        state = state.at[0].set(jnp.where(dev == 0, inject, state[0]))
        micro = t - stage_ids
        active = (micro >= 0) & (micro < n_micro)
        stage_micro = jnp.clip(micro, 0, n_micro - 1)
        stage_masks = jnp.take(masks, stage_micro, axis=0)
        stage_drops = None if drops is None else jax.tree.map(lambda k: jnp.take(k, stage_micro, axis=0), drops)
        # Bubbles: a device whose local stages are all idle skips the compute (lax.cond; each
        # device runs its own branch under shard_map), and idle stages' outputs are zeroed.
        out = jax.lax.cond(
            jnp.any(active),
            lambda: jnp.where(
                active[:, None, None, None], run_stages(params, slot_mask, state, stage_masks, slot_layer, stage_drops), 0.0
            ),
            lambda: jnp.zeros_like(state),
        )
        # Hand every stage's output to the next stage: within the device by a shift, across
        # devices by ppermute (device D−1 wraps to 0, where the next tick's input overwrites it).
        incoming = out[-1] if n_dev == 1 else jax.lax.ppermute(out[-1], axis_name, perm=shift)
        state = jnp.concatenate([incoming[None], out[:-1]], axis=0)
        return state, (out[-1], active)

    _, (last_out, active) = jax.lax.scan(tick, state0, jnp.arange(gpipe_ticks(n_stages, n_micro)))
    return last_out[None], active[None]


def gpipe_encoder(
    staged_params: dict,
    slot_mask: jax.Array,
    x: jax.Array,
    pad_mask: jax.Array,
    *,
    n_micro: int,
    mesh: Mesh | None = None,
    axis_name: str = "stage",
    return_trace: bool = False,
    remat: bool = False,
    slot_layer: jax.Array | None = None,
    drop: SampleDropout | None = None,
):
    """The encoder run as a GPipe pipeline of S stages and m = n_micro micro-batches.

    Returns out [B, s, d] (equal to the unpipelined encoder), or (out, active) with
    return_trace, where active bool [S + m − 1, S] says which stage worked at which tick.
    remat=True re-materialises each tick's stage computation in the backward pass (GPipe's
    re-materialisation): same values, less memory, about one more forward of compute.
    With dropout (`drop`: one key per sample of x), slot_layer int [S, J] gives each slot's
    global layer index (the layout's layer_index), from which its masks are drawn.
    """
    if not isinstance(n_micro, (int, np.integer)) or isinstance(n_micro, bool) or n_micro < 1:
        raise ValidationError("n_micro", "must be a positive integer (static)", n_micro)
    n_stages = slot_mask.shape[0]
    mesh = stage_mesh(n_stages, axis_name=axis_name) if mesh is None else mesh
    if axis_name not in mesh.axis_names:
        raise ValidationError("mesh", f"must have an axis named {axis_name!r}", mesh.axis_names)
    n_dev = mesh.shape[axis_name]
    if n_stages % n_dev:
        raise ValidationError("mesh", f"its {axis_name!r} size must divide n_stages = {n_stages}", n_dev)
    batch, seq, width = x.shape
    b_hat = micro_batch_size(batch, n_micro)
    extra = n_micro * b_hat - batch
    xs = jnp.pad(x, ((0, extra), (0, 0), (0, 0))).reshape(n_micro, b_hat, seq, width)
    masks = jnp.pad(pad_mask, ((0, extra), (0, 0))).reshape(n_micro, b_hat, seq)
    if drop is not None:
        if slot_layer is None:
            raise ValidationError("slot_layer", "is needed with dropout (the layout's layer_index)", None)
        # the padding samples take sample 0's keys: their outputs are dropped anyway
        padded = jnp.minimum(jnp.arange(n_micro * b_hat), batch - 1)
        drop = jax.tree.map(lambda k: jnp.take(k, padded, axis=0).reshape(n_micro, b_hat), drop)
    slot_layer = jnp.zeros(slot_mask.shape, jnp.int32) if slot_layer is None else jnp.asarray(slot_layer, jnp.int32)

    body = partial(_pipeline_body, n_micro=n_micro, n_stages=n_stages, n_dev=n_dev, axis_name=axis_name, remat=remat)
    run = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(P(axis_name), P(axis_name), P(axis_name), P(), P(), P()),
        out_specs=(P(axis_name), P(axis_name)),
    )
    last_out, active = run(staged_params, slot_mask, slot_layer, xs, masks, drop)
    # last_out [D, T, b̂, s, d]: device D−1 holds stage S−1, whose outputs from tick S−1 on
    # are micro-batches 0 … m−1.
    out = last_out[-1, n_stages - 1 :].reshape(n_micro * b_hat, seq, width)[:batch]
    if not return_trace:
        return out
    ticks = gpipe_ticks(n_stages, n_micro)
    return out, jnp.transpose(active, (1, 0, 2)).reshape(ticks, n_stages)


def pipelined_encoder(
    layout: StageLayout, n_micro: int, mesh: Mesh | None = None, axis_name: str = "stage", remat: bool = False
):
    """encoder_fn(stacked [L, ...], x, pad_mask, drop=None) running the encoder through GPipe with
    `layout` (LoRA adapters, being [L, ...] leaves of `stacked`, are staged with their layers)."""

    def encoder_fn(stacked, x, pad_mask, drop=None):
        staged = to_stages(stacked, layout)
        return gpipe_encoder(
            staged, jnp.asarray(layout.slot_mask), x, pad_mask, n_micro=n_micro, mesh=mesh, axis_name=axis_name,
            remat=remat, slot_layer=layout.layer_index, drop=drop,
        )

    return encoder_fn


def pipelined_step_memory(
    cfg: ModelConfig, layout: StageLayout, n_micro: int, batch: int, mesh: Mesh | None = None, remat: bool = False
) -> dict:
    """Per-device compiled memory (bytes) of one GPipe training step of the encoder (not run).

    The step takes the staged params sharded over the 'stage' axis (each device holds its own
    stages) and returns the value and the gradients w.r.t. the params and the input; XLA's
    memory_analysis() of the SPMD program is per device (`models.compiled_cost.memory_stats`).
    Without remat the scan keeps every tick's residuals, b̂·(S + m − 1) samples' worth instead of
    the b of a lone segment; remat keeps only the stage inputs.
    """
    from jax.sharding import NamedSharding

    from collapipe_jax.models.compiled_cost import memory_stats
    from collapipe_jax.models.teb import teb_shapes

    mesh = stage_mesh(layout.n_stages) if mesh is None else mesh
    staged = jax.eval_shape(lambda p: to_stages(p, layout), teb_shapes(cfg, int(np.asarray(layout.slot_mask).sum())))
    x = jax.ShapeDtypeStruct((batch, cfg.seq_len, cfg.d_model), jnp.float32)
    pad = jax.ShapeDtypeStruct((batch, cfg.seq_len), jnp.bool_)
    slot_mask = np.asarray(layout.slot_mask)

    def step(params, x, pad):
        def loss(p, x):
            out = gpipe_encoder(p, slot_mask, x, pad, n_micro=n_micro, mesh=mesh, remat=remat)
            return jnp.sum(out * x)

        return jax.value_and_grad(loss, argnums=(0, 1))(params, x)

    by_stage, replicated = NamedSharding(mesh, P("stage")), NamedSharding(mesh, P())
    compiled = jax.jit(
        step, in_shardings=(by_stage, replicated, replicated), out_shardings=(replicated, (by_stage, replicated))
    ).lower(staged, x, pad).compile()
    return memory_stats(compiled)
