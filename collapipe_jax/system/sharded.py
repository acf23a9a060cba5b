"""Evaluate a large batch of (state, decision) pairs sharded over every JAX device.

The batch axis is split over a 1-D mesh of all devices with `NamedSharding` (inside,
`jax.shard_map`); the batch is padded (repeating its last element) to whole chunks per device
and the padding is cut off the result. The same code runs on one CPU, on `--xla_force_host_platform_device_count`
host devices, on a GPU/TPU mesh and, after `jax.distributed.initialize()` (see
`collapipe_jax.distributed`), across processes and hosts: there every process either passes the
whole batch, or its own slice of it (`process_local=True`, slices of any sizes), and gets the
whole result back.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from collapipe_jax.errors import ValidationError
from collapipe_jax.programs import program_cache
from collapipe_jax.system.model import evaluate

BATCH_AXIS = "batch"


def stack(trees):
    """A list of pytrees with equal structure → one pytree with a leading batch axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def batch_mesh(devices=None) -> Mesh:
    """1-D mesh over `devices`; by default every process's devices, process by process, so
    that process p's part of a batch lands on process p's devices."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def _batch_size(tree) -> int:
    return jax.tree.leaves(tree)[0].shape[0]


def _pad_rows(tree, rows: int):
    """Pad the leading axis to `rows` by repeating the last element (zeros if there is none:
    their results are cut off like any padding)."""
    pad = rows - _batch_size(tree)

    def pad_leaf(x):
        if pad == 0:
            return x
        fill = jnp.repeat(x[-1:], pad, axis=0) if x.shape[0] else jnp.zeros((pad,) + x.shape[1:], x.dtype)
        return jnp.concatenate([x, fill], axis=0)

    return jax.tree.map(pad_leaf, tree)


def _pad_to(tree, multiple: int):
    size = _batch_size(tree)
    return _pad_rows(tree, -(-size // multiple) * multiple), size


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


def map_chunks(per_chunk, mesh: Mesh, n_shared: int = 0, check_vma: bool = True):
    """shard_map(lax.map(per_chunk)) over the leading (chunk) axis of the first argument, split
    over the mesh's devices; the next `n_shared` arguments reach every chunk whole. Not jitted:
    the building block of `chunked_evaluator`, `chunked_power_grad` and `chunked_reduction`.
    `check_vma=False` for a per_chunk whose loops start from constants (the device engine's
    solvers): the chunks never communicate, so there is nothing for the check to protect."""
    spec = PartitionSpec(BATCH_AXIS)

    def local(chunks, *shared):
        return jax.lax.map(lambda c: per_chunk(c, *shared), chunks)

    return jax.shard_map(local, mesh=mesh, in_specs=(spec,) + (PartitionSpec(),) * n_shared, out_specs=spec,
                         check_vma=check_vma)


@program_cache(maxsize=None)
def chunked_evaluator(mesh: Mesh, variant: str, fields: tuple[str, ...] | None = None):
    """jit(shard_map(lax.map(evaluate over one chunk))): chunks split over the mesh's devices.

    `fields`: return only these `Metrics` fields (a dict), e.g. `SUMMARY_FIELDS` — a sweep that
    needs latency, energy and Γ per cluster then never writes the per-device arrays out.
    """
    def one_chunk(c):
        metrics = evaluate(c[0], c[1], variant)
        return metrics if fields is None else {name: getattr(metrics, name) for name in fields}

    return jax.jit(map_chunks(one_chunk, mesh)), NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def chunked_reduction(per_chunk, mesh: Mesh, n_shared: int = 0, check_vma: bool = True):
    """jit: `per_chunk(chunk, *shared) -> (sums, maxima)` (two pytrees of arrays) on every chunk,
    the sums added and the maxima maximised over all chunks of all devices (a minimum is the
    maximum of −x).

    For sweeps that draw their pairs on the devices and keep only statistics: nothing of size
    B leaves a device, and the result is replicated, so every process of a multi-host run can
    read it. Inputs must be global arrays (`global_array`): the chunks split over the mesh,
    `shared` replicated.
    """
    def local(chunks, *shared):
        sums, maxima = jax.lax.map(lambda c: per_chunk(c, *shared), chunks)
        sums = jax.tree.map(lambda x: jax.lax.psum(jnp.sum(x, axis=0), BATCH_AXIS), sums)
        maxima = jax.tree.map(lambda x: jax.lax.pmax(jnp.max(x, axis=0), BATCH_AXIS), maxima)
        return sums, maxima

    spec = PartitionSpec(BATCH_AXIS)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) + (PartitionSpec(),) * n_shared,
                                 out_specs=PartitionSpec(), check_vma=check_vma))


def global_array(x, sharding: NamedSharding) -> jax.Array:
    """A host array (the same on every process) as a global array with `sharding`: each process
    fills only its own devices' shards, so it works on one process and across hosts alike."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def evaluate_sharded(states, decisions, variant: str = "paper", mesh: Mesh | None = None,
                     chunk: int = 8192, process_local: bool = False):
    """`evaluate` on every pair of a batch (leading axis B), the batch sharded over `mesh`.

    `states`, `decisions`: a `SystemState` and a `Decision` whose leaves have a leading batch
    axis B. The batch is padded to whole chunks per device, cut into chunks of at most `chunk`
    configurations, and each device maps `evaluate` over its chunks. Returns `Metrics` with
    leading axis B.

    Across processes (a mesh over several processes' devices, after `jax.distributed`): with
    `process_local=False` every process passes the same whole batch and evaluates its share;
    with `process_local=True` each passes its own slice (sizes may differ, even be 0) and the
    result is the slices' concatenation in process order. Either way every process gets the
    whole result.
    """
    mesh = batch_mesh() if mesh is None else mesh
    fn, sharding = chunked_evaluator(mesh, variant)
    return run_chunked(fn, sharding, mesh, (states, decisions), chunk, process_local)


