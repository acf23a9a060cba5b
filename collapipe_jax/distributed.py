"""Multi-host runs through `jax.distributed`, configured by environment variables.

Every host starts the same command with

  COLLAPIPE_COORDINATOR=HOST:PORT   process 0's address and a free port on it (the same everywhere)
  COLLAPIPE_NUM_PROCESSES=P         how many processes take part
  COLLAPIPE_PROCESS_ID=i            this process, 0 .. P-1

and `initialize_from_env` calls `jax.distributed.initialize` before JAX starts its backends.
Afterwards `jax.devices()` lists every process's devices, and `system.sharded.evaluate_sharded`
spreads a batch over all of them. On CPUs the processes exchange data through gloo
(`jax_cpu_collectives_implementation`); GPUs and TPUs use their own collectives.
"""

from __future__ import annotations

import os

from collapipe_jax.errors import ValidationError

ENV_COORDINATOR = "COLLAPIPE_COORDINATOR"
ENV_NUM_PROCESSES = "COLLAPIPE_NUM_PROCESSES"
ENV_PROCESS_ID = "COLLAPIPE_PROCESS_ID"
# commands whose work is spread over every process's devices (the sharded evaluator)
MULTIHOST_COMMANDS = ("sweep",)


def distributed_config(environ=os.environ) -> dict | None:
    """{coordinator_address, num_processes, process_id} from the environment, or None if unset."""
    coordinator = environ.get(ENV_COORDINATOR, "").strip()
    num, pid = environ.get(ENV_NUM_PROCESSES, "").strip(), environ.get(ENV_PROCESS_ID, "").strip()
    if not coordinator:
        if num or pid:
            raise ValidationError(ENV_COORDINATOR, f"must be set (HOST:PORT) when {ENV_NUM_PROCESSES} or {ENV_PROCESS_ID} is")
        return None
    host, sep, port = coordinator.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(ENV_COORDINATOR, "must be HOST:PORT with a port in 1..65535", coordinator)
    if not num.isdigit() or int(num) < 1:
        raise ValidationError(ENV_NUM_PROCESSES, "must be an integer >= 1", num or None)
    if not pid.isdigit() or int(pid) >= int(num):
        raise ValidationError(ENV_PROCESS_ID, f"must be an integer in 0..{int(num) - 1}", pid or None)
    return {"coordinator_address": coordinator, "num_processes": int(num), "process_id": int(pid)}


def initialize_from_env(command: str | None = None, environ=os.environ) -> bool:
    """`jax.distributed.initialize` from the COLLAPIPE_* variables; False (nothing done) if unset.

    Must run before anything starts a JAX backend. `command`, if given, must be one that
    spreads its work over the processes (`MULTIHOST_COMMANDS`). Calling it again is a no-op.
    """
    config = distributed_config(environ)
    if config is None:
        return False
    if command is not None and command not in MULTIHOST_COMMANDS:
        raise ValidationError(ENV_COORDINATOR, f"multi-host runs support only {list(MULTIHOST_COMMANDS)}, not {command!r}")
    import jax

    if jax.distributed.is_initialized():
        return True
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in environ:  # the user's choice (e.g. mpi) wins
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**config)
    return True
