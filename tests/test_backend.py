"""The session's backend set-up (conftest.py): pinned matmul precision, host CPU devices."""

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
