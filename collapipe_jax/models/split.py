"""The split model for every task: client side (embedding + encoder TEBs), server side (decoder/head).

One entry point for the three tasks of the paper, dispatching to `transformer.py` (task
"translation", Multi30k) or `bert.py` (tasks "ner" and "sentence"). Which model a params pytree
belongs to is read from its (static) structure: a server with a "decoder" is the Transformer, an
embedding with "ln" is BERT's; so the functions below are pure and jit/vmap/grad-able.

    params = init_split_model(key, cfg, task, n_classes)
           = {"client": {"embed": ..., "encoder": TEB params stacked [L, ...]}, "server": {...}}
    x, pad_mask = embed_apply(params["client"]["embed"], batch["tokens"])        # on the CU
    enc_out = encoder_fn(params["client"]["encoder"], x, pad_mask)              # on the devices
    loss_sum, weight_sum = server_loss(params["server"], enc_out, pad_mask, batch)  # edge server

`split_model_loss(params, batch, encoder_fn)` composes the three. With
`encoder_fn = teb.encoder_reference` it is the unpipelined reference; with
`pipeline.gpipe.pipelined_encoder(layout, n_micro)` it is the GPipe-pipelined model, and the two
agree (tests/test_gpipe.py). Losses are returned as (Σ weighted loss, Σ weights) so that padded
samples (weight 0) contribute nothing and sums over micro-batches or clusters stay exact; the
mean loss is their ratio (`split_model_mean_loss`).

Training options (keyword arguments of `split_model_loss`):

* `dropout_key` (a PRNG key, e.g. folded from (round, cluster, local step) by the trainer) and
  `dropout` (the rate): sample b of the batch gets the key fold_in(dropout_key, b), and every
  layer's masks are drawn from it folded with the stream and the layer index
  (`models/dropout.py`), so the pipelined and the unpipelined model draw identical masks. No key (evaluation) or rate 0 is
  the deterministic model, bit for bit.
* `dtype` ("float32" | "bfloat16"): the compute dtype; params stay fp32 (cast at use), the loss
  is fp32.

An `encoder_fn` is called as encoder_fn(stacked, x, pad_mask) without dropout and as
encoder_fn(stacked, x, pad_mask, drop) with it, `drop` the encoder stream's `SampleDropout`
(both `encoder_reference` and `pipelined_encoder(...)` accept it).

Evaluation: `predict(params, tokens, max_len=None, dtype=)` on one batch (argmax labels, or
greedy translations with a key/value cache) and `predict_batched(params, tokens, batch_size)`
for a whole test set in one jitted program (lax.map over fixed-size chunks; no host round trip
per batch).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from collapipe_jax.errors import ValidationError
from collapipe_jax.models import bert, transformer
from collapipe_jax.models.config import ModelConfig, compute_dtype
from collapipe_jax.models.dropout import EMBED, ENCODER, SERVER, fold, sample_dropout
from collapipe_jax.models.teb import encoder_reference

TASKS = ("translation", "ner", "sentence")
EncoderFn = Callable[..., jax.Array]


def init_split_model(key: jax.Array, cfg: ModelConfig, task: str, n_classes: int | None = None) -> dict:
    """Split params for `task` ("translation": Transformer; "ner"/"sentence": BERT with n_classes)."""
    if task == "translation":
        if cfg.n_dec_layers < 1:
            raise ValidationError("model.n_dec_layers", "must be >= 1 for translation", cfg.n_dec_layers)
        return transformer.init_split_model(key, cfg)
    if task in bert.TASKS:
        return bert.init_split_model(key, cfg, task, n_classes)
    raise ValidationError("task", f"must be one of {TASKS}", task)


def task_of(params_or_server: dict) -> str:
    server = params_or_server.get("server", params_or_server)
    if "decoder" in server:
        return "translation"
    return "ner" if "token_head" in server else "sentence"


def embed_apply(embed_params: dict, tokens: jax.Array, *, dtype="float32", drop=None) -> tuple[jax.Array, jax.Array]:
    module = bert if "ln" in embed_params else transformer
    return module.embed_apply(embed_params, tokens, dtype=compute_dtype(dtype), drop=drop)


def server_loss(server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, batch: dict, drop=None,
                label_smoothing: float = 0.0):
    """The server model's (loss_sum, weight_sum); label smoothing applies to translation."""
    if "decoder" in server_params:
        return transformer.server_loss(server_params, enc_out, pad_mask, batch, drop, label_smoothing)
    return bert.server_loss(server_params, enc_out, pad_mask, batch, drop)


def split_model_loss(
    params: dict,
    batch: dict,
    encoder_fn: EncoderFn = encoder_reference,
    *,
    dropout_key: jax.Array | None = None,
    dropout: float = 0.0,
    dtype="float32",
    label_smoothing: float = 0.0,
):
    """(loss_sum, weight_sum) of embed → encoder_fn → server head on one batch.

    Dropout at rate `dropout` when `dropout_key` is given (training), none otherwise; label
    smoothing of the translation targets."""
    tokens = batch["tokens"]
    drop = sample_dropout(dropout_key, tokens.shape[0], dropout)
    x, pad_mask = embed_apply(params["client"]["embed"], tokens, dtype=dtype, drop=fold(drop, EMBED))
    encoder = params["client"]["encoder"]
    enc_out = encoder_fn(encoder, x, pad_mask) if drop is None else encoder_fn(encoder, x, pad_mask, drop.fold(ENCODER))
    return server_loss(params["server"], enc_out, pad_mask, batch, fold(drop, SERVER), label_smoothing)


def split_model_mean_loss(params: dict, batch: dict, encoder_fn: EncoderFn = encoder_reference, **options) -> jax.Array:
    """Weighted mean loss; 0 for a batch whose weights are all 0 (never NaN). `options` as
    `split_model_loss` (dropout_key, dropout, dtype)."""
    loss_sum, weight_sum = split_model_loss(params, batch, encoder_fn, **options)
    return loss_sum / jnp.maximum(weight_sum, 1e-9)


def predict(params: dict, tokens: jax.Array, *, max_len: int | None = None, dtype="float32") -> jax.Array:
    """Deterministic predictions of the unsegmented model on tokens [B, s]: argmax labels ([B, s]
    for "ner", [B] for "sentence") or greedy translations [B, max_len] (default max_len = s)."""
    x, pad_mask = embed_apply(params["client"]["embed"], tokens, dtype=dtype)
    enc = encoder_reference(params["client"]["encoder"], x, pad_mask)
    if "decoder" in params["server"]:
        return transformer.greedy_decode(params["server"], enc, pad_mask, tokens.shape[-1] if max_len is None else max_len)
    return bert.predict(params["server"], enc)


def predict_batched(
    params: dict, tokens: jax.Array, *, batch_size: int = 128, max_len: int | None = None, dtype="float32"
) -> jax.Array:
    """`predict` over a whole test set tokens [N, s] in one program: the rows are padded with
    all-PAD rows to a multiple of batch_size and `lax.map` runs the chunks in turn (memory of one
    chunk; a padded row costs nothing in decoding, it is done from the start). Jit it with
    batch_size and max_len static."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValidationError("batch_size", "must be a positive integer", batch_size)
    n, seq = tokens.shape
    n_chunks = -(-n // batch_size)
    padded = jnp.pad(tokens, ((0, n_chunks * batch_size - n), (0, 0))).reshape(n_chunks, batch_size, seq)
    out = jax.lax.map(lambda t: predict(params, t, max_len=max_len, dtype=dtype), padded)
    return out.reshape((n_chunks * batch_size,) + out.shape[2:])[:n]
