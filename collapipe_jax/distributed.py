"""Multi-host runs through `jax.distributed`, configured by environment variables.

Every host starts the same command with

  COLLAPIPE_COORDINATOR=HOST:PORT   process 0's address and a free port on it (the same everywhere)
  COLLAPIPE_NUM_PROCESSES=P         how many processes take part
  COLLAPIPE_PROCESS_ID=i            this process, 0 .. P-1
  COLLAPIPE_INIT_TIMEOUT=S          optional: seconds to wait for the other processes (default 60)

and `initialize_from_env` calls `jax.distributed.initialize` before JAX starts its backends.
First the processes meet on the coordinator's port (a line each way: `collapipe-join i P`, then
`collapipe-go` or `collapipe-abort WHY`): JAX's client ends the process with a C++ abort and a
stack dump when its registration fails, so every failure that can be seen before it (a host
that does not resolve, a missing peer, another program on the port, processes that disagree)
is found here and becomes one line naming the address.
Afterwards `jax.devices()` lists every process's devices, and `system.sharded.evaluate_sharded`
spreads a batch over all of them. On CPUs the processes exchange data through gloo
(`jax_cpu_collectives_implementation`); GPUs and TPUs use their own collectives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from collapipe_jax.errors import ValidationError

ENV_COORDINATOR = "COLLAPIPE_COORDINATOR"
ENV_NUM_PROCESSES = "COLLAPIPE_NUM_PROCESSES"
ENV_PROCESS_ID = "COLLAPIPE_PROCESS_ID"
ENV_INIT_TIMEOUT = "COLLAPIPE_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT_S = 60  # JAX's own default (300 s) reads as a hang when the coordinator is unreachable
# commands whose work is spread over every process's devices (the sharded evaluator)
MULTIHOST_COMMANDS = ("sweep",)
ASCII_INT_DIGITS = 9  # the numbers read here (and --host-devices) fit 9 digits: longer text is refused before int()


def ascii_int(text: str) -> int | None:
    """`text` as a non-negative integer written with ASCII digits only, or None: `str.isdigit`
    accepts "²" and "３", which `int` then refuses or reads, and 5,000 digits would hit Python's
    limit on integer conversion."""
    if not text or len(text) > ASCII_INT_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


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


# the rendezvous before `jax.distributed.initialize` (lines of ASCII on the coordinator's port)
HELLO, GO, ABORT = "collapipe-join", "collapipe-go", "collapipe-abort"
HELLO_WAIT_S = 5.0  # how long process 0 waits for the first line of a connection before dropping it


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT already checked by `distributed_config` ([IPv6] unbracketed)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_resolves(address: str, process: str) -> None:
    """The coordinator's host resolves: JAX's client would abort the process after its timeout."""
    host, port = split_address(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise _unresolved(address, process, err) from None


def _unresolved(address: str, process: str, err: Exception) -> ValidationError:
    why = getattr(err, "strerror", None) or type(err).__name__
    return ValidationError(ENV_COORDINATOR, f"{process}: the coordinator host {split_address(address)[0]!r} does not "
                                            f"resolve ({why})", address)


def _read_line(sock: socket.socket, limit: int = 200) -> str:
    """One line from `sock` (without its newline), what came before EOF, or at most `limit` bytes."""
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = sock.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("ascii", "replace").strip()


def connect_to_coordinator(address: str, deadline: float, timeout_s: float, process: str) -> socket.socket:
    """A connection to the coordinator's port, tried until `deadline` (process 0 may start later)."""
    host, port = split_address(address)
    while True:
        try:
            return socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        except socket.gaierror as err:
            raise _unresolved(address, process, err) from None
        except (OSError, UnicodeError) as err:
            if time.monotonic() >= deadline:
                why = getattr(err, "strerror", None) or type(err).__name__
                raise ValidationError(ENV_COORDINATOR, f"{process}: no coordinator reached at {address} within "
                                                       f"{timeout_s:g} s ({ENV_INIT_TIMEOUT}; last try: {why}); start "
                                                       f"process 0 there first") from None
            time.sleep(0.25)


def join_coordinator(address: str, process_id: int, count: int, deadline: float, timeout_s: float,
                     process: str) -> None:
    """A process other than 0: say who it is to process 0 and wait for its go. Anything else
    that listens on the port (it does not answer, or answers something else) is one line naming
    the address, where JAX's client would abort the process with a stack dump."""
    with connect_to_coordinator(address, deadline, timeout_s, process) as sock:
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(f"{HELLO} {process_id} {count}\n".encode())
            reply = _read_line(sock)
        except TimeoutError:
            raise ValidationError(ENV_COORDINATOR, f"{process}: {address} accepted the connection but sent no go "
                                                   f"within {timeout_s:g} s ({ENV_INIT_TIMEOUT}): not every process "
                                                   f"joined process 0, or another program listens there") from None
        except OSError as err:
            reply = f"(connection lost: {err.strerror or type(err).__name__})"
    if reply == GO:
        return
    if reply.startswith(ABORT):
        raise ValidationError(ENV_COORDINATOR, f"{process}: process 0 at {address} gave up: "
                                               f"{reply[len(ABORT):].strip()}")
    raise ValidationError(ENV_COORDINATOR, f"{process}: what listens at {address} is not collapipe's process 0 (it "
                                           f"answered {reply[:60]!r}): free the port or choose another")