def power_grad_sharded(states, decisions, variant: str = "paper", mesh: Mesh | None = None,
                       chunk: int = 8192, process_local: bool = False):
    """(τ(t) [B], ∂τ(t)/∂p_n [B, N]) of every pair of a batch through `chunked_power_grad`,
    sharded and across processes exactly like `evaluate_sharded`."""
    mesh = batch_mesh() if mesh is None else mesh
    fn = chunked_power_grad(mesh, variant)
    return run_chunked(fn, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)), mesh, (states, decisions), chunk,
                        process_local)


def run_chunked(fn, sharding, mesh: Mesh, batch, chunk: int, process_local: bool = False):
    """Pad a batch (leading axis B) to whole chunks per device, run the chunked `fn` (a jitted
    `map_chunks`) and cut the result back to B rows; across processes through
    `_evaluate_across_processes`. The one path of every sharded batch (system model, device
    schedules)."""
    if mesh.is_multi_process:
        return _evaluate_across_processes(fn, sharding, mesh, batch, chunk, process_local)
    if process_local and jax.process_count() > 1:
        raise ValidationError("mesh", "process_local=True needs a mesh over every process's devices (batch_mesh())")
    n_dev = mesh.size
    size = _batch_size(batch)
    chunk = max(1, min(chunk, -(-size // n_dev)))
    batch, size = _pad_to(batch, n_dev * chunk)
    out = from_chunks(fn(jax.device_put(to_chunks(batch, chunk), sharding)))
    return jax.tree.map(lambda x: x[:size], out)


def _evaluate_across_processes(fn, sharding, mesh: Mesh, batch, chunk: int, process_local: bool):
    """The multi-process path of `run_chunked` (`evaluate_sharded`, `power_grad_sharded`): every
    process feeds an equal number of rows (its part, padded) to its own devices, and all-gathers
    the result."""
    n_proc = jax.process_count()
    owners = [d.process_index for d in mesh.devices.flat]
    n_local = mesh.local_mesh.size
    if owners != sorted(owners) or len(set(owners)) != n_proc or n_local * n_proc != mesh.size:
        raise ValidationError("mesh", "must hold every process's devices, process by process, "
                                      "as many per process (batch_mesh() does)", None)
    size = _batch_size(batch)
    if process_local:  # the slices' sizes, known to every process
        sizes = np.asarray(multihost_utils.process_allgather(np.int32(size))).reshape(n_proc)
        need = int(sizes.max())
    else:
        need = -(-size // n_proc)
    chunk = max(1, min(chunk, -(-need // n_local)))
    per = -(-need // (n_local * chunk)) * n_local * chunk  # rows per process, equal everywhere
    if process_local:
        local = _pad_rows(batch, per)
        keep = np.concatenate([p * per + np.arange(n) for p, n in enumerate(sizes)])
    else:  # process p evaluates rows [p·per, (p+1)·per) of the padded whole batch
        me = jax.process_index()
        local = jax.tree.map(lambda x: x[me * per : (me + 1) * per], _pad_rows(batch, n_proc * per))
        keep = np.arange(size)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (n_proc * x.shape[0],) + x.shape[1:])

    out = fn(jax.tree.map(put, to_chunks(local, chunk)))
    out = from_chunks(multihost_utils.process_allgather(out, tiled=True))
    return jax.tree.map(lambda x: x[keep], out)


@program_cache(maxsize=None)
def chunked_power_grad(mesh: Mesh, variant: str):
    """Like `chunked_evaluator`, returning (τ(t), ∂τ(t)/∂p_n) per configuration.

    Configurations are independent, so the gradient of Σ_configs τ w.r.t. the batch of p_n
    is every configuration's own gradient.
    """
    def one_chunk(c):
        state, decision = c

        def total(p):
            tau = evaluate(state, decision.replace(p_n_w=p), variant).tau_round_s
            return jnp.sum(tau), tau

        grad, tau = jax.grad(total, has_aux=True)(decision.p_n_w)
        return tau, grad

    return jax.jit(map_chunks(one_chunk, mesh))
