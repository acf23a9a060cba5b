"""Test session set-up: backend, host devices and matmul precision.

By default the suite runs on the CPU with 8 host CPU devices, so that sharded and pipelined
code is exercised on a real multi-device mesh. `COLLAPIPE_TEST_BACKEND=cuda` (`make test-gpu`;
`tpu` or `rocm` alike) makes that accelerator JAX's default backend and keeps the 8 host CPU
devices beside it: tests that need a fixed number of devices build their meshes from
`devices.host_devices()`, everything else runs on the accelerator. XLA reads its flags once,
so all of this is set before JAX is imported.

Tests compare two floating-point paths (pipelined vs unpipelined, vmapped vs looped, JAX vs
NumPy); on GPUs JAX's default f32 matmul is TF32 (about 1e-3 relative) and on TPUs bf16 passes,
so the whole session pins matmuls to full f32 ("highest"). It is a no-op on the CPU.

The suite is compile-bound, and many of its programs are compiled more than once: by both
pytest-xdist workers, by the command-line and notebook subprocesses, and by tests that jit
the same function anew. The session therefore shares one JAX compilation cache, a fresh
temporary directory (so every run compiles each program at least once) that the xdist
workers and the subprocesses inherit through $JAX_COMPILATION_CACHE_DIR and that the process
which made it removes at the end. A run that sets $JAX_COMPILATION_CACHE_DIR itself keeps it.

For the same reason the CPU programs are compiled at LLVM optimization level 1 instead of XLA's
default 3: the whole suite took 7 min 15 s instead of 8 min 27 s on 2 idle cores (one run each),
and the floating-point semantics stay (no fast-math at either level; the suite passes at both,
and the two-process test compares this session's programs with its subprocesses', which run at
XLA's default, to rtol 1e-5). Level 0 would save more but is not used: it moved a vmapped-round
comparison by 2e-5 relative where levels 1 and 3 agree to 6e-8. A run whose $XLA_FLAGS names a
level keeps it (`XLA_FLAGS=--xla_backend_optimization_level=3 make test` tests XLA's default).
"""

import os
import shutil
import tempfile

HOST_DEVICES = 8
CPU_OPTIMIZATION_LEVEL = 1  # LLVM's, for the CPU programs; XLA's default is 3 (see above)
BACKEND = os.environ.get("COLLAPIPE_TEST_BACKEND", "cpu").strip().lower()

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
    _flags = f"{_flags} --xla_force_host_platform_device_count={HOST_DEVICES}".strip()
if BACKEND == "cpu" and "--xla_backend_optimization_level" not in _flags:
    _flags = f"{_flags} --xla_backend_optimization_level={CPU_OPTIMIZATION_LEVEL}"
os.environ["XLA_FLAGS"] = _flags
if BACKEND == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
else:
    os.environ["JAX_PLATFORMS"] = f"{BACKEND},cpu"  # the accelerator first: the default backend
    # tests start JAX subprocesses (CLI, two-process runs): each would otherwise grab 75% of
    # the GPU's memory at start-up and the second one would fail
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"  # for subprocesses

_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the xdist workers inherit the controller's
    _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="collapipe-test-jax-cache-")
    # cache every program but single eager operations, not only those that took a second (JAX's default)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_report_header(config):
    devices = jax.devices()
    return (f"jax {jax.__version__}: default backend {jax.default_backend()} "
            f"({len(devices)} x {devices[0].device_kind}), {len(jax.devices('cpu'))} host CPU devices, "
            f"matmul precision {jax.config.jax_default_matmul_precision}")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
