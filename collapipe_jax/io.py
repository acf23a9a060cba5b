"""Atomic result files: every text, JSON and CSV file the package writes goes through here.

A file is written to a temporary name in its own directory and renamed over the target
(`os.replace` is atomic on POSIX and Windows), so a reader or a resumed run sees either the old
file or the whole new one, never half of it. The temporary name carries the process id so that
two processes writing the same file do not clobber each other's temporary.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib


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
