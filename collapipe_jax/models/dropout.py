"""Dropout whose masks depend only on (base key, sample, layer): the same with or without GPipe.

A pipelined encoder sees a batch as m micro-batches of b̂ samples and a stage sees only its own
layers, so dropout drawn from one key per call (`flax.linen.Dropout`) would give the pipelined
and the unpipelined model different masks. Here every sample carries its own key, and every
stream and layer folds its index into it:

    k_b          = fold_in(base_key, b)            b = the sample's index in the batch
    k_b,stream   = fold_in(k_b, stream)            stream = EMBED, ENCODER or SERVER
    k_b,enc,l    = fold_in(k_b,ENCODER, l)         l = the encoder layer's global index
    bits_b       = random.bits(k_b,enc,l, (Σ_i n_i,), uint32)      one draw per sample and layer
    mask_b,i     = bits_b[n_0 + … + n_{i−1} :][: n_i] ≥ ⌊rate · 2³²⌋, reshaped to site i's shape

with sites i = 0, 1, … of the layer in a fixed order (each module documents its sites; the
embedding is site 0 of the EMBED stream). So a micro-batch, a stage or a slot that holds layer l
draws exactly the masks the unpipelined model draws for those samples at layer l
(tests/test_gpipe_grads.py checks it). One draw per layer rather than per site keeps the
compiled program small: every `random.bits`/`fold_in` under vmap is a threefry hash that XLA
compiles anew (the loss of the tests' 8+2-layer Transformer compiled in 25 s with one draw per
site, 9 s with one per layer, 5 s without dropout, on the loaded 2-core CPU). A value is kept with probability 1 − ⌊rate·2³²⌋/2³² (= 1 − rate to
2⁻³²) and scaled by 1/(1 − rate) (inverted dropout, as BERT and the Transformer), so evaluation
(no keys) is the identity.

`SampleDropout(keys [B], rate)` is a pytree (keys are data, the rate is static), so it can be
sliced into micro-batches, passed through `shard_map`/`vmap`/`scan` and indexed like the batch.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
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


@struct.dataclass
class SampleDropout:
    """One PRNG key per sample (typed key array [B]) and the static dropout rate."""

    keys: jax.Array
    rate: float = struct.field(pytree_node=False, default=0.0)

    def fold(self, data) -> "SampleDropout":
        """The same samples' keys for a sub-stream (a layer index, a stream id)."""
        data = jnp.broadcast_to(jnp.asarray(data, jnp.uint32), self.keys.shape)
        return self.replace(keys=jax.vmap(jax.random.fold_in)(self.keys, data))

    def masks(self, *shapes: Sequence[int]) -> tuple[jax.Array, ...]:
        """Keep-masks bool [B, *shape] for the sites of one layer, from one draw per sample."""
        sizes = [math.prod(shape) for shape in shapes]
        bits = jax.vmap(lambda k: jax.random.bits(k, (sum(sizes),), jnp.uint32))(self.keys)
        keep = bits >= np.uint32(int(self.rate * 2**32))
        cuts = np.cumsum(sizes)[:-1].tolist()
        return tuple(m.reshape((-1,) + tuple(s)) for m, s in zip(jnp.split(keep, cuts, axis=1), shapes))

    def apply(self, x: jax.Array, keep: jax.Array | None) -> jax.Array:
        """Inverted dropout of x [B, ...] with the keep-mask `keep` (None: x unchanged)."""
        if keep is None:
            return x
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


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


def site_masks(drop: SampleDropout | None, *shapes) -> tuple:
    """`drop.masks(*shapes)`, or one None per site without dropout."""
    return (None,) * len(shapes) if drop is None else drop.masks(*shapes)


def dropout(drop: SampleDropout | None, x: jax.Array, keep: jax.Array | None) -> jax.Array:
    return x if drop is None else drop.apply(x, keep)
