"""collapipe_jax: JAX simulator, trainer and scheduler for CollaPipe (Chen et al., 2025).

The Python API (docs/api.md): scenarios (`Scenario`, `scenario_preset`, `load_scenario`),
one round's draw and decision (`draw_state`, `round_key`, `Decision`, `make_decision`,
`default_decision`), the system model (`evaluate`, `round_latency_of_power`), schedules over
seeds (`ScheduleConfig`, `run_schedule`, `run_schedule_seeds`), paired comparisons (`compare`)
and a user's own rule (`RoundInputs`, `index_order`, `even_delta`, `load_policy`;
docs/extending.md). The names are imported on first use, so `import collapipe_jax` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name → the module that defines it (imported on first access: PEP 562)
_EXPORTS = {
    "Scenario": "collapipe_jax.scenario",
    "scenario_preset": "collapipe_jax.scenario",
    "load_scenario": "collapipe_jax.scenario",
    "SystemState": "collapipe_jax.scenario",
    "draw_state": "collapipe_jax.scenario",
    "mean_state": "collapipe_jax.scenario",
    "round_key": "collapipe_jax.scenario",
    "Decision": "collapipe_jax.scenario",
    "make_decision": "collapipe_jax.scenario",
    "default_decision": "collapipe_jax.scenario",
    "evaluate": "collapipe_jax.system",
    "Metrics": "collapipe_jax.system",
    "round_latency_of_power": "collapipe_jax.system",
    "ScheduleConfig": "collapipe_jax.scheduling.schedule",
    "run_schedule": "collapipe_jax.scheduling.schedule",
    "run_schedule_seeds": "collapipe_jax.scheduling.schedule",
    "RoundInputs": "collapipe_jax.scheduling.user_policy",
    "index_order": "collapipe_jax.scheduling.user_policy",
    "even_delta": "collapipe_jax.scheduling.user_policy",
    "load_policy": "collapipe_jax.scheduling.user_policy",
    "compare": "collapipe_jax.comparison",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'collapipe_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
