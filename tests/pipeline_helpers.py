"""Shared by the GPipe test files: a small config, the gradient comparison, random decisions."""

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.models.config import ModelConfig

CFG = ModelConfig("test", d_model=16, n_heads=2, d_ff=24, n_enc_layers=8, n_dec_layers=1, seq_len=6, vocab_size=23)
RTOL = 1e-5


def rel_err(got, want) -> float:
    """Largest per-leaf ‖got − want‖/‖want‖. The floor (1e-3 of the whole gradient's norm) is
    for leaves whose exact gradient is 0: the attention key bias (softmax is shift-invariant),
    where float rounding alone makes the plain ratio O(1)."""
    total = float(jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(want))))
    errs = jax.tree.map(
        lambda g, w: float(jnp.linalg.norm(g - w)) / max(float(jnp.linalg.norm(w)), 1e-3 * total), got, want
    )
    return max(jax.tree.leaves(errs))


def random_decision(seed, n_layers, n_devices, n_stages_min=1):
    rng = np.random.default_rng(seed)
    while True:
        cuts = np.sort(rng.integers(0, n_layers + 1, n_devices - 1))
        delta = np.diff(np.concatenate([[0], cuts, [n_layers]]))
        if (delta > 0).sum() >= n_stages_min:
            return delta, rng.permutation(n_devices)


def make_batch(n, seed=0, n_classes=3):
    toks = jax.random.randint(jax.random.key(seed), (n, CFG.seq_len), 3, CFG.vocab_size)
    lengths = np.random.default_rng(seed).integers(1, CFG.seq_len + 1, n)
    toks = jnp.where(jnp.arange(CFG.seq_len)[None] < lengths[:, None], toks, 0)
    return {"tokens": toks, "labels": jnp.where(toks > 0, toks % n_classes, -1)}
