"""The seeded sweeps' runner (`sweep/seeded.py`): seeds run in calls of one fixed block, so that a
rule compiles once per shape whatever the number of seeds (256, 768 with three V values tiled, 64),
and the blocks give what one call over the whole batch gives.

A compile is counted with JAX's own monitoring event (the backend compile of a program), not
by timing; the rule is a cheap fixed one on a short schedule so that the compiles stay seconds.
"""

from __future__ import annotations

import jax
import numpy as np
from jax import monitoring

from collapipe_jax.scenario import scenario_preset
from collapipe_jax.scheduling.device.problem import EngineConfig
from collapipe_jax.scheduling.device.run import run_schedules
from collapipe_jax.sweep import seeded

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[str] = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: _compiles.append(event) if event == COMPILE_EVENT else None)

ROUNDS = 2
POLICY = "vanilla-fl"


def scenario():
    return scenario_preset("paper-transformer").replace(tunable="lora:8")


def compiles_of(fn) -> tuple[object, int]:
    before = len(_compiles)
    out = fn()
    return out, len(_compiles) - before


def test_block_holds_one_chunk_per_device():
    assert seeded.block_of(768, chunk=64, devices=1) == (64, 64)
    assert seeded.block_of(768, chunk=64, devices=8) == (512, 64)
    # a small batch on a large chunk: the power of two that holds it per device
    assert seeded.block_of(256, chunk=8192, devices=1) == (256, 256)
    assert seeded.block_of(300, chunk=8192, devices=1) == (512, 512)
    assert seeded.block_of(300, chunk=8192, devices=8) == (64 * 8, 64)
    assert seeded.block_of(1, chunk=64, devices=8) == (8, 1)


def test_a_rule_compiles_once_for_any_number_of_seeds_and_blocks_equal_one_call():
    s = scenario()
    devices = len(jax.devices())
    block, _ = seeded.block_of(1, chunk=1)
    assert block == devices
    seeds = np.arange(devices + 3)  # two blocks, the last one padded
    V = np.linspace(0.01, 100.0, seeds.size)
    blocked = seeded.run_seeds(s, POLICY, seeds, ROUNDS, V=V, chunk=1)  # compiles (or finds) the one program
    for count in (1, 3 * devices):
        out, n = compiles_of(lambda: seeded.run_seeds(s, POLICY, np.arange(count), ROUNDS, V=7.0, chunk=1))
        assert n == 0, f"{count} seeds compiled {n} programs"
        assert out["totals"]["total_latency_s"].shape == (count,)
    # one call over the whole batch: the independent computation, and a program of another shape
    # (two chunks per device), which the counter sees compiled
    whole, n = compiles_of(lambda: run_schedules(s, POLICY, seeds, ROUNDS, EngineConfig.of(s), V=V,
                                                 per_round=seeded.KEEP, dtype=seeded.DTYPE, chunk=1))
    assert n >= 1
    assert jax.tree.structure(blocked) == jax.tree.structure(whole)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(blocked), jax.tree.leaves(whole)):
        assert a.shape[0] == seeds.size, path
        np.testing.assert_array_equal(a, b, err_msg=str(path))
