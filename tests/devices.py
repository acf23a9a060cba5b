"""Devices for tests that need a fixed number of them.

conftest.py gives every session 8 host CPU devices, whatever the default backend: meshes whose
size a test asserts are built from those, so the same assertions hold when a GPU or TPU is the
default backend (`make test-gpu`). On the CPU they are `jax.devices()` itself.
"""

import jax


def host_devices(n: int | None = None) -> list:
    """The first n (default all) host CPU devices; fails loudly if there are fewer."""
    devices = jax.devices("cpu")
    n = len(devices) if n is None else n
    assert len(devices) >= n, f"need {n} host CPU devices, have {len(devices)} (XLA_FLAGS overridden?)"
    return devices[:n]


def default_devices_dividing(n: int) -> list:
    """The largest prefix of the default backend's devices whose length divides n."""
    devices = jax.devices()
    return devices[: max(k for k in range(1, min(n, len(devices)) + 1) if n % k == 0)]
