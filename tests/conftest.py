"""Test session set-up.

The whole suite runs with 8 host CPU devices so that sharded and pipelined code is exercised
on a real multi-device mesh; single-device behaviour is tested with meshes built from
`jax.devices()[:1]`. XLA reads the flag once, so it must be set before JAX is imported.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