def gather_processes(address: str, count: int, deadline: float, timeout_s: float, process: str) -> None:
    """Process 0: listen on the coordinator's port (as JAX's service will: every interface)
    until the other `count - 1` processes have said who they are, then send each its go and let
    the port go to JAX. A port that another program holds, a peer that never comes, and peers
    that disagree on the number of processes are one line here; in `jax.distributed.initialize`
    they are a C++ abort with a stack dump."""
    _, port = split_address(address)
    dual = socket.has_dualstack_ipv6()
    try:
        server = socket.create_server(("", port), family=socket.AF_INET6 if dual else socket.AF_INET,
                                      dualstack_ipv6=dual)
    except OSError as err:
        why = os.strerror(err.errno) if err.errno else str(err)
        raise ValidationError(ENV_COORDINATOR, f"{process}: port {port} cannot be opened on this host ({why}): "
                                               f"another program holds it; choose a free port",
                              address) from None
    peers: dict[int, socket.socket] = {}
    with server:
        try:
            while len(peers) < count - 1:
                _accept_one(server, peers, count, deadline, process)
                if time.monotonic() >= deadline and len(peers) < count - 1:
                    missing = sorted(set(range(1, count)) - set(peers))
                    raise ValidationError(ENV_COORDINATOR, f"{process}: process(es) {_ids(missing)} did not join at "
                                                           f"{address} within {timeout_s:g} s ({ENV_INIT_TIMEOUT}): "
                                                           f"start every process with the same variables")
        except ValidationError as err:
            _send_all(peers, f"{ABORT} {err.constraint}")
            raise
        _send_all(peers, GO)


def _accept_one(server: socket.socket, peers: dict, count: int, deadline: float, process: str) -> None:
    """Accept one connection until `deadline`; a well-formed hello joins `peers`, anything else
    is dropped. Peers that disagree on the run (the number of processes, who is who) are its
    one-line error."""
    server.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        conn, _ = server.accept()
    except TimeoutError:
        return
    try:
        conn.settimeout(min(HELLO_WAIT_S, max(0.05, deadline - time.monotonic())))
        words = _read_line(conn).split()
    except OSError:
        words = []
    numbers = [ascii_int(w) for w in words[1:]]
    if len(words) != 3 or words[0] != HELLO or None in numbers:
        conn.close()  # not a collapipe process (a port scanner, a health check): ignored
        return
    pid, their_count = numbers
    if their_count == count and pid not in peers and 1 <= pid < count:
        peers[pid] = conn
        return
    if their_count != count:
        err = ValidationError(ENV_NUM_PROCESSES, f"{process}: process {pid} says there are {their_count} processes, "
                                                 f"this one {count}")
    else:
        err = ValidationError(ENV_PROCESS_ID, f"{process}: two processes say they are process {pid}" if pid in peers
                              else f"{process}: a process says it is process {pid}")
    _send_all({pid: conn}, f"{ABORT} {err.constraint}")  # the others hear it from gather_processes
    raise err


def _send_all(peers: dict, line: str) -> None:
    """`line` to every peer; then wait (briefly) for each to close first, so that the port is
    free of this side's connections when JAX's service binds it."""
    for conn in peers.values():
        with contextlib.suppress(OSError):
            conn.sendall(f"{line}\n".encode())
    for conn in peers.values():
        with contextlib.suppress(OSError):
            conn.settimeout(2.0)
            conn.recv(1)
        conn.close()


def _ids(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")


def initialize_from_env(command: str | None = None, environ=os.environ) -> bool:
    """`jax.distributed.initialize` from the COLLAPIPE_* variables; False (nothing done) if unset.

    Must run before anything starts a JAX backend. `command`, if given, must be one that
    spreads its work over the processes (`MULTIHOST_COMMANDS`). Calling it again is a no-op.
    Before JAX's initialize, the processes meet on the coordinator's port (`gather_processes`,
    `join_coordinator`), so that what JAX's client would turn into an abort is one line.
    """
    named = [name for name in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if environ.get(name, "").strip()]
    if named and command is not None and command not in MULTIHOST_COMMANDS:  # refused before any value is read
        raise ValidationError(named[0], f"multi-host runs support only {list(MULTIHOST_COMMANDS)}, not {command!r}: "
                                        f"unset {', '.join(named)}")
    config = distributed_config(environ)
    if config is None:
        return False
    timeout = init_timeout(environ)
    import jax

    if jax.distributed.is_initialized():
        return True
    address, pid, count = config["coordinator_address"], config["process_id"], config["num_processes"]
    process = f"process {pid} of {count}"
    deadline = time.monotonic() + timeout
    check_resolves(address, process)
    if pid == 0:
        gather_processes(address, count, deadline, timeout, process)
    else:
        join_coordinator(address, pid, count, deadline, timeout, process)
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in environ:  # the user's choice (e.g. mpi) wins
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # every process has joined: JAX's own wait is short, and given the whole timeout again
    jax.distributed.initialize(**config, initialization_timeout=timeout)
    return True
