"""Compiled programs and the process's memory maps (docs/design.md §8).

Every XLA executable compiled for the CPU keeps its machine code in memory maps of its own for
as long as it lives, and JAX's jit caches (and this package's own caches of programs) keep every
executable alive for the life of the process. A long command — `collapipe sweep all` compiles
hundreds of programs — therefore grows the process's map count without bound until Linux's
`vm.max_map_count` (65,530 by default) refuses LLVM a new map and the process crashes (measured
before this module: 337 → 23,900 maps during the `learning-vs-s-m` sweep alone, then
"LLVM compilation error: Cannot allocate memory" and a segmentation fault).

The remedy chosen (by measurement, docs/design.md §8): at safe points between units of work
(after each step of a sweep's progress, between sweeps, between the seeds of `train --seeds`),
`bound_maps()` reads the map count and, once it passes `MAP_BUDGET`, releases every compiled
program: JAX's caches and the package's program caches (`program_cache`) are cleared and
Python's garbage collector returns their maps. Programs needed again are reloaded from the
persistent compilation cache, or compiled anew. Nothing is released while the count is low, so
a command that fits under the budget compiles nothing twice.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import os

# Release compiled programs once the process holds this many maps: a quarter of Linux's default
# vm.max_map_count, so that the largest unit of work measured between two safe points (one
# training sweep's run; a few thousand maps) stays far below the limit.
MAP_BUDGET = 16_384

_CACHES: list = []  # the lru_caches of `program_cache`, cleared by `release_programs`


def program_cache(maxsize: int | None):
    """`functools.lru_cache(maxsize)` for a function that returns a jitted or compiled program:
    the cache is cleared with JAX's by `release_programs`."""

    def wrap(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        _CACHES.append(cached)
        return cached

    return wrap


def map_count() -> int | None:
    """The number of memory maps this process holds (Linux: lines of /proc/self/maps), or None
    where the system does not say."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return None


def map_limit() -> int | None:
    """Linux's per-process limit on memory maps (vm.max_map_count), or None where unknown."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def release_programs() -> None:
    """Drop every compiled program this process holds (JAX's caches and the package's program
    caches), so that their memory maps are returned. Later calls compile or reload them."""
    import jax

    for cache in _CACHES:
        cache.cache_clear()
    jax.clear_caches()
    gc.collect()


def bound_maps(budget: int = MAP_BUDGET) -> bool:
    """Release the compiled programs if the process holds more than `budget` memory maps (call
    it only between units of work, never while tracing). Returns whether it released them."""
    count = map_count()
    if count is None or count <= budget:
        return False
    release_programs()
    return True


# What an XLA compilation that ran out of memory maps (or memory) says: one of these in the error.
_OUT_OF_MAPS = ("Cannot allocate memory", "Failed to materialize symbols", "RESOURCE_EXHAUSTED")


def compile_failure(err: BaseException) -> str | None:
    """The one-line explanation of a JAX runtime error that is a compilation out of memory maps
    or memory, or None for any other error."""
    text = str(err)
    if not any(marker in text for marker in _OUT_OF_MAPS):
        return None
    count, limit = map_count(), map_limit()
    held = f"; this process holds {count:,} memory maps of vm.max_map_count {limit:,}" if count and limit else ""
    return (f"XLA could not compile a program: out of memory or memory maps ({text.strip().splitlines()[0][:160]})"
            f"{held}. Rerun the same command: finished work (sweeps, checkpoints) is reused")


# --------------------------------------------------------------------------- compile time of long CPU commands

# LLVM's optimization level for the CPU programs of `collapipe sweep` (XLA's default is 3). The quick
# sweep is compile-bound (hundreds of programs, most run for seconds): level 1 cut a Toutiao
# training run 43.0 → 37.8 s and a DSSRA batch (128 seeds × 30 rounds) 14.6 → 12.9 s on 2 idle
# cores, with the same floating-point semantics (no fast-math at either level): the DSSRA
# totals came out identical and the training run's accuracy identical, its final loss 1.7e-6
# (relative) apart after 200 AdamW steps — round-off. The test suite compiles at level 1 too.
SWEEP_CPU_OPTIMIZATION_LEVEL = 1
ACCELERATOR_PLUGINS = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin", "libtpu")


def on_cpu_only() -> bool:
    """Whether JAX will run on the CPU alone (no accelerator plugin installed, or JAX_PLATFORMS
    says cpu), judged before JAX starts."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def prefer_fast_cpu_compiles() -> None:
    """Compile the CPU programs at `SWEEP_CPU_OPTIMIZATION_LEVEL` (call before JAX starts; XLA
    reads its flags once). A run whose $XLA_FLAGS names a level keeps it, and nothing changes
    where an accelerator may run the programs."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" in flags or not on_cpu_only():
        return
    os.environ["XLA_FLAGS"] = f"{flags} --xla_backend_optimization_level={SWEEP_CPU_OPTIMIZATION_LEVEL}".strip()


# --------------------------------------------------------------------------- programs kept across processes

# JAX's persistent compilation cache keeps every compiled program (above JAX's compile-time
# threshold, 1 s by default) on disk, keyed by the program, the JAX/XLA versions, the devices
# and the compiler flags, so a later process loads it instead of compiling it again (a DSSRA
# schedule at N = 16 compiles for tens of seconds). Where (docs/usage.md, docs/design.md §8):
# $JAX_COMPILATION_CACHE_DIR (JAX's own variable) wins; else $COLLAPIPE_CACHE/jax; else the
# command's own place (`collapipe sweep`: OUT/.jax-cache, removed with its results); else
# ~/.cache/collapipe_jax/jax.
CACHE_SUBDIR = "jax"


def cache_root() -> str:
    """The package's cache folder: $COLLAPIPE_CACHE, or ~/.cache/collapipe_jax (the same as the
    tokenizer cache's, tasks/vocab.py)."""
    return os.environ.get("COLLAPIPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "collapipe_jax")


def compilation_cache_dir(command_default: str | os.PathLike | None = None) -> str:
    """Where compiled programs are kept (see above): $COLLAPIPE_CACHE/jax when the variable is
    set, else `command_default` when the command has a place of its own, else the per-user
    default."""
    if os.environ.get("COLLAPIPE_CACHE") or command_default is None:
        return os.path.join(cache_root(), CACHE_SUBDIR)
    return os.fspath(command_default)


def cache_dir_problem(path: str) -> str | None:
    """Why `path` cannot hold the compilation cache (it cannot be made, or written), or None. The
    folder is made when missing and probed with a small file, removed at once."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def use_compilation_cache(command_default: str | os.PathLike | None = None) -> str | None:
    """Keep this process's compiled programs in the persistent compilation cache and load those of
    earlier processes (call before the first compilation). Returns the folder, or None when the
    cache is off: JAX's own settings disable it, or the folder cannot be written (one warning
    line on stderr; the programs are then compiled as usual and not kept). A folder set through
    JAX's own configuration ($JAX_COMPILATION_CACHE_DIR) is kept as it is. A damaged entry in
    it is compiled anew and replaced (`_replace_damaged_entries`)."""
    import sys

    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    path = jax.config.jax_compilation_cache_dir
    if path is None:
        path = compilation_cache_dir(command_default)
        if (why := cache_dir_problem(path)) is not None:
            print(f"collapipe: warning: the compilation cache {path} cannot be used ({why}): programs are "
                  f"compiled anew and not kept (set $COLLAPIPE_CACHE to a writable folder)", file=sys.stderr)
            return None
        jax.config.update("jax_compilation_cache_dir", path)
    _replace_damaged_entries()
    return path


_DAMAGED_WARNED: list[str] = []


def _replace_damaged_entries() -> None:
    """A cache entry that cannot be read back (a truncated or overwritten file: its decompression
    or deserialization fails) is removed, so that the program JAX compiles instead is written in
    its place, and one warning line says so (JAX alone would warn at every load and keep the
    damaged file, since it never overwrites an entry). This wraps JAX's reader
    (`jax._src.compilation_cache.get_executable_and_time`, present since JAX 0.4); where a JAX
    version lacks it, JAX's own behaviour stands: a warning, and the program compiled anew."""
    import sys

    try:
        from jax._src import compilation_cache as cc
    except ImportError:
        return
    read = getattr(cc, "get_executable_and_time", None)
    if read is None or getattr(read, "_collapipe_wrapped", False):
        return

    def checked_read(cache_key, *args, **kwargs):
        try:
            return read(cache_key, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 — any failure to load an entry means: compile it
            folder = getattr(cc, "_cache", None)
            folder = getattr(folder, "path", None) or getattr(getattr(folder, "_base_cache", None), "path", None)
            damaged = not isinstance(err, OSError)  # a file that could not be read (permissions, a lock) stays
            for suffix in ("-cache", "-atime"):
                if folder is not None and damaged:
                    try:
                        os.remove(os.path.join(os.fspath(folder), f"{cache_key}{suffix}"))
                    except OSError:
                        pass
            if not _DAMAGED_WARNED:  # one line per process, however many entries are damaged
                _DAMAGED_WARNED.append(cache_key)
                what = "a damaged entry" if damaged else "an entry"
                print(f"collapipe: warning: {what} of the compilation cache {folder} could not be loaded "
                      f"({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}): compiling the "
                      f"program anew{' and replacing the entry' if damaged else ''}", file=sys.stderr)
            return None, None

    checked_read._collapipe_wrapped = True
    cc.get_executable_and_time = checked_read
