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

Functions: `init_split_model(key, cfg)`, `embed_apply(embed, tokens) -> (x, pad_mask)`,
`server_loss(server, enc_out, pad_mask, batch) -> (loss_sum, weight_sum)`,
`greedy_decode(server, enc_out, pad_mask, max_len) -> tokens [B, max_len]` (for BLEU).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from collapipe_jax.models.config import ModelConfig
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


def _embed_tokens(table: jax.Array, tokens: jax.Array) -> jax.Array:
    d = table.shape[-1]
    x = table[tokens] * jnp.sqrt(jnp.asarray(d, table.dtype))
    return x + sinusoidal_positions(tokens.shape[-1], d)[None]


def embed_apply(embed_params: dict, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Source embedding on the CU: (x [B, s, d], pad_mask [B, s] with True = real token)."""
    return _embed_tokens(embed_params["tok_embed"], tokens), tokens != PAD


class DecoderBlock(nn.Module):
    """Post-LN Transformer decoder block: causal self-attention, cross-attention, FFN."""

    n_heads: int
    d_ff: int

    @nn.compact
    def __call__(self, y, tgt_ok, enc_out, src_ok):
        self_mask = attention_mask(tgt_ok, tgt_ok, causal=True)
        y = nn.LayerNorm(name="ln_self")(y + MultiHeadAttention(self.n_heads, name="self_attn")(y, y, self_mask))
        cross_mask = attention_mask(tgt_ok, src_ok)
        y = nn.LayerNorm(name="ln_cross")(
            y + MultiHeadAttention(self.n_heads, name="cross_attn")(y, enc_out, cross_mask)
        )
        h = nn.gelu(nn.Dense(self.d_ff, name="ffn_in")(y), approximate=False)
        return nn.LayerNorm(name="ln_ffn")(y + nn.Dense(y.shape[-1], name="ffn_out")(h))


def _decoder_block(params):
    n_heads = params["self_attn"]["query"]["kernel"].shape[-2]
    return DecoderBlock(n_heads, params["ffn_in"]["kernel"].shape[-1])


def init_split_model(key: jax.Array, cfg: ModelConfig) -> dict:
    """{"client": {"embed", "encoder"}, "server": {"tgt_embed", "decoder", "out_proj"}}."""
    return _init(key, cfg)


@partial(jax.jit, static_argnums=1)  # one compiled init instead of hundreds of eager ops
def _init(key, cfg):
    k_src, k_enc, k_tgt, k_dec, k_out = jax.random.split(key, 5)
    d, v, s = cfg.d_model, cfg.vocab_size, cfg.seq_len
    y = jnp.zeros((1, s, d))
    ok = jnp.ones((1, s), bool)
    block = DecoderBlock(cfg.n_heads, cfg.d_ff)
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


def decoder_logits(server_params: dict, enc_out: jax.Array, src_ok: jax.Array, dec_in: jax.Array) -> jax.Array:
    """Logits [B, t, V] of the next token at every position of the decoder input dec_in [B, t]."""
    tgt_ok = dec_in != PAD
    y = _embed_tokens(server_params["tgt_embed"], dec_in)

    def body(h, params):
        return _decoder_block(params).apply({"params": params}, h, tgt_ok, enc_out, src_ok), None

    y, _ = jax.lax.scan(body, y, server_params["decoder"])
    return nn.Dense(server_params["out_proj"]["bias"].shape[-1]).apply({"params": server_params["out_proj"]}, y)


def sample_weights(batch: dict, n: int) -> jax.Array:
    w = batch.get("sample_weight")
    return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def server_loss(server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, batch: dict):
    """(Σ weighted token cross-entropy, Σ weights) of teacher-forced decoding; mean = ratio."""
    tgt = batch["tgt"]
    dec_in, labels = tgt[:, :-1], tgt[:, 1:]
    logits = decoder_logits(server_params, enc_out, pad_mask, dec_in)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    weights = (labels != PAD) * sample_weights(batch, tgt.shape[0])[:, None]
    return jnp.sum(nll * weights), jnp.sum(weights)


def greedy_decode(server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, max_len: int) -> jax.Array:
    """Greedy translation [B, max_len]: argmax token by token, PAD after EOS (no beam search).

    Each step re-runs the decoder on the whole fixed-length prefix buffer (no KV cache): the
    causal mask makes position i depend only on positions ≤ i, so the later PADs change nothing.
    """
    batch = enc_out.shape[0]
    buf = jnp.full((batch, max_len + 1), PAD, jnp.int32).at[:, 0].set(BOS)

    def step(i, carry):
        buf, done = carry
        logits = decoder_logits(server_params, enc_out, pad_mask, buf[:, :max_len])
        tok = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), axis=-1)
        tok = jnp.where(done, PAD, tok).astype(jnp.int32)
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, i + 1, axis=1)
        return buf, done | (tok == EOS)

    buf, _ = jax.lax.fori_loop(0, max_len, step, (buf, jnp.zeros((batch,), bool)))
    return buf[:, 1:]
