"""Evaluate a large batch of (state, decision) pairs sharded over every JAX device.

The batch axis is split over a 1-D mesh of all devices with `NamedSharding`; the batch is
padded (repeating its last element) to a multiple of the device count and the padding is
cut off the result. The same code runs on one CPU, on `--xla_force_host_platform_device_count`
host devices, on a GPU/TPU mesh and, after `jax.distributed.initialize()`, across hosts: there
each process passes its own slice of the batch (`process_local=True`) and gets the whole
result back.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from collapipe_jax.system.model import evaluate

BATCH_AXIS = "batch"


def stack(trees):
    """A list of pytrees with equal structure → one pytree with a leading batch axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def batch_mesh(devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def _pad_to(tree, multiple: int):
    size = jax.tree.leaves(tree)[0].shape[0]
    pad = (-size) % multiple
    if pad == 0:
        return tree, size

    def pad_leaf(x):
        return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)

    return jax.tree.map(pad_leaf, tree), size


@functools.lru_cache(maxsize=None)
def _sharded_fn(mesh: Mesh, variant: str):
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    return jax.jit(jax.vmap(lambda s, d: evaluate(s, d, variant)), out_shardings=sharding), sharding


def evaluate_sharded(states, decisions, variant: str = "paper", mesh: Mesh | None = None,
                     process_local: bool = False):
    """`jax.vmap(evaluate)` over a leading batch axis, the batch sharded over `mesh`.

    `states`, `decisions`: a `SystemState` and a `Decision` whose leaves have a leading batch
    axis B. Returns `Metrics` with leading axis B (the global batch when `process_local`).
    """
    mesh = batch_mesh() if mesh is None else mesh
    fn, sharding = _sharded_fn(mesh, variant)
    n_local = mesh.local_mesh.size if process_local else mesh.size
    (states, decisions), size = _pad_to((states, decisions), n_local)
    if process_local and jax.process_count() > 1:
        put = lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x))  # noqa: E731
        states, decisions = jax.tree.map(put, (states, decisions))
        out = fn(states, decisions)
        out = multihost_utils.process_allgather(out, tiled=True)
        # every process padded its own slice: drop each slice's padding
        per = size + (-size) % n_local
        keep = np.concatenate([np.arange(p * per, p * per + size) for p in range(jax.process_count())])
        return jax.tree.map(lambda x: x[keep], out)
    states, decisions = jax.device_put((states, decisions), sharding)
    out = fn(states, decisions)
    return jax.tree.map(lambda x: x[:size], out)
