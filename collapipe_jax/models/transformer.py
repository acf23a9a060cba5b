"""The encoder–decoder Transformer for translation, split between the cluster and the edge server.

CollaPipe's split (the paper's Fig. 1): the source embedding runs on the cluster's central unit
(CU), the L encoder TEBs are segmented over the cluster's devices (`pipeline/`), and the
decoder with the output projection runs on the edge server. So the parameters are two separate
pytrees:

    params = {"client": {"embed": {"tok_embed": [V, d]},
                         "encoder": TEB params stacked [L, ...]},
              "server": {"tgt_embed": [V, d],
                         "decoder": decoder-block params stacked [n_dec, ...],
                         "out_proj": {"kernel": [d, V], "bias": [V]}}}

Token conventions: PAD = 0, BOS = 1, EOS = 2. Embeddings are scaled by √d and get sinusoidal
positions (Vaswani et al., 2017). Decoder blocks are post-LN (self-attention with a causal mask,
cross-attention over the encoder output with the source padding mask, FFN).

Batch (dict of arrays): `tokens` int [B, s_src] (source), `tgt` int [B, s_tgt] (BOS, target
tokens, EOS, PAD...), optional `sample_weight` float [B] (0 for a padded sample, default 1).
Teacher forcing: the decoder reads tgt[:, :-1] and predicts tgt[:, 1:]; a target token's weight
is sample_weight × (token ≠ PAD).

Dropout (Vaswani et al., §5.4: on the sums of embeddings and positions, and on every
sub-layer's output before the residual add; plus the attention probabilities, as in BERT and
the tensor2tensor Transformer): `drop` arguments are None (deterministic) or per-sample keys
(`models/dropout.py`). The server stream's keys draw the target embedding's mask; decoder block
l draws its masks from fold_in(fold_in(k_server, 1), l), sites 0 self-attention probabilities,
1 self-attention output, 2 cross-attention probabilities, 3 cross-attention output, 4 FFN output.
Compute dtype: the source embedding is cast to `dtype`, the decoder runs in enc_out's dtype,
logits and the loss are fp32.

Functions: `init_split_model(key, cfg)`, `embed_apply(embed, tokens, dtype=, drop=) -> (x,
pad_mask)`, `server_loss(server, enc_out, pad_mask, batch, drop=None) -> (loss_sum,
weight_sum)`, `decoder_logits(server, enc_out, src_ok, dec_in)`, `greedy_decode(server,
enc_out, pad_mask, max_len) -> tokens [B, max_len]` (for BLEU; key/value cache).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from collapipe_jax.models.config import ModelConfig
from collapipe_jax.models.dropout import SampleDropout, dropout, fold, site_masks
from collapipe_jax.models.teb import MultiHeadAttention, attention_mask, fill_params, init_encoder_stack

PAD, BOS, EOS = 0, 1, 2


def sinusoidal_positions(length: int, d: int) -> np.ndarray:
    """PE[pos, 2i] = sin(pos/10000^(2i/d)), PE[pos, 2i+1] = cos(...) (Vaswani et al., §3.5)."""
    pos = np.arange(length)[:, None]
    rate = 1.0 / np.power(10000.0, np.arange(0, d, 2) / d)
    pe = np.zeros((length, d), np.float32)
    pe[:, 0::2] = np.sin(pos * rate)
    pe[:, 1::2] = np.cos(pos * rate)[:, : d // 2]
    return pe


def _embed_tokens(table: jax.Array, tokens: jax.Array, positions=None) -> jax.Array:
    """√d·table[tokens] + PE (fp32); `positions` [t] overrides 0 … t−1 (one decoding step)."""
    d = table.shape[-1]
    x = table[tokens] * jnp.sqrt(jnp.asarray(d, table.dtype))
    pe = sinusoidal_positions(tokens.shape[-1], d) if positions is None else positions
    return x + pe[None]


def embed_apply(
    embed_params: dict, tokens: jax.Array, *, dtype=jnp.float32, drop: SampleDropout | None = None
) -> tuple[jax.Array, jax.Array]:
    """Source embedding on the CU: (x [B, s, d] in `dtype`, pad_mask [B, s] with True = real token)."""
    x = _embed_tokens(embed_params["tok_embed"], tokens).astype(dtype)
    return dropout(drop, x, site_masks(drop, x.shape[1:])[0]), tokens != PAD


class DecoderBlock(nn.Module):
    """Post-LN Transformer decoder block: causal self-attention, cross-attention, FFN.

    `__call__` runs a whole target sequence (teacher forcing); `cross_kv` and `step` are the
    cached decoding of one position (keys/values of earlier positions from the cache, the
    encoder's keys/values computed once)."""

    n_heads: int
    d_head: int
    d_ff: int
    dtype: Any = jnp.float32

    def setup(self):
        self.self_attn = MultiHeadAttention(self.n_heads, self.d_head, self.dtype)
        self.cross_attn = MultiHeadAttention(self.n_heads, self.d_head, self.dtype)
        self.ln_self = nn.LayerNorm(dtype=self.dtype)
        self.ln_cross = nn.LayerNorm(dtype=self.dtype)
        self.ffn_in = nn.Dense(self.d_ff, dtype=self.dtype)
        self.ffn_out = nn.Dense(self.n_heads * self.d_head, dtype=self.dtype)
        self.ln_ffn = nn.LayerNorm(dtype=self.dtype)

    def _block(self, y, self_kv, self_mask, cross_kv, cross_mask, drop):
        """The block on y [B, t, d]; self_kv(y) gives the self-attention keys/values."""
        (t, d), s_src = y.shape[-2:], cross_kv[0].shape[-3]
        keep = site_masks(drop, (self.n_heads, t, t), (t, d), (self.n_heads, t, s_src), (t, d), (t, d))
        q = self.self_attn.query(y)  # before the keys/values: the order of the backward's sums
        y = self.ln_self(y + dropout(drop, self.self_attn.attend(q, *self_kv(y), self_mask, drop, keep[0]), keep[1]))
        q = self.cross_attn.query(y)
        y = self.ln_cross(y + dropout(drop, self.cross_attn.attend(q, *cross_kv, cross_mask, drop, keep[2]), keep[3]))
        h = nn.gelu(self.ffn_in(y), approximate=False)
        return self.ln_ffn(y + dropout(drop, self.ffn_out(h), keep[4]))

    def __call__(self, y, tgt_ok, enc_out, src_ok, drop: SampleDropout | None = None):
        self_mask = attention_mask(tgt_ok, tgt_ok, causal=True)
        cross_mask = attention_mask(tgt_ok, src_ok)
        return self._block(y, self.self_attn.kv, self_mask, self.cross_attn.kv(enc_out), cross_mask, drop)

    def cross_kv(self, enc_out):
        """The cross-attention keys and values [B, s_src, h, d_h] of the encoder output."""
        return self.cross_attn.kv(enc_out)

    def step(self, y, pos, cache, key_ok, cross_kv, src_ok):
        """Position `pos` of y [B, 1, d]: its key/value joins the cache (k, v) [B, T, h, d_h]; it
        attends to cached positions ≤ pos whose token is not PAD (key_ok [B, T]), as the causal,
        padding-masked self-attention of `__call__` does. Returns (y', updated cache)."""
        new_cache = []

        def cached_kv(y):
            for part, new in zip(cache, self.self_attn.kv(y)):
                new_cache.append(jax.lax.dynamic_update_slice_in_dim(part, new, pos, axis=1))
            return new_cache

        self_mask = (key_ok & (jnp.arange(cache[0].shape[1]) <= pos))[:, None, None, :]
        y = self._block(y, cached_kv, self_mask, cross_kv, src_ok[:, None, None, :], None)
        return y, tuple(new_cache)


def _decoder_block(params, dtype=jnp.float32):
    kernel = params["self_attn"]["query"]["kernel"]  # [d, h, d_h] (or [n_dec, d, h, d_h] stacked)
    return DecoderBlock(kernel.shape[-2], kernel.shape[-1], params["ffn_in"]["kernel"].shape[-1], dtype)


def init_split_model(key: jax.Array, cfg: ModelConfig) -> dict:
    """{"client": {"embed", "encoder"}, "server": {"tgt_embed", "decoder", "out_proj"}}."""
    return _init(key, cfg)


@partial(jax.jit, static_argnums=1)  # one compiled init instead of hundreds of eager ops
def _init(key, cfg):
    k_src, k_enc, k_tgt, k_dec, k_out = jax.random.split(key, 5)
    d, v, s = cfg.d_model, cfg.vocab_size, cfg.seq_len
    y = jnp.zeros((1, s, d))
    ok = jnp.ones((1, s), bool)
    block = DecoderBlock(cfg.n_heads, d // cfg.n_heads, cfg.d_ff)
    keys = jax.random.split(jax.random.key(0), cfg.n_dec_layers)
    dec_shapes = jax.eval_shape(jax.vmap(lambda k: block.init(k, y, ok, y, ok)["params"]), keys)
    out_shapes = jax.eval_shape(lambda: nn.Dense(v).init(jax.random.key(0), y)["params"])
    return {
        "client": {
            "embed": {"tok_embed": jax.random.normal(k_src, (v, d)) * d**-0.5},
            "encoder": init_encoder_stack(k_enc, cfg),
        },
        "server": {
            "tgt_embed": jax.random.normal(k_tgt, (v, d)) * d**-0.5,
            "decoder": fill_params(k_dec, dec_shapes, lead=1),
            "out_proj": fill_params(k_out, out_shapes),
        },
    }


def _out_proj(server_params, y):
    out = server_params["out_proj"]
    return nn.Dense(out["bias"].shape[-1], dtype=y.dtype).apply({"params": out}, y).astype(jnp.float32)


def decoder_logits(
    server_params: dict, enc_out: jax.Array, src_ok: jax.Array, dec_in: jax.Array, drop: SampleDropout | None = None
) -> jax.Array:
    """fp32 logits [B, t, V] of the next token at every position of the decoder input dec_in [B, t]."""
    tgt_ok = dec_in != PAD
    y = _embed_tokens(server_params["tgt_embed"], dec_in).astype(enc_out.dtype)
    y = dropout(drop, y, site_masks(drop, y.shape[1:])[0])
    block = _decoder_block(server_params["decoder"], enc_out.dtype)
    n_layers = jax.tree.leaves(server_params["decoder"])[0].shape[0]
    blocks_drop = fold(drop, 1)  # the server stream draws the target embedding's mask, sub-stream 1 the blocks'

    def body(h, layer):
        params, index = layer
        return block.apply({"params": params}, h, tgt_ok, enc_out, src_ok, fold(blocks_drop, index)), None

    y, _ = jax.lax.scan(body, y, (server_params["decoder"], jnp.arange(n_layers)))
    return _out_proj(server_params, y)


def sample_weights(batch: dict, n: int) -> jax.Array:
    w = batch.get("sample_weight")
    return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def server_loss(
    server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, batch: dict, drop: SampleDropout | None = None,
    label_smoothing: float = 0.0,
):
    """(Σ weighted token cross-entropy, Σ weights) of teacher-forced decoding; mean = ratio.

    With label smoothing ε the target is (1 − ε) one-hot + ε uniform over the vocabulary
    (Szegedy et al., 2016; 0.1 in the Transformer paper): −(1 − ε) log p_y − ε mean_v log p_v."""
    tgt = batch["tgt"]
    dec_in, labels = tgt[:, :-1], tgt[:, 1:]
    logits = decoder_logits(server_params, enc_out, pad_mask, dec_in, drop)
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
    weights = (labels != PAD) * sample_weights(batch, tgt.shape[0])[:, None]
    return jnp.sum(nll * weights), jnp.sum(weights)


def greedy_decode(server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, max_len: int) -> jax.Array:
    """Greedy translation [B, max_len]: argmax token by token, PAD after EOS (no beam search).

    Key/value cache: each step embeds one token, appends its self-attention key/value to its
    layer's cache (k, v) [B, max_len, h, d_h] and attends over the cache, so a step costs one
    position instead of re-running the decoder over the whole prefix (O(T) instead of O(T²)
    positions per sentence); the cross-attention keys/values of the encoder output are computed
    once. Same tokens as taking the argmax of `decoder_logits` on the prefix decoded so far
    (tests/test_models.py). The loop (`lax.while_loop`) stops when every sentence has emitted EOS;
    an all-padding source row (a padded batch slot) is done from the start and decodes to PAD.
    Runs in enc_out's dtype.
    """
    batch, dtype = enc_out.shape[0], enc_out.dtype
    layers = server_params["decoder"]
    block = _decoder_block(layers, dtype)
    n_heads, d_head = block.n_heads, block.d_head
    n_layers = jax.tree.leaves(layers)[0].shape[0]
    pe = jnp.asarray(sinusoidal_positions(max_len, n_heads * d_head))

    # Per-layer params, cross K/V and caches as Python lists (n_dec is small and static): the
    # caches are then separate while-loop buffers that XLA updates in place, where a scan over
    # the layer axis would copy every layer's cache in and out at each step.
    per_layer = [jax.tree.map(lambda a, l=l: a[l], layers) for l in range(n_layers)]
    cross = [block.apply({"params": p}, enc_out, method=DecoderBlock.cross_kv) for p in per_layer]
    zeros = jnp.zeros((batch, max_len, n_heads, d_head), dtype)
    state = {
        "i": jnp.zeros((), jnp.int32),
        "tok": jnp.full((batch,), BOS, jnp.int32),
        "done": ~jnp.any(pad_mask, axis=-1),
        "key_ok": jnp.zeros((batch, max_len), bool),
        "cache": [(zeros, zeros)] * n_layers,
        "out": jnp.full((batch, max_len), PAD, jnp.int32),
    }

    def step(s):
        i = s["i"]
        key_ok = jax.lax.dynamic_update_index_in_dim(s["key_ok"], s["tok"] != PAD, i, axis=1)
        y = _embed_tokens(server_params["tgt_embed"], s["tok"][:, None], jax.lax.dynamic_slice_in_dim(pe, i, 1))
        y = y.astype(dtype)

        cache = []
        for params, layer_cache, cross_kv in zip(per_layer, s["cache"], cross):
            y, layer_cache = block.apply({"params": params}, y, i, layer_cache, key_ok, cross_kv, pad_mask, method=DecoderBlock.step)
            cache.append(layer_cache)
        tok = jnp.argmax(_out_proj(server_params, y)[:, 0], axis=-1)
        tok = jnp.where(s["done"], PAD, tok).astype(jnp.int32)
        return {
            "i": i + 1,
            "tok": tok,
            "done": s["done"] | (tok == EOS),
            "key_ok": key_ok,
            "cache": cache,
            "out": jax.lax.dynamic_update_index_in_dim(s["out"], tok, i, axis=1),
        }

    state = jax.lax.while_loop(lambda s: (s["i"] < max_len) & ~jnp.all(s["done"]), step, state)
    return state["out"]
