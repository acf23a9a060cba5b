"""Dropout whose masks depend only on (base key, sample, layer, site): the same with or without GPipe.

A pipelined encoder sees a batch as m micro-batches of b̂ samples and a stage sees only its own
layers, so dropout drawn from one key per call (`flax.linen.Dropout`) would give the pipelined
and the unpipelined model different masks. Here every sample carries its own key, and every
layer and every dropout site folds its index into it:

    k_b          = fold_in(base_key, b)                 b = the sample's index in the batch
    k_b,stream   = fold_in(k_b, stream)                 stream = EMBED, ENCODER or SERVER
    k_b,enc,l    = fold_in(k_b,ENCODER, l)              l = the encoder layer's global index
    mask_b       = bernoulli(fold_in(k_b,enc,l, site), 1 − rate, shape of one sample)

(the embedding's mask is site 0 of the EMBED stream; the server's sub-streams are described in
`bert.py` and `transformer.py`), so a micro-batch, a stage or a slot that holds layer l draws exactly the masks the unpipelined
model draws for those samples at layer l (tests/test_gpipe_grads.py checks it). Kept values are
scaled by 1/(1 − rate) (inverted dropout, as BERT and the Transformer): evaluation (no keys)
is the identity.

`SampleDropout(keys [B], rate)` is a pytree (keys are data, the rate is static), so it can be
sliced into micro-batches, passed through `shard_map`/`vmap`/`scan` and indexed like the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from collapipe_jax.errors import ValidationError

# Streams of a sample's key (see the module docstring); fixed so that masks are reproducible.
EMBED, ENCODER, SERVER = 0, 1, 2


def check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValidationError("dropout", "must be a number in [0, 1)", rate)
    return float(rate)


def _typed(key: jax.Array) -> jax.Array:
    """A typed PRNG key array, also from legacy uint32 keys (`jax.random.PRNGKey`)."""
    return key if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(key)


def _fold(keys: jax.Array, data) -> jax.Array:
    """fold_in(keys[b], data) for every b (data a scalar, or one value per key)."""
    data = jnp.broadcast_to(jnp.asarray(data, jnp.uint32), keys.shape)
    return jax.vmap(jax.random.fold_in)(keys, data)


@struct.dataclass
class SampleDropout:
    """One PRNG key per sample (typed key array [B]) and the static dropout rate."""

    keys: jax.Array
    rate: float = struct.field(pytree_node=False, default=0.0)

    def fold(self, data) -> "SampleDropout":
        """The same samples' keys for a sub-stream (a layer index, a stream id)."""
        return self.replace(keys=_fold(self.keys, data))


def sample_dropout(base_key: jax.Array | None, batch_size: int, rate: float) -> SampleDropout | None:
    """Per-sample keys k_b = fold_in(base_key, b), b = 0 … B−1; None (no dropout) when there is
    no key or the rate is 0, so evaluation and rate 0 run the deterministic model unchanged."""
    rate = check_rate(rate)
    if base_key is None or rate == 0.0:
        return None
    base = _typed(jnp.asarray(base_key))
    keys = jax.vmap(lambda b: jax.random.fold_in(base, b))(jnp.arange(batch_size, dtype=jnp.uint32))
    return SampleDropout(keys=keys, rate=rate)


def fold(drop: SampleDropout | None, data) -> SampleDropout | None:
    return None if drop is None else drop.fold(data)


def dropout(drop: SampleDropout | None, x: jax.Array, site: int) -> jax.Array:
    """Inverted dropout of x [B, ...] with sample b's mask drawn from fold_in(keys[b], site)."""
    if drop is None or drop.rate == 0.0:
        return x
    keep_prob = 1.0 - drop.rate
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, keep_prob, x.shape[1:]))(_fold(drop.keys, site))
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))
