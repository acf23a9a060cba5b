"""Shared by the GPipe test files: a small config, the gradient comparison, random decisions."""

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.models.config import ModelConfig

CFG = ModelConfig("test", d_model=16, n_heads=2, d_ff=24, n_enc_layers=8, n_dec_layers=1, seq_len=6, vocab_size=23)
RTOL = 1e-5


def rel_err(got, want) -> float:
    """Largest per-leaf ‖got − want‖/‖want‖, over a pytree of gradients.

    A leaf whose exact gradient is 0 has ‖want‖ at rounding level (the attention key bias:
    softmax is shift-invariant, so ∂L/∂b_k = 0); a ratio of two rounding errors means nothing,
    so such leaves (‖want‖ < 1e-6 of the whole gradient's norm) are measured against the whole
    gradient's norm instead."""
    total = float(jnp.sqrt(sum(jnp.sum(w**2) for w in jax.tree.leaves(want))))

    def leaf_err(g, w):
        scale = float(jnp.linalg.norm(w))
        return float(jnp.linalg.norm(g - w)) / (scale if scale >= 1e-6 * total else total)

    return max(jax.tree.leaves(jax.tree.map(leaf_err, got, want)))


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
