"""LoRA (Hu et al., 2021) on the query and value projections of every TEB, for the stacked encoder.

A frozen projection W x + b gains a trainable low-rank branch (Hu et al., Eq. 3):

    h = W x + b + (α / R) · B A x,     A ∈ R^{R × d},  B ∈ R^{d_out × R},  R ≪ d

stored here as `lora_a` [d, R] (x ↦ x·A) and `lora_b` [R, h, d_h] (the query/value output
layout), next to the base `kernel`/`bias` of `attn/query` and `attn/value` in every layer:

    encoder["attn"]["query"] = {"kernel": [L, d, h, d_h], "bias": [L, h, d_h],
                                "lora_a": [L, d, R],      "lora_b": [L, R, h, d_h]}   (same for "value")

Because the adapters are ordinary leaves stacked on the layer axis, `pipeline.partition.to_stages`
gathers them per stage and gradients flow back onto [L, ...] with no extra code.

Initialisation (Hu et al., §4.1): A ~ N(0, 1/d) (LeCun normal, as the base kernels), B = 0, so
an adapted model computes exactly the base model until B is trained. Scale α/R with α =
`LORA_ALPHA` = 8: Hu et al. set α to the first R they tried and do not tune it; α = 8 makes the
scale 1 at R = 8 (the rank of the paper's Table II reading, docs/design.md §3), and keeps the update's
size roughly independent of R when R is changed, so a learning rate carries over.

Adapters are fp32 like every parameter; under `dtype="bfloat16"` they are cast at use.

Why not an existing implementation: `flax.nnx.LoRA`/`LoRALinear` are NNX modules (stateful
object graphs) around 2-D `nnx.Linear` kernels, while this model is Linen + pure functions over
stacked [L, ...] params scanned with `lax.scan` and regathered into pipeline stages inside
`shard_map`; `jax-lorax`/`quax`'s LoRA wrap 2-D weight matrices in implicit-array types that
every primitive of the program (scan, cond, shard_map, ppermute, gathers) would have to
interpret, and our projections are 3-D `DenseGeneral` kernels [d, h, d_h]. A subclass of
`nn.DenseGeneral` with two extra leaves is the smaller, checkable change.

Training only the adapters: `lora_trainable_mask(params)` is True on adapter leaves, False on the
frozen base; `freeze_base(optimizer)` is `optax.multi_transform` with `set_to_zero` on the base
(NB: `optax.masked` would pass the base's raw gradients through unchanged, i.e. apply them).
`lora_adapters(tree)` / `merge_adapters(tree, adapters)` split and rejoin the adapter leaves
(what is uploaded, noised and averaged with `tunable = lora:R`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from collapipe_jax.errors import ValidationError

LORA_ALPHA = 8.0
LORA_LEAVES = ("lora_a", "lora_b")
LORA_TARGETS = ("query", "value")  # attention projections that get adapters (Hu et al., §7.1)


class LoRADenseGeneral(nn.DenseGeneral):
    """`nn.DenseGeneral` over the last axis (x [..., d] -> [..., *features]) plus, when its params
    hold `lora_a` [d, R] and `lora_b` [R, *features], the branch (α/R)·(x A) B. Without adapters
    it is `nn.DenseGeneral` exactly (same params, same program)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        if not self.has_variable("params", "lora_a"):
            return y
        a = self.get_variable("params", "lora_a")
        b = self.get_variable("params", "lora_b")
        dtype = y.dtype
        scale = jnp.asarray(LORA_ALPHA / a.shape[-1], dtype)
        xa = jnp.einsum("...d,dr->...r", x.astype(dtype), a.astype(dtype))
        return y + scale * jnp.tensordot(xa, b.astype(dtype), axes=1)


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree)


def has_lora(tree: dict) -> bool:
    return any(path[-1] in LORA_LEAVES for path in _flat(tree))


def add_lora(client_params: dict, key: jax.Array, rank: int) -> dict:
    """Client params {"embed", "encoder"} with rank-R adapters on every TEB's query and value.

    A ~ N(0, 1/d), B = 0 (the adapted model starts equal to the base model); the base params
    are returned unchanged (same arrays)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValidationError("rank", "must be a positive integer", rank)
    if "encoder" not in client_params:
        raise ValidationError("client_params", "must hold the 'encoder' (client params, not the full model)", sorted(client_params))
    if has_lora(client_params):
        raise ValidationError("client_params", "already hold LoRA adapters", rank)
    attn = client_params["encoder"]["attn"]
    new_attn = dict(attn)
    for name, k in zip(LORA_TARGETS, jax.random.split(key, len(LORA_TARGETS))):
        kernel = attn[name]["kernel"]  # [L, d, h, d_h]
        n_layers, d, out_shape = kernel.shape[0], kernel.shape[1], kernel.shape[2:]
        a = jax.random.normal(k, (n_layers, d, rank), kernel.dtype) / jnp.sqrt(jnp.asarray(d, kernel.dtype))
        b = jnp.zeros((n_layers, rank) + out_shape, kernel.dtype)
        new_attn[name] = {**attn[name], "lora_a": a, "lora_b": b}
    return {**client_params, "encoder": {**client_params["encoder"], "attn": new_attn}}


def lora_trainable_mask(tree: dict) -> dict:
    """Same structure as `tree`: True on LoRA adapter leaves, False on everything else (frozen)."""
    flat = _flat(tree)
    return traverse_util.unflatten_dict({path: path[-1] in LORA_LEAVES for path in flat})


def freeze_base(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optimizer` on the LoRA adapters, zero updates (and no optimizer state) on the frozen base.
    For the client params: everything in the tree that is not an adapter is frozen (the server's
    decoder/head, which trains fully, keeps its own optimizer)."""
    return optax.multi_transform({True: optimizer, False: optax.set_to_zero()}, lora_trainable_mask)


def lora_adapters(tree: dict) -> dict:
    """The adapter leaves of `tree` only, at their paths (e.g. what a CU uploads with lora:R)."""
    flat = _flat(tree)
    return traverse_util.unflatten_dict({p: v for p, v in flat.items() if p[-1] in LORA_LEAVES})


def merge_adapters(tree: dict, adapters: dict) -> dict:
    """`tree` with its adapter leaves replaced by `adapters` (as returned by `lora_adapters`)."""
    flat = _flat(tree)
    new = _flat(adapters)
    unknown = sorted("/".join(map(str, p)) for p in new if p not in flat)
    if unknown:
        raise ValidationError("adapters", "must be adapter leaves of the tree (see lora_adapters)", unknown)
    return traverse_util.unflatten_dict({**flat, **new})
