"""Compiled programs and memory maps (collapipe_jax/programs.py): a long command releases its
compiled programs at safe points, so its memory-map count stays bounded however many programs
it compiles (a `make sweep` in one process once died at Linux's vm.max_map_count)."""

import types

import jax
import jax.numpy as jnp
import pytest

from collapipe_jax import programs
from collapipe_jax.programs import bound_maps, compile_failure, map_count, program_cache, release_programs
from collapipe_jax.sweep.base import Progress

pytestmark = pytest.mark.skipif(map_count() is None, reason="the map count is read from Linux's /proc/self/maps")


@program_cache(maxsize=None)
def distinct_program(i: int):
    """A jitted program of its own for every i (the shape of the package's program caches)."""
    return jax.jit(lambda x: jnp.sin(x * (i + 1)) + jnp.cumsum(x) ** (i % 5 + 1))


def compile_programs(count: int, first: int, after_each) -> list[int]:
    """Compile and run `count` distinct programs, calling `after_each()` after each; the map
    count after every one."""
    counts = []
    for i in range(first, first + count):
        distinct_program(i)(jnp.ones(i % 7 + 2)).block_until_ready()
        after_each()
        counts.append(map_count())
    return counts


def settled_map_count() -> int:
    """The map count after the first compilations' lasting set-up (~100 maps: LLVM, thread
    pools), with no compiled program held."""
    compile_programs(8, 5000, lambda: None)
    release_programs()
    return map_count()


def test_release_returns_the_maps_of_compiled_programs():
    base = settled_map_count()
    grown = compile_programs(30, 0, lambda: None)
    assert grown[-1] > base + 50, (base, grown[-1])  # each program holds maps of its own while it lives
    assert distinct_program.cache_info().currsize == 30
    release_programs()
    assert distinct_program.cache_info().currsize == 0
    assert map_count() < base + 30, (base, map_count())


def test_progress_keeps_the_map_count_bounded(monkeypatch):
    """Through the sweeps' own safe point (each progress step): the count never passes the
    budget by more than one step's maps, over far more programs than the budget holds."""
    base = settled_map_count()
    budget = base + 40
    monkeypatch.setattr(programs, "MAP_BUDGET", budget)
    monkeypatch.setattr(bound_maps, "__defaults__", (budget,))
    bar = types.SimpleNamespace(update=lambda n: None)
    counts = compile_programs(60, 1000, lambda: Progress(bar)(1))  # ~4 maps a program: ~300 without release
    assert max(counts) <= budget + 15, (base, budget, max(counts))
    assert distinct_program.cache_info().currsize < 60  # released along the way
    release_programs()


def test_a_compilation_out_of_maps_is_explained_in_one_line():
    err = RuntimeError("INTERNAL: Failed to materialize symbols: { (<xla_jit_dylib_4>, { fusion.1 }) }\nmore")
    why = compile_failure(err)
    assert "\n" not in why and "memory maps" in why and "Rerun the same command" in why
    assert compile_failure(ValueError("shapes (3,) and (4,) differ")) is None


@pytest.mark.parametrize("env, expected", [
    ({"XLA_FLAGS": "--foo", "JAX_PLATFORMS": "cpu"}, "--foo --xla_backend_optimization_level=1"),
    ({"XLA_FLAGS": "--xla_backend_optimization_level=3", "JAX_PLATFORMS": "cpu"}, "--xla_backend_optimization_level=3"),
    ({"XLA_FLAGS": "", "JAX_PLATFORMS": "cuda"}, ""),  # an accelerator's programs keep XLA's default
])
def test_the_sweep_compiles_cpu_programs_faster_unless_told_otherwise(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    programs.prefer_fast_cpu_compiles()
    assert programs.os.environ["XLA_FLAGS"] == expected
