"""The Transformer Encoder Block (TEB): the unit that CollaPipe segments over devices.

A TEB is the post-LN encoder block of the original Transformer and of BERT:

    y = LayerNorm(x + Dropout(MultiHeadAttention(x, x, x; key padding mask)))
    z = LayerNorm(y + Dropout(W₂ GELU(W₁ y + b₁) + b₂))

with dropout also on the attention probabilities (BERT's attention_probs_dropout): sites 0 =
the probabilities [h, s, s], 1 = the attention output [s, d], 2 = the FFN output [s, d]. Its parameters (the pytree of one layer, shapes for width d, h heads, FFN
width f):

    attn/query, attn/key, attn/value:  kernel [d, h, d/h], bias [h, d/h]
    attn/out:                          kernel [h, d/h, d], bias [d]
    ln_attn, ln_ffn:                   scale [d], bias [d]
    ffn_in:  kernel [d, f], bias [f];  ffn_out: kernel [f, d], bias [d]
    (optional, `models/lora.py`) attn/query and attn/value: lora_a [d, R], lora_b [R, h, d/h]

so the parameter count is `models.cost.teb_param_count` and the head count and FFN width can
be read off the shapes: `teb_apply` needs no config.

Dropout (`models/dropout.py`): `drop` is None (deterministic: evaluation, or rate 0) or a
`SampleDropout` with one key per sample of x; a layer's masks come from the sample's key folded
with the layer's global index, so the pipelined and the unpipelined encoder draw the same masks.

Compute dtype: read off x. Parameters stay fp32 and are cast at use (Flax's `dtype` argument), so
an x in bfloat16 runs the block's matmuls and activations in bfloat16; LayerNorm statistics and
the softmax are computed in fp32 and cast back.

Pure helpers (the interface the pipeline and the federated trainer build on):

* `init_teb(key, cfg)` -> one layer's params.
* `init_encoder_stack(key, cfg, n_layers)` -> params with a leading layer axis [L, ...].
* `teb_apply(layer_params, x, pad_mask, drop=None)` -> x'; x [B, s, d] float, pad_mask [B, s]
  bool (True = real token; padded keys get no attention); `drop` already folded for this layer.
* `segment_apply(seg_params, slot_mask, x, pad_mask, slot_layer=None, drop=None)` -> the δ-slot
  segment one device runs: lax.scan over the slots, a slot whose mask is False is the identity;
  slot_layer int [J] = the global layer index of each slot (needed with dropout).
* `encoder_reference(stacked, x, pad_mask, drop=None)` -> the unpipelined encoder (scan over L).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from collapipe_jax.models.config import ModelConfig
from collapipe_jax.models.dropout import SampleDropout, dropout, fold, site_masks
from collapipe_jax.models.lora import LoRADenseGeneral

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
    """Scaled dot-product attention softmax(Q Kᵀ/√d_h) V over h heads, projections with biases.

    Query and value projections take optional LoRA adapters. `kv` and `attend` are exposed
    separately so that a decoder can cache keys and values (`transformer.greedy_decode`)."""

    n_heads: int
    d_head: int
    dtype: Any = jnp.float32

    def setup(self):
        heads = (self.n_heads, self.d_head)
        self.query = LoRADenseGeneral(heads, dtype=self.dtype)
        self.key = nn.DenseGeneral(heads, dtype=self.dtype)
        self.value = LoRADenseGeneral(heads, dtype=self.dtype)
        self.out = nn.DenseGeneral(self.n_heads * self.d_head, axis=(-2, -1), dtype=self.dtype)

    def kv(self, x_kv: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B, k, h, d_h] of x_kv [B, k, d]."""
        return self.key(x_kv), self.value(x_kv)

    def attend(self, q, k, v, mask, drop: SampleDropout | None = None, keep: jax.Array | None = None) -> jax.Array:
        """Output [B, q, d] of the projected queries q [B, q, h, d_h] over keys/values [B, k, h, d_h];
        dropout on the probabilities with the keep-mask `keep` [B, h, q, k]."""
        scores = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(jnp.asarray(self.d_head, q.dtype))
        scores = jnp.where(mask, scores, jnp.asarray(_MASKED_SCORE, scores.dtype))
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(q.dtype)
        probs = dropout(drop, probs, keep)
        ctx = jnp.einsum("bhqk,bkhc->bqhc", probs, v)
        return self.out(ctx)

    def __call__(self, x_q, x_kv, mask, drop: SampleDropout | None = None, keep: jax.Array | None = None) -> jax.Array:
        q = self.query(x_q)  # projected before k, v: the order of the backward's sums, as before
        return self.attend(q, *self.kv(x_kv), mask, drop, keep)


