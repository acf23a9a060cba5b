"""Fixed-length numpy batches with padding masks, and splits of a training set over clusters.

Shapes are static (seq_len, batch b) so one jitted step serves every round; what varies per
cluster is data. Round batches are a pure function of (seed, cluster, round): a resumed run
draws exactly the batches an uninterrupted one would, without saving sampler state.
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.errors import ValidationError
from collapipe_jax.options import MEMORY_SHARE, memory_budget
from collapipe_jax.tasks.vocab import PAD


def pad_rows(rows: list[list[int]], length: int, pad: int = PAD) -> tuple[np.ndarray, np.ndarray]:
    """Token rows truncated / right-padded to `length`: (ids int32 [D, length], mask bool [D, length])."""
    ids = np.full((len(rows), length), pad, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=bool)
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return ids, mask


def iid_split(n_examples: int, n_clusters: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation cut into N near-equal parts (sizes differ by at most one)."""
    _check_clusters(n_examples, n_clusters)
    perm = np.random.default_rng(seed).permutation(n_examples)
    return [np.sort(part) for part in np.array_split(perm, n_clusters)]


def dirichlet_split(labels: np.ndarray, n_clusters: int, alpha: float, seed: int, max_tries: int = 100) -> list[np.ndarray]:
    """Non-IID split: for every label c, its examples are dealt to the clusters with proportions
    q_c ~ Dirichlet(alpha·1_N) (small alpha → each cluster sees few labels). Redrawn until every
    cluster holds at least one example; a ValidationError if that fails `max_tries` times."""
    labels = np.asarray(labels)
    _check_clusters(len(labels), n_clusters)
    if not alpha > 0:
        raise ValidationError("dirichlet_alpha", "must be > 0", alpha)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clusters)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            q = rng.dirichlet(np.full(n_clusters, alpha))
            cuts = np.round(np.cumsum(q)[:-1] * len(idx)).astype(int)
            for n, chunk in enumerate(np.split(idx, cuts)):
                parts[n].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) > 0:
            return out
    raise ValidationError("dirichlet_alpha", f"left a cluster empty in {max_tries} draws; raise alpha or use more examples", alpha)


def split_clusters(n_examples: int, n_clusters: int, *, seed: int, labels=None, non_iid: bool = False, alpha: float = 0.5):
    """IID split, or the Dirichlet label split when non_iid (labels required)."""
    if not non_iid:
        return iid_split(n_examples, n_clusters, seed)
    if labels is None:
        raise ValidationError("labels", "a non-IID split needs per-example labels", None)
    return dirichlet_split(labels, n_clusters, alpha, seed)


def cluster_stream(idx: np.ndarray, cluster: int, positions: np.ndarray, seed: int) -> np.ndarray:
    """Examples at `positions` of cluster n's stream: it walks through its D_n examples in
    epochs, epoch e in the permutation seeded by (seed, n, e); position p is example
    perm_e[p mod D_n], e = p // D_n."""
    d = len(idx)
    out = np.empty(positions.shape, dtype=np.int64)
    epochs = positions // d
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, cluster, int(e)]).permutation(d)
        sel = epochs == e
        out[sel] = idx[perm[positions[sel] % d]]
    return out


def round_indices(cluster_indices: list[np.ndarray], batch: int, round_idx: int, seed: int) -> np.ndarray:
    """Global example indices [N, batch] that each cluster trains on in round `round_idx`
    (positions round·b .. round·b + b − 1 of each cluster's stream)."""
    if batch < 1:
        raise ValidationError("batch", "must be >= 1", batch)
    pos = round_idx * batch + np.arange(batch)
    return np.stack([cluster_stream(idx, n, pos, seed) for n, idx in enumerate(cluster_indices)])


def local_batches(cluster_indices: list[np.ndarray], batch: int, steps, round_idx: int, seed: int) -> np.ndarray:
    """Global example indices [N, E, b] of the round's E = max_n E_n local steps: cluster n takes
    positions round·E_n·b .. of its stream for its E_n steps (a round of E_n steps consumes
    E_n·b examples, so a resumed run continues the same stream); rows past E_n, which the
    round masks, repeat its first batch."""
    steps = [int(e) for e in steps]
    if batch < 1 or min(steps) < 1:
        raise ValidationError("batch", "batch and local steps must be >= 1", (batch, steps))
    out = np.empty((len(cluster_indices), max(steps), batch), dtype=np.int64)
    for n, (idx, e_n) in enumerate(zip(cluster_indices, steps)):
        pos = round_idx * e_n * batch + np.arange(e_n * batch)
        out[n, :e_n] = cluster_stream(idx, n, pos, seed).reshape(e_n, batch)
        out[n, e_n:] = out[n, 0]
    return out


def check_local_work(steps, batch: int, arrays: dict[str, np.ndarray]) -> None:
    """Size guard of a round's input: `local_batches` and `gather` hold N x E x b example
    indices (int64) and rows of every array, which must fit the memory budget."""
    steps = np.asarray(steps)
    row = 8 + sum(v[0].nbytes if len(v) else v.itemsize for v in arrays.values())
    need = int(steps.size) * int(steps.max()) * int(batch) * row
    if need > memory_budget():
        raise ValidationError("local-steps", f"a round's input of N={steps.size} clusters x E={int(steps.max())} local "
                                             f"steps x b={batch} samples needs {need / 1e9:.3g} GB, more than the limit "
                                             f"of {memory_budget() / 1e9:.3g} GB (1/{MEMORY_SHARE} of this machine's "
                                             f"memory)", int(steps.max()))


def gather(arrays: dict[str, np.ndarray], indices: np.ndarray) -> dict[str, np.ndarray]:
    """Every array indexed on its leading axis by `indices` (any shape, e.g. [N, b])."""
    return {k: v[indices] for k, v in arrays.items()}


def eval_batches(arrays: dict[str, np.ndarray], batch: int):
    """Consecutive fixed-size batches over a whole split; the last is padded by repeating row 0.
    Yields (batch dict, number of real rows)."""
    d = len(next(iter(arrays.values())))
    for start in range(0, d, batch):
        idx = np.arange(start, start + batch)
        real = int(min(batch, d - start))
        idx[real:] = 0
        yield gather(arrays, idx), real


def _check_clusters(n_examples: int, n_clusters: int):
    if not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValidationError("n_clusters", "must be a positive integer", n_clusters)
    if n_examples < n_clusters:
        raise ValidationError("n_clusters", f"must be <= the number of training examples ({n_examples})", n_clusters)
