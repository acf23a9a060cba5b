"""Seeds of a learning run: one program vmapped over k seeds vs the same program k times in a row.

The round is the centralized reference round of the tiny BERT sentence classifier (the Toutiao
model, unsegmented encoder): E = 5 AdamW steps of N·b = 3 × 16 samples of 32 tokens. Each seed
has its own initial model, optimizer state, batches and dropout key, as `train --seeds` gives
it. Two ways to run k = 3 seeds:

* sequence: the jitted round called once per seed (what `train --seeds` does);
* vmapped: one jitted program of `jax.vmap` over the k seeds' states, batches and keys.

Both are compiled before timing; the record holds seconds per k-seed round and the ratio
sequence / vmapped (> 1: vmapping is faster).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_time, device_sized, write_record
from collapipe_jax.federated.centralized import init_centralized_state, make_centralized_round
from collapipe_jax.federated.program import RoundSettings
from collapipe_jax.models import split
from collapipe_jax.models.config import model_preset

SEQ, VOCAB, CLASSES, E, SEEDS = 32, 2000, 15, 5, 3
SAMPLES = device_sized(cpu=3 * 16, accelerator=3 * 64)  # N · b a step


def seed_inputs(seed: int, spec):
    cfg = model_preset("tiny").replace(vocab_size=VOCAB, seq_len=SEQ)
    params = split.init_split_model(jax.random.PRNGKey(seed), cfg, "sentence", CLASSES)
    state = init_centralized_state(spec, params["client"], params["server"])
    rng = np.random.default_rng(seed)
    batch = {"tokens": jnp.asarray(rng.integers(5, VOCAB, (E, SAMPLES, SEQ)), jnp.int32),
             "label": jnp.asarray(rng.integers(0, CLASSES, (E, SAMPLES)), jnp.int32)}
    return state, batch, jax.random.PRNGKey(100 + seed)


def main() -> None:
    settings = RoundSettings(pipelined=False, n_micro=1, n_stages=1, local_steps=E, optimizer="adamw", lr=1e-3,
                             weight_decay=0.01, lr_schedule="warmup-cosine", warmup_steps=5, total_steps=50,
                             clip_norm=1.0, dropout=0.1)
    spec = settings.spec()
    round_fn = make_centralized_round(spec)
    inputs = [seed_inputs(s, spec) for s in range(SEEDS)]
    step0 = jnp.asarray(0, jnp.int32)

    def sequence():
        outs = [round_fn(state, batch, step0, key) for state, batch, key in inputs]
        jax.block_until_ready(outs)

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *inputs)
    vmapped_fn = jax.jit(jax.vmap(round_fn, in_axes=(0, 0, None, 0)))

    def vmapped():
        jax.block_until_ready(vmapped_fn(stacked[0], stacked[1], step0, stacked[2]))

    sequence()
    vmapped()  # compile both first
    t_seq, t_vmap = best_time(sequence, repeat=5), best_time(vmapped, repeat=5)
    record = {"seeds": SEEDS, "local_steps": E, "samples_per_step": SAMPLES, "seq_len": SEQ, "model": "tiny",
              "sequence_s": t_seq, "vmapped_s": t_vmap, "sequence_over_vmapped": t_seq / t_vmap}
    print(f"{SEEDS} seeds x {E} AdamW steps of {SAMPLES} x {SEQ} tokens (tiny model): sequence {t_seq * 1e3:.1f} ms, "
          f"vmapped {t_vmap * 1e3:.1f} ms, sequence / vmapped = {t_seq / t_vmap:.2f}")
    write_record("seeds", record)


if __name__ == "__main__":
    main()
