"""Federated round: vmapped over the clusters vs a Python loop over them (docs/design.md §7).

One round of the tiny BERT sentence classifier (the model of the Toutiao task, unsegmented
encoder, b = 8 samples of 32 tokens per cluster on the CPU, 32 on a GPU/TPU): one local SGD
step, noisy upload, FedAvg, shared head update. Three programs for the same round:

* vmapped: `make_round` with one vmap over all N clusters inside one jitted program;
* grouped: `make_round` with cluster_chunk=4: the clusters' gradients in a lax.map over groups
  of (at most) 4 vmapped clusters;
* looped: `looped_round`, a jitted per-cluster gradient in a Python loop, then the updates,
  uploads and aggregation.

All are warmed up (compiled) before timing; the record holds seconds per round and the ratios
looped / vmapped and looped / grouped for N = 3 and N = 16. On the 2-core CPU one cluster's
step (b = 8 × 32 tokens) already keeps the cores busy, so vectorising buys little compute; a
wide vmap makes every buffer N times larger (the scan-over-layers residuals [L, N, b, s, ·]
and their zero-fill and copies, the rolled threefry loop over the [N, |θ|] upload noise) and
falls out of the cache, which is why the all-N vmap loses at N = 16 and groups of 4 win.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import best_time, device_sized, write_record
from collapipe_jax.federated.optim import client_direction, learning_rate_schedule
from collapipe_jax.federated.rounds import LocalWork, RoundSpec, Uploads, init_server_state, looped_round, make_round
from collapipe_jax.models import split
from collapipe_jax.models.config import model_preset

SEQ, VOCAB, CLASSES = 32, 2000, 15
BATCH = device_sized(cpu=8, accelerator=32)  # samples per cluster
GROUP = 4  # cluster_chunk of the grouped round


def round_inputs(n_clusters: int, seed: int = 0):
    cfg = model_preset("tiny").replace(vocab_size=VOCAB, seq_len=SEQ)
    params = jax.jit(lambda k: split.init_split_model(k, cfg, "sentence", CLASSES))(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, VOCAB, (n_clusters, BATCH, SEQ)).astype(np.int32)
    tokens[:, :, 0] = 1  # [CLS]
    batch = {"tokens": jnp.asarray(tokens)[:, None],  # one local step: [N, E = 1, b, s]
             "label": jnp.asarray(rng.integers(0, CLASSES, (n_clusters, 1, BATCH)), jnp.int32)}
    layout = {"unused": jnp.zeros((n_clusters, 1))}
    uploads = Uploads(active=jnp.asarray(np.arange(n_clusters) < max(1, (3 * n_clusters) // 4)),
                      eps=jnp.full((n_clusters,), 0.02), weight=jnp.asarray(rng.integers(50, 100, n_clusters), jnp.float32))
    return params, batch, layout, uploads


def loss_fn(client, server, batch, layout, key):
    return split.split_model_loss({"client": client, "server": server}, batch)


def spec(cluster_chunk=None) -> RoundSpec:
    return RoundSpec(loss_fn, client_direction("sgd"), learning_rate_schedule("constant", 0.05),
                     cluster_chunk=cluster_chunk)


def time_rounds(n_clusters: int, repeat: int = 10) -> dict:
    params, batch, layout, uploads = round_inputs(n_clusters)
    state = init_server_state(spec(), params["client"], params["server"])
    work = LocalWork(jnp.ones(n_clusters, jnp.int32), jnp.asarray(0, jnp.int32))
    args = (state, batch, layout, uploads, work, jax.random.PRNGKey(1))
    out = {}
    builds = (("vmapped", make_round(spec())), ("grouped", make_round(spec(GROUP))), ("looped", looped_round(spec())))
    for name, fn in builds:
        jax.block_until_ready(fn(*args))  # compile
        out[f"{name}_s"] = best_time(lambda: jax.block_until_ready(fn(*args)), repeat=repeat)
    out["looped_over_vmapped"] = out["looped_s"] / out["vmapped_s"]
    out["looped_over_grouped"] = out["looped_s"] / out["grouped_s"]
    return out


def main() -> dict:
    load_before = os.getloadavg()[0]  # the 2-core CI machine is shared: context for the times
    record = {
        "what": "one federated round (one local SGD step, noisy upload, FedAvg, head update), tiny BERT, "
                f"b={BATCH}, seq={SEQ}; seconds per round, best of 10; vmapped = one vmap over all N, "
                f"grouped = lax.map over groups of {GROUP} vmapped clusters, looped = Python loop",
        "results": {f"N={n}": time_rounds(n) for n in (3, 16)},
        "load_average_1m_before": load_before,
        "load_average_1m": os.getloadavg()[0],
    }
    path = write_record("federated", record)
    for key, r in record["results"].items():
        print(f"{key}: vmapped {r['vmapped_s'] * 1e3:.2f} ms, grouped {r['grouped_s'] * 1e3:.2f} ms, "
              f"looped {r['looped_s'] * 1e3:.2f} ms; looped/vmapped {r['looped_over_vmapped']:.2f}x, "
              f"looped/grouped {r['looped_over_grouped']:.2f}x")
    print(f"wrote {path}")
    return record


if __name__ == "__main__":
    main()
