"""System-model throughput (docs/design.md §7): latency + energy + Γ, and value + grad w.r.t. p_n.

K = 6, N = 3 (paper-bert). Scenario-decision pairs per second for the jitted, vmapped JAX
model (one device, and sharded over the default backend's devices: one host device per CPU
core on the CPU, every GPU/TPU otherwise), against a vectorised NumPy reference and a
per-configuration Python loop measured in the same run. The batch and the chunk of the chunked
evaluator are sized to the backend (`common.device_sized`): 2^17 pairs in chunks of 8192 on the
CPU, 2^22 pairs in chunks of 2^20 on an accelerator.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count() or 1}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.common import best_time, device_sized, on_accelerator, write_record  # noqa: E402
from benchmarks.system_reference import numpy_evaluate, python_evaluate  # noqa: E402
from collapipe_jax.scenario import Decision, draw_state, scenario_preset  # noqa: E402
from collapipe_jax.system.model import evaluate, to_batch_minor  # noqa: E402
from collapipe_jax.system.sharded import SUMMARY_FIELDS, batch_mesh, chunked_evaluator, chunked_power_grad, evaluate_sharded, to_chunks  # noqa: E402

BATCH = device_sized(cpu=1 << 17, accelerator=1 << 22)
CHUNK = device_sized(cpu=8192, accelerator=1 << 20)


def random_batch(scenario, batch: int, seed: int = 0):
    """Random states (jax.random draws) and random valid decisions, stacked on axis 0."""
    keys = jax.random.split(jax.random.PRNGKey(seed), batch)
    states = jax.vmap(lambda k: draw_state(scenario, k))(keys)
    rng = np.random.default_rng(seed)
    N, K, L = scenario.N, scenario.K, scenario.L
    cuts = np.sort(rng.integers(0, L + 1, size=(batch, N, K - 1)), axis=-1)
    bounds = np.concatenate([np.zeros((batch, N, 1), int), cuts, np.full((batch, N, 1), L)], -1)
    delta = np.diff(bounds, axis=-1)
    rank = np.where(delta > 0, np.cumsum(delta > 0, axis=-1) - 1, -1)
    m = rng.integers(1, scenario.b + 1, size=(batch, N))
    channel = np.argsort(rng.random((batch, scenario.J)), axis=-1)[:, :N]  # N distinct channels, uniformly
    p = rng.uniform(0.05, scenario.P_max_n_w, size=(batch, N))
    decisions = Decision(delta=jnp.asarray(delta, jnp.int32), rank=jnp.asarray(rank, jnp.int32),
                         m=jnp.asarray(m, jnp.int32), channel=jnp.asarray(channel, jnp.int32),
                         p_n_w=jnp.asarray(p, jnp.float32))
    return states, decisions


def main() -> None:
    scenario = scenario_preset("paper-bert")
    states, decisions = random_batch(scenario, BATCH)
    jax.block_until_ready((states, decisions))

    forward = jax.jit(jax.vmap(lambda s, d: evaluate(s, d)))

    def total_latency(p, s, d):
        return jax.vmap(lambda pi, si, di: evaluate(si, di.replace(p_n_w=pi)).tau_round_s)(p, s, d).sum()

    value_grad = jax.jit(jax.value_and_grad(total_latency))

    def run_forward():
        out = forward(states, decisions)
        jax.block_until_ready((out.tau_round_s, out.E_pipe_j, out.E_com_j, out.Gamma))

    # the batch in the trailing (minor) axes, no vmap: how a sweep can lay out its batch
    minor_states, minor_decisions = jax.block_until_ready(to_batch_minor((states, decisions)))
    forward_minor = jax.jit(lambda s, d: evaluate(s, d))

    def run_minor():
        out = forward_minor(minor_states, minor_decisions)
        jax.block_until_ready((out.tau_round_s, out.E_pipe_j, out.E_com_j, out.Gamma))

    def run_grad():
        jax.block_until_ready(value_grad(decisions.p_n_w, states, decisions))

    mesh = batch_mesh()

    def run_sharded():
        out = evaluate_sharded(states, decisions, mesh=mesh)
        jax.block_until_ready((out.tau_round_s, out.E_pipe_j, out.Gamma))

    # compute only: the batch already laid out in chunks on the devices (as a sweep builds it)
    chunked_fn, sharding = chunked_evaluator(mesh, "paper", SUMMARY_FIELDS)
    chunks = jax.block_until_ready(jax.device_put(to_chunks((states, decisions), CHUNK), sharding))

    chunked_grad = chunked_power_grad(mesh, "paper")

    def run_chunked_grad():
        jax.block_until_ready(chunked_grad(chunks))

    def run_chunked():
        jax.block_until_ready(chunked_fn(chunks))  # τ^pipe, τ^up, τ, E^com, E^pipe, Γ

    run_forward(); run_grad(); run_sharded(); run_minor(); run_chunked(); run_chunked_grad()  # noqa: E702  compile
    t_fwd = best_time(run_forward)
    t_minor = best_time(run_minor)
    t_chunked = best_time(run_chunked, repeat=10)
    t_chunked_grad = best_time(run_chunked_grad, repeat=10)
    t_grad = best_time(run_grad)
    t_sharded = best_time(run_sharded)

    st_np = {k: np.asarray(v) for k, v in vars(states).items() if k != "fading"}
    dc_np = {k: np.asarray(v) for k, v in vars(decisions).items()}
    t_numpy = best_time(lambda: numpy_evaluate(st_np, dc_np), repeat=3)

    n_loop = 2000
    st_py = [{k: (v[i].tolist()) for k, v in st_np.items()} for i in range(n_loop)]
    dc_py = [{k: v[i].tolist() for k, v in dc_np.items()} for i in range(n_loop)]
    t_loop = best_time(lambda: [python_evaluate(s, d) for s, d in zip(st_py, dc_py)], repeat=3) / n_loop * BATCH

    rate = lambda t: BATCH / t  # noqa: E731
    record = {
        "batch": BATCH, "chunk": CHUNK, "N": scenario.N, "K": scenario.K, "devices_sharded": mesh.size,
        "jax_forward_per_s": rate(t_fwd),
        "jax_forward_sharded_per_s": rate(t_sharded),
        "jax_forward_batch_minor_per_s": rate(t_minor),
        "jax_forward_chunked_sharded_per_s": rate(t_chunked),
        "jax_value_and_grad_per_s": rate(t_grad),
        "jax_value_and_grad_chunked_sharded_per_s": rate(t_chunked_grad),
        "numpy_per_s": rate(t_numpy),
        "python_loop_per_s": rate(t_loop),
        "ratio_jax_vs_numpy": t_numpy / min(t_fwd, t_sharded, t_minor, t_chunked),
        "ratio_jax_vs_python_loop": t_loop / min(t_fwd, t_sharded, t_minor, t_chunked),
        "ratio_grad_vs_numpy_forward": t_numpy / min(t_grad, t_chunked_grad),
        # docs/design.md §7: the 2-core CPU targets, or the one-H100/H200 targets on an accelerator
        "targets": ({"forward_per_s": 1.5e9, "grad_per_s": 2e9, "vs_numpy": 5, "vs_loop": 500} if on_accelerator()
                    else {"forward_per_s": 3e7, "grad_per_s": 1e7, "vs_numpy": 5, "vs_loop": 500}),
    }
    record["load_average_1min"] = os.getloadavg()[0]  # other work on the machine skews timings
    for key, value in record.items():
        if isinstance(value, float):
            print(f"{key:32s} {value:12.4g}")
    print(f"written to {write_record('system', record)}")


if __name__ == "__main__":
    main()
