"""Channel matching on the device: the subset DP against the Hungarian method (optax), and the
whole device Sub-2 (`solve_resources`) with each, jitted and vmapped over a batch of rounds.

Matching: random costs (a quarter of the pairs forbidden, inf) for (N, J) ∈ {(3, 4), (6, 4),
(16, 8), (12, 12)} at batch 4,096 and 65,536. Sub-2: drawn paper-bert uplinks (LoRA-8 upload,
so that C11' leaves most pairs feasible) with random τ_pipe and queues, drift and paper
objectives, batch 4,096. Times are wall-clock per call after compilation (best of `repeat`),
in the default dtype (float32 unless JAX_ENABLE_X64 is set); the per-round figure divides by
the batch. `default_method` in device/resources.py follows these numbers.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import best_time, write_record

SHAPES = ((3, 4), (6, 4), (16, 8), (12, 12))
BATCHES = (4096, 65536)
SKIP_ABOVE_S = 2.0


def random_costs(B: int, N: int, J: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 10, (B, N, J)).astype(np.float32)
    cost[rng.uniform(size=cost.shape) < 0.25] = np.inf
    return cost, rng.uniform(0, 10, (B, N)).astype(np.float32)


def time_matching(method: str, N: int, J: int, B: int, repeat: int) -> dict:
    import functools

    import jax
    import jax.numpy as jnp

    from collapipe_jax.scheduling.device import resources as dr

    fn = jax.jit(jax.vmap(functools.partial(dr.match_channels, method=method)))
    cost, cost_none = (jnp.asarray(x) for x in random_costs(B, N, J))
    start = time.perf_counter()
    jax.block_until_ready(fn(cost, cost_none))
    compile_s = time.perf_counter() - start
    seconds = best_time(lambda: jax.block_until_ready(fn(cost, cost_none)), repeat=repeat)
    return {"seconds": seconds, "us_per_matching": 1e6 * seconds / B, "compile_s": compile_s}


def sub2_inputs(N: int, J: int, B: int, seed: int = 0):
    import jax
    import jax.numpy as jnp

    from collapipe_jax.scenario import draw_state, round_key, scenario_preset
    from collapipe_jax.scheduling import dssra as ds
    from collapipe_jax.scheduling.device import resources as dr

    scenario = scenario_preset("paper-bert").replace(N=N, J=J, tunable="lora:8")
    ups = [dr.uplink_from_host(ds.round_problem(scenario, draw_state(scenario, round_key(seed, t))).uplink)
           for t in range(16)]
    up = jax.tree_util.tree_map(lambda *x: jnp.tile(jnp.stack(x), (B // 16,) + (1,) * x[0].ndim), *ups)
    rng = np.random.default_rng(seed)
    tau = jnp.asarray(rng.uniform(1.0, 30.0, (B, N)), up.h_n.dtype)
    S = jnp.asarray(rng.integers(1, 7, (B, N)))
    w = jnp.asarray(rng.uniform(0.0, 20.0, (B, N)), up.h_n.dtype)
    return up, tau, S, w


def time_sub2(method: str, lyapunov: str, N: int, J: int, B: int, repeat: int) -> dict:
    import jax

    from collapipe_jax.scheduling.device import resources as dr

    up, tau, S, w = sub2_inputs(N, J, B)

    def one(up, tau, S, w):
        return dr.solve_resources(up, tau, S, w, 10.0, lyapunov, dr.power_upper_bounds(up), method=method)

    fn = jax.jit(jax.vmap(one))
    start = time.perf_counter()
    jax.block_until_ready(fn(up, tau, S, w))
    compile_s = time.perf_counter() - start
    seconds = best_time(lambda: jax.block_until_ready(fn(up, tau, S, w)), repeat=repeat)
    return {"seconds": seconds, "us_per_round": 1e6 * seconds / B, "compile_s": compile_s}


def main(repeat: int = 3) -> dict:
    record = {"note": "jit + vmap over the batch; seconds per call after compilation (best of repeat); "
                      "default dtype; matching costs random with 25% forbidden pairs"}
    matching = {}
    for N, J in SHAPES:
        for B in BATCHES:
            for method in ("dp", "hungarian"):
                small = matching.get(f"N={N} J={J} batch={BATCHES[0]} {method}")
                if small is not None and B > BATCHES[0] and small["seconds"] > SKIP_ABOVE_S:
                    # 16× the batch would take minutes on a shared CPU: record the 4,096 rate only
                    matching[f"N={N} J={J} batch={B} {method}"] = {"skipped": f"batch {BATCHES[0]} took "
                                                                              f"{small['seconds']:.1f} s"}
                    print(f"matching N={N:2d} J={J:2d} batch={B:6d} {method:9s} skipped", flush=True)
                    continue
                row = time_matching(method, N, J, B, repeat)
                matching[f"N={N} J={J} batch={B} {method}"] = row
                print(f"matching N={N:2d} J={J:2d} batch={B:6d} {method:9s} {row['seconds'] * 1e3:10.1f} ms "
                      f"({row['us_per_matching']:8.3f} us each; compile {row['compile_s']:.1f} s)", flush=True)
    record["matching"] = matching
    sub2 = {}
    # (16, 8) with the default method only and one timed call: a call takes tens of seconds here
    for N, J, methods, reps in ((3, 4, ("dp", "hungarian"), repeat), (16, 8, ("hungarian",), 1)):
        for lyapunov in ("drift", "paper"):
            for method in methods:
                row = time_sub2(method, lyapunov, N, J, 4096, reps)
                sub2[f"N={N} J={J} {lyapunov} {method}"] = row
                print(f"solve_resources N={N:2d} J={J:2d} {lyapunov:5s} {method:9s} batch 4096 "
                      f"{row['seconds'] * 1e3:10.1f} ms ({row['us_per_round']:8.2f} us per round; "
                      f"compile {row['compile_s']:.1f} s)", flush=True)
    record["solve_resources"] = sub2
    write_record("matching", record)
    return record


if __name__ == "__main__":
    main()
