"""Multi-host runs through `jax.distributed`, configured by environment variables.

Every host starts the same command with

  COLLAPIPE_COORDINATOR=HOST:PORT   process 0's address and a free port on it (the same everywhere)
  COLLAPIPE_NUM_PROCESSES=P         how many processes take part
  COLLAPIPE_PROCESS_ID=i            this process, 0 .. P-1
  COLLAPIPE_INIT_TIMEOUT=S          optional: seconds to wait for the coordinator (default 60)

and `initialize_from_env` calls `jax.distributed.initialize` before JAX starts its backends.
Afterwards `jax.devices()` lists every process's devices, and `system.sharded.evaluate_sharded`
spreads a batch over all of them. On CPUs the processes exchange data through gloo
(`jax_cpu_collectives_implementation`); GPUs and TPUs use their own collectives.
"""

from __future__ import annotations

import math
import os
import socket
import time

from collapipe_jax.errors import ValidationError
from collapipe_jax.options import ASCII_INT_DIGITS, ascii_int

ENV_COORDINATOR = "COLLAPIPE_COORDINATOR"
ENV_NUM_PROCESSES = "COLLAPIPE_NUM_PROCESSES"
ENV_PROCESS_ID = "COLLAPIPE_PROCESS_ID"
ENV_INIT_TIMEOUT = "COLLAPIPE_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT_S = 60  # JAX's own default (300 s) reads as a hang when the coordinator is unreachable
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
    host, sep, port_text = coordinator.rpartition(":")
    port = ascii_int(port_text)
    if not sep or not host or port is None or not 0 < port < 65536:
        raise ValidationError(ENV_COORDINATOR, "must be HOST:PORT with a port in 1..65535 (ASCII digits)", coordinator)
    n = ascii_int(num)
    if n is None or n < 1:
        raise ValidationError(ENV_NUM_PROCESSES, f"must be an integer in 1..{10**ASCII_INT_DIGITS - 1} (ASCII digits)",
                              num or None)
    i = ascii_int(pid)
    if i is None or i >= n:
        raise ValidationError(ENV_PROCESS_ID, f"must be an integer in 0..{n - 1} (ASCII digits)", pid or None)
    return {"coordinator_address": coordinator, "num_processes": n, "process_id": i}


def init_timeout(environ=os.environ) -> int:
    """Seconds `jax.distributed.initialize` waits for every process (COLLAPIPE_INIT_TIMEOUT)."""
    text = environ.get(ENV_INIT_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_INIT_TIMEOUT_S
    seconds = ascii_int(text)
    if seconds is None or not 1 <= seconds <= 86400:
        raise ValidationError(ENV_INIT_TIMEOUT, "must be an integer number of seconds in 1..86400", text)
    return seconds


def wait_for_coordinator(address: str, timeout_s: float, process: str) -> float:
    """Wait until the coordinator accepts a TCP connection; returns the seconds left of
    `timeout_s`. JAX's client aborts the whole process (a C++ fatal error and a stack trace) when
    it cannot register in time, so a host that does not resolve or a port where nothing listens
    is found here first and becomes one line naming the address."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return max(1.0, deadline - time.monotonic())
        except socket.gaierror as err:
            raise ValidationError(ENV_COORDINATOR, f"{process}: the coordinator host {host!r} does not resolve "
                                                   f"({err.strerror})", address) from None
        except (OSError, UnicodeError) as err:
            if time.monotonic() >= deadline:
                why = getattr(err, "strerror", None) or type(err).__name__
                raise ValidationError(ENV_COORDINATOR, f"{process}: no coordinator reached at {address} within "
                                                       f"{timeout_s:g} s ({ENV_INIT_TIMEOUT}; last try: {why}); start "
                                                       f"process 0 there first") from None
            time.sleep(0.25)


def initialize_from_env(command: str | None = None, environ=os.environ) -> bool:
    """`jax.distributed.initialize` from the COLLAPIPE_* variables; False (nothing done) if unset.

    Must run before anything starts a JAX backend. `command`, if given, must be one that
    spreads its work over the processes (`MULTIHOST_COMMANDS`). Calling it again is a no-op.
    """
    named = [name for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if environ.get(name, "").strip()]
    if named and command is not None and command not in MULTIHOST_COMMANDS:  # refused before any value is read
        raise ValidationError(named[0], f"multi-host runs support only {list(MULTIHOST_COMMANDS)}, not {command!r}: "
                                        f"unset {', '.join(named)}")
    config = distributed_config(environ)
    if config is None:
        return False
    timeout = init_timeout(environ)
    process = f"process {config['process_id']} of {config['num_processes']}"
    if config["process_id"] != 0:  # process 0 starts the coordinator itself
        timeout = wait_for_coordinator(config["coordinator_address"], timeout, process)
    import jax

    if jax.distributed.is_initialized():
        return True
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in environ:  # the user's choice (e.g. mpi) wins
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**config, initialization_timeout=int(math.ceil(timeout)))
    return True
