"""The session's set-up (conftest.py): pinned matmul precision, host CPU devices, one compilation cache."""

import os

import jax
import jax.numpy as jnp
import numpy as np


def test_matmul_precision_is_pinned_to_full_f32():
    # TF32 (GPU default) or bf16 passes (TPU default) round the inputs to 10 or 7 mantissa bits:
    # relative errors of 1e-3 to 1e-2 on this product; full f32 stays near 1e-6
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 256)), rng.standard_normal((256, 256))
    got = np.asarray(jax.jit(jnp.matmul)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)), np.float64)
    exact = a.astype(np.float32).astype(np.float64) @ b.astype(np.float32).astype(np.float64)
    assert np.max(np.abs(got - exact)) / np.max(np.abs(exact)) < 1e-5


def test_host_cpu_devices_beside_the_default_backend():
    assert len(jax.devices("cpu")) == 8
    backend = os.environ.get("COLLAPIPE_TEST_BACKEND", "cpu").lower()
    if backend == "cpu":
        assert jax.default_backend() == "cpu"
    else:  # make test-gpu: the accelerator is the default, the host devices are still there
        assert jax.default_backend() != "cpu"


def test_the_session_shares_one_compilation_cache():
    """conftest.py: JAX caches compiled programs in the directory the xdist workers and the
    subprocesses inherit through $JAX_COMPILATION_CACHE_DIR."""
    path = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert path and jax.config.jax_compilation_cache_dir == path
    before = set(os.listdir(path)) if os.path.isdir(path) else set()  # JAX makes a missing one
    scale = 1.0 + sum(path.encode()) % 997  # a program new to this directory: the constant is in its key
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # this program compiles fast
    try:
        jax.jit(lambda x: jnp.sin(x) * scale)(jnp.ones((7, 13), jnp.float32)).block_until_ready()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)
    assert set(os.listdir(path)) - before, "nothing was written to the session's compilation cache"
