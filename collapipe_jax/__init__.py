"""collapipe_jax: JAX simulator, trainer and scheduler for CollaPipe (Chen et al., 2025)."""

__version__ = "0.1.0"
