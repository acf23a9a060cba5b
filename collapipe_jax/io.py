"""Atomic result files: every text, JSON and CSV file the package writes goes through here;
and the checks of the places and numbers that leave the program (output directories, finite
results, a clean stdout).

A file is written to a temporary name in its own directory and renamed over the target
(`os.replace` is atomic on POSIX and Windows), so a reader or a resumed run sees either the old
file or the whole new one, never half of it. The temporary name carries the process id so that
two processes writing the same file do not clobber each other's temporary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import pathlib
import sys
import tempfile

from collapipe_jax.errors import NonFiniteError, ValidationError


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Write `text` to `path` atomically (parents created); returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_json(obj, indent: int | None = 2) -> str:
    """JSON text; NaN/inf are refused (`allow_nan=False`): results must be finite numbers."""
    return json.dumps(obj, indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> pathlib.Path:
    return atomic_write_text(path, to_json(obj, indent))


def read_json(path: str | os.PathLike):
    """The JSON value in `path`, or None when the file is missing, empty or damaged (a result
    file that cannot be read is recomputed by its writer, never trusted half-way)."""
    try:
        return json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def csv_text(rows: list[dict], fields: list[str] | None = None) -> str:
    """CSV of dict rows; the columns are `fields`, else every key in order of first appearance."""
    if fields is None:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: list[dict], fields: list[str] | None = None) -> pathlib.Path:
    return atomic_write_text(path, csv_text(rows, fields))


def check_output_dir(field: str, path: str | os.PathLike) -> pathlib.Path:
    """`path` as a directory this run can write into (created when missing), or the one-line
    error naming `field`. Called before any work starts, so that a file in the way, a parent
    that is a file or a read-only place fails at once, not after a round of work."""
    path = pathlib.Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValidationError(field, "must be a directory, and is a file", str(path))
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValidationError(field, f"cannot be created: {existing} is a file", str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # writable? (permissions, read-only mounts, quotas)
            pass
    except OSError as err:
        raise ValidationError(field, f"must be a writable directory ({err.strerror})", str(path)) from None
    return path


def first_non_finite(obj, path: str = "") -> tuple[str, float] | None:
    """(JSON path, value) of the first NaN or infinite float in a result of dicts and lists."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (path, obj)
    if isinstance(obj, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for where, value in items:
        if (hit := first_non_finite(value, where)) is not None:
            return hit
    return None


def check_finite(obj, path: str = "") -> None:
    """Raise NonFiniteError naming the first NaN or infinite number of a result."""
    if (hit := first_non_finite(obj, path)) is not None:
        raise NonFiniteError(*hit)


@contextlib.contextmanager
def redirect_fd(fd: int, target: int | None = None):
    """Point file descriptor `fd` at `target` (a descriptor; None: /dev/null) inside the block.

    Below Python's `sys.stdout`: C and C++ libraries write to the descriptor itself (HiGHS
    prints its banner on fd 1 whatever its options say), so only this keeps stdout for the
    program's own table or JSON. Does nothing when `fd` is not open.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    replacement = os.open(os.devnull, os.O_WRONLY) if target is None else os.dup(target)
    try:
        os.dup2(replacement, fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(replacement)
