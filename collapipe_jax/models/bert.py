"""BERT (an encoder of L TEBs) with token- and sentence-classification heads, split for CollaPipe.

The embedding (token + learned position embeddings, LayerNorm) runs on the cluster's CU, the L
TEBs on the devices (`pipeline/`), the head on the edge server:

    params = {"client": {"embed": {"tok_embed": [V, d], "pos_embed": [seq_len, d],
                                   "ln": {"scale", "bias"}},
                         "encoder": TEB params stacked [L, ...]},
              "server": {"token_head": Dense(d -> n_classes)}                  task "ner"
                     or {"pooler": Dense(d -> d), "cls_head": Dense(d -> n)}   task "sentence"}

Token conventions: PAD = 0, CLS = 1 (the first token of every sequence; the sentence head
reads its output through the tanh pooler, as in BERT). No segment embeddings (single sentences).

Batches: `tokens` int [B, s]; task "ner": `labels` int [B, s] with −1 for positions that are
not scored ([CLS], padding, sub-word continuations); task "sentence": `label` int [B]; both
take an optional `sample_weight` float [B] (0 for a padded sample). A token's weight is
sample_weight × (label ≥ 0); a sentence's weight is its sample_weight.

Functions: `init_split_model(key, cfg, task, n_classes)`, `embed_apply(embed, tokens, dtype=,
drop=)`, `server_loss(server, enc_out, pad_mask, batch, drop=None) -> (loss_sum, weight_sum)`,
`server_logits(server, enc_out, drop=None)` and `predict(server, enc_out)` (argmax: [B, s] for
"ner", [B] for "sentence").

Dropout (as BERT: hidden_dropout on the embedding output and before the classifier, besides the
TEBs' own): `drop` is None (deterministic) or per-sample keys (`models/dropout.py`); the
embedding's and the heads' masks are drawn from the EMBED and the SERVER stream's keys. Compute dtype: `embed_apply(..., dtype=)` casts the embedding
output, the encoder and the heads follow its dtype, logits and the loss are fp32.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn

from collapipe_jax.errors import ValidationError
from collapipe_jax.models.config import ModelConfig
from collapipe_jax.models.dropout import SampleDropout, dropout, site_masks
from collapipe_jax.models.teb import fill_params, init_encoder_stack
from collapipe_jax.models.transformer import sample_weights

PAD, CLS = 0, 1
TASKS = ("ner", "sentence")


def init_split_model(key: jax.Array, cfg: ModelConfig, task: str, n_classes: int) -> dict:
    if task not in TASKS:
        raise ValidationError("task", f"must be one of {TASKS}", task)
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValidationError("n_classes", "must be an integer >= 2", n_classes)
    return _init(key, cfg, task, n_classes)


@partial(jax.jit, static_argnums=(1, 2, 3))  # one compiled init instead of hundreds of eager ops
def _init(key, cfg, task, n_classes):
    k_tok, k_pos, k_enc, k_h1, k_h2 = jax.random.split(key, 5)
    d = cfg.d_model
    dense = lambda n: jax.eval_shape(lambda: nn.Dense(n).init(jax.random.key(0), jnp.zeros((1, d)))["params"])  # noqa: E731
    if task == "ner":
        server = {"token_head": fill_params(k_h1, dense(n_classes))}
    else:
        server = {"pooler": fill_params(k_h1, dense(d)), "cls_head": fill_params(k_h2, dense(n_classes))}
    return {
        "client": {
            "embed": {
                "tok_embed": 0.02 * jax.random.normal(k_tok, (cfg.vocab_size, d)),  # BERT's N(0, 0.02²)
                "pos_embed": 0.02 * jax.random.normal(k_pos, (cfg.seq_len, d)),
                "ln": {"scale": jnp.ones((d,)), "bias": jnp.zeros((d,))},
            },
            "encoder": init_encoder_stack(k_enc, cfg),
        },
        "server": server,
    }


def embed_apply(
    embed_params: dict, tokens: jax.Array, *, dtype=jnp.float32, drop: SampleDropout | None = None
) -> tuple[jax.Array, jax.Array]:
    """(x [B, s, d] in `dtype`, pad_mask [B, s]): Dropout(LayerNorm(token + position embeddings))."""
    s = tokens.shape[-1]
    x = embed_params["tok_embed"][tokens] + embed_params["pos_embed"][:s][None]
    x = nn.LayerNorm(dtype=dtype).apply({"params": embed_params["ln"]}, x)
    return dropout(drop, x, site_masks(drop, x.shape[1:])[0]), tokens != PAD


def _dense(params, x):
    return nn.Dense(params["bias"].shape[-1], dtype=x.dtype).apply({"params": params}, x)


def server_logits(server_params: dict, enc_out: jax.Array, drop: SampleDropout | None = None) -> jax.Array:
    """fp32 [B, s, C] token logits (task "ner") or [B, C] sentence logits from [CLS] (task
    "sentence"), computed in enc_out's dtype; dropout before the classifier, as BERT."""
    if "token_head" in server_params:
        logits = _dense(server_params["token_head"], dropout(drop, enc_out, site_masks(drop, enc_out.shape[1:])[0]))
    else:
        pooled = jnp.tanh(_dense(server_params["pooler"], enc_out[:, 0]))
        logits = _dense(server_params["cls_head"], dropout(drop, pooled, site_masks(drop, pooled.shape[1:])[0]))
    return logits.astype(jnp.float32)


def predict(server_params: dict, enc_out: jax.Array) -> jax.Array:
    return jnp.argmax(server_logits(server_params, enc_out), axis=-1)


def server_loss(
    server_params: dict, enc_out: jax.Array, pad_mask: jax.Array, batch: dict, drop: SampleDropout | None = None
):
    """(Σ weighted cross-entropy, Σ weights) over scored tokens ("ner") or sentences ("sentence")."""
    logits = server_logits(server_params, enc_out, drop)
    w_sample = sample_weights(batch, enc_out.shape[0])
    if "token_head" in server_params:
        labels = batch["labels"]
        weights = (labels >= 0) * pad_mask * w_sample[:, None]
    else:
        labels = batch["label"]
        weights = w_sample
    safe = jnp.maximum(labels, 0)  # −1 labels carry weight 0; index a valid class meanwhile
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), safe[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * weights), jnp.sum(weights)
