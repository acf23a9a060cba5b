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
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from collapipe_jax.errors import ValidationError
from collapipe_jax.models import bert, transformer
from collapipe_jax.models.config import ModelConfig
from collapipe_jax.models.teb import encoder_reference

TASKS = ("translation", "ner", "sentence")
EncoderFn = Callable[[dict, jax.Array, jax.Array], jax.Array]


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


def embed_apply(embed_params: dict, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    module = bert if "ln" in embed_params else transformer
    return module.embed_apply(embed_params, tokens)


def server_loss(server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, batch: dict):
    module = transformer if "decoder" in server_params else bert
    return module.server_loss(server_params, enc_out, pad_mask, batch)


def split_model_loss(params: dict, batch: dict, encoder_fn: EncoderFn = encoder_reference):
    """(loss_sum, weight_sum) of embed → encoder_fn → server head on one batch."""
    x, pad_mask = embed_apply(params["client"]["embed"], batch["tokens"])
    enc_out = encoder_fn(params["client"]["encoder"], x, pad_mask)
    return server_loss(params["server"], enc_out, pad_mask, batch)


def split_model_mean_loss(params: dict, batch: dict, encoder_fn: EncoderFn = encoder_reference) -> jax.Array:
    """Weighted mean loss; 0 for a batch whose weights are all 0 (never NaN)."""
    loss_sum, weight_sum = split_model_loss(params, batch, encoder_fn)
    return loss_sum / jnp.maximum(weight_sum, 1e-9)
