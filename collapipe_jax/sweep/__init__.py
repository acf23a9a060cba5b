"""`collapipe sweep`: the paper's experiments as CSV + PNG + a summary per sweep (see base.py),
and `REPORT.md` over every finished sweep (report.py)."""

# registration order is the order of `collapipe sweep all`: cheap system-model sweeps first
from collapipe_jax.sweep import system_sweeps  # noqa: F401, I001
from collapipe_jax.sweep import distributions  # noqa: F401
from collapipe_jax.sweep import segments  # noqa: F401
from collapipe_jax.sweep import policies  # noqa: F401
from collapipe_jax.sweep import frameworks  # noqa: F401
from collapipe_jax.sweep import scaling  # noqa: F401
from collapipe_jax.sweep import memory  # noqa: F401
from collapipe_jax.sweep import training  # noqa: F401
from collapipe_jax.sweep.base import DEFAULT_TUNABLE, SCALES, SWEEPS, Sweep, finished_summary, replot, run_sweep

__all__ = ["DEFAULT_TUNABLE", "SCALES", "SWEEPS", "Sweep", "finished_summary", "replot", "run_sweep"]
