"""System model of CollaPipe: latency (Eq. 10, 11, 13, 15, 26, 33), energy (Eq. 12, 14, 16)
and convergence gap (Eq. 25, 28). Pure `jnp`, imports nothing from training."""

from collapipe_jax.system.model import Metrics, evaluate, round_latency_of_power  # noqa: F401
