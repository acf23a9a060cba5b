"""The Transformer Encoder Block (TEB): the unit that CollaPipe segments over devices.

A TEB is the post-LN encoder block of the original Transformer and of BERT:

    y = LayerNorm(x + MultiHeadAttention(x, x, x; key padding mask))
    z = LayerNorm(y + W₂ GELU(W₁ y + b₁) + b₂)

Its parameters (the pytree of one layer, shapes for width d, h heads, FFN width f):

    attn/query, attn/key, attn/value:  kernel [d, h, d/h], bias [h, d/h]
    attn/out:                          kernel [h, d/h, d], bias [d]
    ln_attn, ln_ffn:                   scale [d], bias [d]
    ffn_in:  kernel [d, f], bias [f];  ffn_out: kernel [f, d], bias [d]

so the parameter count is `models.cost.teb_param_count` and the head count and FFN width can
be read off the shapes: `teb_apply` needs no config. No dropout: the block is deterministic, so
pipelined and unpipelined training compute the same function (the property the tests check).

Pure helpers (the interface the pipeline and the federated trainer build on):

* `init_teb(key, cfg)` -> one layer's params.
* `init_encoder_stack(key, cfg, n_layers)` -> params with a leading layer axis [L, ...].
* `teb_apply(layer_params, x, pad_mask)` -> x'; x [B, s, d] float, pad_mask [B, s] bool
  (True = real token; padded keys get no attention).
* `segment_apply(seg_params, slot_mask, x, pad_mask)` -> the δ-slot segment one device runs:
  lax.scan over the slots, a slot whose mask is False is the identity.
* `encoder_reference(stacked, x, pad_mask)` -> the unpipelined encoder (lax.scan over L).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from collapipe_jax.models.config import ModelConfig

# A large finite negative (not -inf) for masked scores: a row whose keys are all padding (a
# padded sample) then gets a uniform softmax instead of NaN, so its (ignored) output and every
# gradient through it stay finite.
_MASKED_SCORE = -1e9


def attention_mask(query_ok: jax.Array | None, key_ok: jax.Array, causal: bool = False) -> jax.Array:
    """Boolean mask [B, 1, q, k]: True where query position i may attend key position j."""
    mask = key_ok[:, None, None, :]
    if causal:
        q, k = key_ok.shape[-1] if query_ok is None else query_ok.shape[-1], key_ok.shape[-1]
        mask = mask & jnp.tril(jnp.ones((q, k), bool))[None, None]
    return mask


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention softmax(Q Kᵀ/√d_h) V over h heads, projections with biases."""

    n_heads: int

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array, mask: jax.Array) -> jax.Array:
        d = x_q.shape[-1]
        d_head = d // self.n_heads
        proj = lambda name: nn.DenseGeneral((self.n_heads, d_head), name=name)  # noqa: E731
        q = proj("query")(x_q)  # [B, q, h, d_h]
        k = proj("key")(x_kv)
        v = proj("value")(x_kv)
        scores = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(jnp.asarray(d_head, q.dtype))
        scores = jnp.where(mask, scores, jnp.asarray(_MASKED_SCORE, scores.dtype))
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhc->bqhc", probs, v)
        return nn.DenseGeneral(d, axis=(-2, -1), name="out")(ctx)


class TEB(nn.Module):
    """Post-LN Transformer encoder block (attention + FFN)."""

    n_heads: int
    d_ff: int

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        mask = attention_mask(None, pad_mask)
        x = nn.LayerNorm(name="ln_attn")(x + MultiHeadAttention(self.n_heads, name="attn")(x, x, mask))
        d = x.shape[-1]
        y = nn.gelu(nn.Dense(self.d_ff, name="ffn_in")(x), approximate=False)
        return nn.LayerNorm(name="ln_ffn")(x + nn.Dense(d, name="ffn_out")(y))


