"""Evaluate a large batch of (state, decision) pairs sharded over every JAX device.

The batch axis is split over a 1-D mesh of all devices with `NamedSharding` (inside,
`jax.shard_map`); the batch is padded (repeating its last element) to whole chunks per device
and the padding is cut off the result. The same code runs on one CPU, on `--xla_force_host_platform_device_count`
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


def to_chunks(tree, chunk: int):
    """Leading batch axis B (a multiple of `chunk`) → [B / chunk, ..., chunk].

    Each chunk keeps its configurations in the trailing (minor) axis, so one chunk's
    intermediates stay in cache and XLA vectorises across configurations.
    """
    def leaf(x):
        x = x.reshape((x.shape[0] // chunk, chunk) + x.shape[1:])
        return jnp.moveaxis(x, 1, -1)

    return jax.tree.map(leaf, tree)


def from_chunks(tree):
    """Inverse of `to_chunks` on the outputs: [n_chunks, ..., chunk] → [n_chunks · chunk, ...]."""
    def leaf(x):
        x = jnp.moveaxis(x, -1, 1)
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    return jax.tree.map(leaf, tree)


SUMMARY_FIELDS = ("tau_pipe_s", "tau_up_s", "tau_round_s", "E_com_j", "E_pipe_j", "Gamma")


@functools.lru_cache(maxsize=None)
def chunked_evaluator(mesh: Mesh, variant: str, fields: tuple[str, ...] | None = None):
    """jit(shard_map(lax.map(evaluate over one chunk))): chunks split over the mesh's devices.

    `fields`: return only these `Metrics` fields (a dict), e.g. `SUMMARY_FIELDS` — a sweep that
    needs latency, energy and Γ per cluster then never writes the per-device arrays out.
    """
    spec = PartitionSpec(BATCH_AXIS)

    def one_chunk(c):
        metrics = evaluate(c[0], c[1], variant)
        return metrics if fields is None else {name: getattr(metrics, name) for name in fields}

    def local(chunks):
        return jax.lax.map(one_chunk, chunks)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec)), NamedSharding(mesh, spec)


def evaluate_sharded(states, decisions, variant: str = "paper", mesh: Mesh | None = None,
                     chunk: int = 8192, process_local: bool = False):
    """`evaluate` on every pair of a batch (leading axis B), the batch sharded over `mesh`.

    `states`, `decisions`: a `SystemState` and a `Decision` whose leaves have a leading batch
    axis B. The batch is padded to whole chunks per device, cut into chunks of at most `chunk`
    configurations, and each device maps `evaluate` over its chunks. Returns `Metrics` with
    leading axis B (the global batch when `process_local`, where each process passed its slice).
    """
    mesh = batch_mesh() if mesh is None else mesh
    n_dev = mesh.local_mesh.size if process_local else mesh.size
    size = jax.tree.leaves(states)[0].shape[0]
    chunk = max(1, min(chunk, -(-size // n_dev)))
    (states, decisions), size = _pad_to((states, decisions), n_dev * chunk)
    fn, sharding = chunked_evaluator(mesh, variant)
    chunks = to_chunks((states, decisions), chunk)
    if process_local and jax.process_count() > 1:
        put = lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x))  # noqa: E731
        out = from_chunks(multihost_utils.process_allgather(fn(jax.tree.map(put, chunks)), tiled=True))
        # every process padded its own slice: drop each slice's padding
        per = jax.tree.leaves(states)[0].shape[0]
        keep = np.concatenate([np.arange(p * per, p * per + size) for p in range(jax.process_count())])
        return jax.tree.map(lambda x: x[keep], out)
    out = from_chunks(fn(jax.device_put(chunks, sharding)))
    return jax.tree.map(lambda x: x[:size], out)


@functools.lru_cache(maxsize=None)
def chunked_power_grad(mesh: Mesh, variant: str):
    """Like `chunked_evaluator`, returning (τ(t), ∂τ(t)/∂p_n) per configuration.

    Configurations are independent, so the gradient of Σ_configs τ w.r.t. the batch of p_n
    is every configuration's own gradient.
    """
    spec = PartitionSpec(BATCH_AXIS)

    def one_chunk(c):
        state, decision = c

        def total(p):
            tau = evaluate(state, decision.replace(p_n_w=p), variant).tau_round_s
            return jnp.sum(tau), tau

        grad, tau = jax.grad(total, has_aux=True)(decision.p_n_w)
        return tau, grad

    def local(chunks):
        return jax.lax.map(one_chunk, chunks)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec))