class TEB(nn.Module):
    """Post-LN Transformer encoder block (attention + FFN), dropout sites 0–2."""

    n_heads: int
    d_ff: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array, drop: SampleDropout | None = None) -> jax.Array:
        s, d = x.shape[-2:]
        keep = site_masks(drop, (self.n_heads, s, s), (s, d), (s, d))
        mask = attention_mask(None, pad_mask)
        attn = MultiHeadAttention(self.n_heads, d // self.n_heads, self.dtype, name="attn")(x, x, mask, drop, keep[0])
        x = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x + dropout(drop, attn, keep[1]))
        y = nn.gelu(nn.Dense(self.d_ff, dtype=self.dtype, name="ffn_in")(x), approximate=False)
        y = nn.Dense(d, dtype=self.dtype, name="ffn_out")(y)
        return nn.LayerNorm(dtype=self.dtype, name="ln_ffn")(x + dropout(drop, y, keep[2]))


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


def teb_apply(layer_params: dict, x: jax.Array, pad_mask: jax.Array, drop: SampleDropout | None = None) -> jax.Array:
    """One TEB on x [B, s, d] with key padding mask [B, s]; heads and FFN width read off the shapes,
    the compute dtype off x. `drop`: this layer's per-sample dropout keys, or None."""
    n_heads = layer_params["attn"]["query"]["kernel"].shape[-2]
    d_ff = layer_params["ffn_in"]["kernel"].shape[-1]
    return TEB(n_heads, d_ff, x.dtype).apply({"params": layer_params}, x, pad_mask, drop)


def segment_apply(
    seg_params: dict,
    slot_mask: jax.Array,
    x: jax.Array,
    pad_mask: jax.Array,
    slot_layer: jax.Array | None = None,
    drop: SampleDropout | None = None,
) -> jax.Array:
    """The TEBs of one pipeline stage: slots [J, ...] applied in order, a masked slot is the identity.

    The masked slot's block is still evaluated (shapes are static so every stage runs J slots
    and one compiled program serves every δ); `where` discards it and gives it zero gradient.
    With dropout, slot j draws the masks of global layer slot_layer[j] (int [J]).
    """
    if drop is not None and slot_layer is None:
        raise ValueError("segment_apply: dropout needs slot_layer, the global layer index of each slot")
    if slot_layer is None:
        slot_layer = jnp.zeros(slot_mask.shape, jnp.int32)

    def body(h, slot):
        params, active, layer = slot
        return jnp.where(active, teb_apply(params, h, pad_mask, fold(drop, layer)), h), None

    out, _ = jax.lax.scan(body, x, (seg_params, slot_mask, slot_layer))
    return out


def encoder_reference(stacked: dict, x: jax.Array, pad_mask: jax.Array, drop: SampleDropout | None = None) -> jax.Array:
    """The unpipelined encoder: all L stacked TEBs in order (lax.scan over the layer axis); with
    dropout, layer l draws its masks from the samples' keys folded with l."""
    n_layers = jax.tree.leaves(stacked)[0].shape[0]

    def body(h, layer):
        params, index = layer
        return teb_apply(params, h, pad_mask, fold(drop, index)), None

    out, _ = jax.lax.scan(body, x, (stacked, jnp.arange(n_layers)))
    return out