def fill_params(key: jax.Array, shapes, lead: int = 0, dtype=jnp.float32):
    """A params pytree from its shapes (`jax.eval_shape` of a Flax init), with one Gaussian draw.

    kernel ~ N(0, 1/fan_in) (LeCun normal, untruncated), fan_in = the kernel's input dims: all
    axes but the last for the attention output projection `out` [h, d_h, d], the first axis
    otherwise; bias = 0; LayerNorm scale = 1. `lead` leading axes (e.g. the layer axis of a
    stack) are batch axes. One draw for the whole tree keeps XLA's compile of the init short
    (every separate normal/truncated-normal draw compiles its own erf⁻¹, ~0.2 s each on a CPU).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    sizes = [int(np.prod(leaf.shape)) if path[-1].key == "kernel" else 0 for path, leaf in leaves]
    noise = jax.random.normal(key, (max(sum(sizes), 1),), dtype)
    out, offset = [], 0
    for (path, leaf), size in zip(leaves, sizes):
        name = path[-1].key
        if name == "kernel":
            is_attn_out = len(path) > 1 and path[-2].key == "out"
            in_axes = leaf.shape[lead:-1] if is_attn_out else leaf.shape[lead : lead + 1]
            std = 1.0 / np.sqrt(np.prod(in_axes))
            out.append(noise[offset : offset + size].reshape(leaf.shape) * std)
            offset += size
        elif name == "scale":
            out.append(jnp.ones(leaf.shape, dtype))
        else:
            out.append(jnp.zeros(leaf.shape, dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def teb_shapes(cfg: ModelConfig, n_layers: int | None = None):
    """Shapes of one TEB's params (n_layers None) or of a stack [n_layers, ...]."""
    x = jnp.zeros((1, cfg.seq_len, cfg.d_model), jnp.float32)
    mask = jnp.ones((1, cfg.seq_len), bool)
    one = lambda k: TEB(cfg.n_heads, cfg.d_ff).init(k, x, mask)["params"]  # noqa: E731
    if n_layers is None:
        return jax.eval_shape(one, jax.random.key(0))
    return jax.eval_shape(jax.vmap(one), jax.random.split(jax.random.key(0), n_layers))


def init_teb(key: jax.Array, cfg: ModelConfig) -> dict:
    """Parameters of one TEB for the config's width, heads and FFN width."""
    return fill_params(key, teb_shapes(cfg))


def init_encoder_stack(key: jax.Array, cfg: ModelConfig, n_layers: int | None = None) -> dict:
    """n_layers TEBs (default cfg.n_enc_layers) with their params stacked on a leading axis [L, ...]."""
    n_layers = cfg.n_enc_layers if n_layers is None else n_layers
    return fill_params(key, teb_shapes(cfg, n_layers), lead=1)


def teb_apply(layer_params: dict, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
    """One TEB on x [B, s, d] with key padding mask [B, s]; heads and FFN width read off the shapes."""
    n_heads = layer_params["attn"]["query"]["kernel"].shape[-2]
    d_ff = layer_params["ffn_in"]["kernel"].shape[-1]
    return TEB(n_heads, d_ff).apply({"params": layer_params}, x, pad_mask)


def segment_apply(seg_params: dict, slot_mask: jax.Array, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
    """The TEBs of one pipeline stage: slots [J, ...] applied in order, a masked slot is the identity.

    The masked slot's block is still evaluated (shapes are static so every stage runs J slots
    and one compiled program serves every δ); `where` discards it and gives it zero gradient.
    """

    def body(h, slot):
        params, active = slot
        return jnp.where(active, teb_apply(params, h, pad_mask), h), None

    out, _ = jax.lax.scan(body, x, (seg_params, slot_mask))
    return out


def encoder_reference(stacked: dict, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
    """The unpipelined encoder: all L stacked TEBs in order (lax.scan over the layer axis)."""

    def body(h, params):
        return teb_apply(params, h, pad_mask), None

    out, _ = jax.lax.scan(body, x, stacked)
    return out
