"""Checkpoints of a training run: the round state (a pytree) and the run's records (JSON).

Orbax's CheckpointManager writes each step into a temporary directory and renames it when
complete, so a killed run leaves either a whole checkpoint or none; one step per round, the
last two kept. On top of that (docs/design.md §8):

* integrity: each step's meta carries a SHA-256 of the saved state (`state_digest`); a restore
  recomputes it, so a step whose files were truncated or overwritten is detected, never loaded;
  and each step holds a list of its files with their sizes and SHA-256 (`FILES_NAME`, written
  after Orbax has finished the step), checked before anything is read: an edited meta (its
  records, its next round), a deleted `_METADATA` or a truncated file that Orbax would still
  read (its result happening to be right) is detected too;
* failure while saving (disk full): one error line, the step's temporaries removed, the lock
  released, the previous steps kept;
* fallback: `restore_newest_intact` walks the steps newest first, moves a damaged one aside
  (`damaged-<step>-<time>`, which Orbax ignores) saying so on one line of stderr, and restores the
  newest intact one; the caller's settings check runs on the meta alone, before any array is read;
* one writer: a run holds an exclusive `flock` on `<dir>/.collapipe.lock` until it ends, so a
  second run into the same directory is refused at once; temporary directories that a killed
  writer left (`*.orbax-checkpoint-tmp*`) are removed under that lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_json, read_json

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_NAME = ".collapipe.lock"
FILES_NAME = "collapipe_files.json"  # in each step's directory: {relative path: [size, sha256]}
TMP_MARK = ".orbax-checkpoint-tmp"
DIGEST_KEY = "state_sha256"

# directory → descriptor of its lock file, for the directories this process holds: a run keeps
# its directory until the process ends (a later run in the same process, e.g. a resume after an
# error in a test or a notebook, is the same writer and passes)
_HELD: dict[pathlib.Path, int] = {}


class DamagedCheckpoint(ValidationError):
    """A step whose meta or state cannot be read, or whose state does not match its digest
    (`reason`); a one-line error where no fallback applies (e.g. `--init-from`)."""

    def __init__(self, reason: str, step: int, path: pathlib.Path):
        super().__init__("checkpoint", f"step {step} in {path} is damaged: {reason}")
        self.reason = reason


def _path_key(path) -> str:
    """A leaf's path independent of the container types (a tuple restored as a list or a
    dict keyed "0" is the same leaf)."""
    parts = []
    for entry in path:
        for attr in ("key", "idx", "name"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
        else:  # pragma: no cover - other key kinds
            parts.append(str(entry))
    return "/".join(parts)


def state_digest(state) -> str | None:
    """SHA-256 over every leaf's path, dtype, shape and bytes, leaves in path order; None when a
    leaf is not fully on this host (multi-host sharded state: not verified)."""
    leaves = sorted(((_path_key(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(state)),
                    key=lambda item: item[0])
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for _, leaf in leaves):
        return None
    h = hashlib.sha256()
    for key, leaf in leaves:
        arr = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def placed_like(state, target=None):
    """`state` (restored) placed as `target`'s leaves are. Orbax commits every restored array to
    a device, but a fresh run's arrays (JAX's default placement) are not committed, and jit keys
    its programs on that: a resumed run would compile its round again instead of reusing the fresh
    run's program (in the process or from a persistent compilation cache). So a leaf whose target
    is not committed — or every single-device leaf when there is no target (`restore_raw`) — comes
    back uncommitted; a leaf restored onto a target's sharding keeps it."""
    def place(x, t=None):
        if not isinstance(x, jax.Array) or not x.is_fully_addressable:
            return x
        fresh = (not t.committed) if isinstance(t, jax.Array) else len(x.sharding.device_set) == 1
        return jax.numpy.asarray(jax.device_get(x)) if fresh else x

    if target is None:
        return jax.tree.map(place, state)
    return jax.tree.map(place, state, target)


@contextlib.contextmanager
def _quiet_absl():
    """Orbax logs through absl what this module reports itself: its writer threads log a failure
    (a full disk) with its traceback before `save` raises it, and opening a directory whose step
    has a truncated `_CHECKPOINT_METADATA` logs `ERROR:absl:Failed to json parse ...` beside the
    step's one warning line (the file list finds it damaged). Quiet inside the block only."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _cause(err: Exception) -> str:
    """The operating system's reason inside a tensorstore/Orbax error, else its first line."""
    text = str(err)
    found = re.search(r":\s*([^:\[]+?)\s*\[os_error_code", text)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    if found:
        return found.group(1)
    return (text.strip().splitlines() or [type(err).__name__])[0][:200]


def file_list(directory: pathlib.Path) -> dict[str, list]:
    """{path relative to `directory`: [size, SHA-256]} of every file below it but the list itself."""
    listed = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != FILES_NAME):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        listed[path.relative_to(directory).as_posix()] = [path.stat().st_size, h.hexdigest()]
    return listed


def lock_directory(path: pathlib.Path, field: str = "checkpoint-dir") -> None:
    """Take the exclusive lock of a run's directory (its checkpoints, or its log directory) for
    this process, or refuse in one line naming `field`."""
    path = pathlib.Path(path).resolve()
    if fcntl is None or path in _HELD or jax.process_index() != 0:
        return  # one host of a multi-host run writes for all
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ValidationError(field, "is in use by another run (it holds the directory's lock); wait "
                                     "for it to end or use another directory", str(path)) from None
    _HELD[path] = fd


def unlock_directory(path: pathlib.Path) -> None:
    fd = _HELD.pop(pathlib.Path(path).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def remove_stale_temporaries(path: pathlib.Path) -> list[str]:
    """Delete the temporary step directories a killed writer left behind (call under the lock)."""
    stale = sorted(p for p in path.iterdir() if TMP_MARK in p.name)
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return [p.name for p in stale]


def same_settings(fingerprint: str, settings: dict, where, vocab_id: str | None = None) -> Callable[[dict], None]:
    """A check of a checkpoint's meta: refuse (one line naming what differs) a checkpoint that
    a run with other settings wrote, or (given `vocab_id`) with other data: --data-dir is not a
    setting (the data may move), but data with another vocabulary give arrays of other shapes,
    which Orbax would report in pages of tracebacks, finding every step unreadable."""

    def check(meta: dict) -> None:
        if vocab_id is not None and meta.get("vocab_id") != vocab_id:
            raise ValidationError("resume", f"the data differ from the run's: the checkpoint in {where} was written "
                                            f"with the vocabulary {meta.get('vocab_id')}, the data here give "
                                            f"{vocab_id}; resume with the run's --data-dir")
        if meta.get("fingerprint") == fingerprint:
            return
        saved = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in settings.items() if k in saved and saved[k] != v]
        what = ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else "") if changed else "its fingerprint differs"
        raise ValidationError("resume", f"the checkpoint in {where} was written by a run with other settings ({what}); "
                                        f"resume with the same settings or start a new run in another directory")

    return check


class Checkpoints:
    """A run's checkpoint directory. `exclusive=True` (the writing run): lock it and clean up
    a killed writer's temporaries first; without it (reading a finished run) nothing changes."""

    def __init__(self, directory: str, *, exclusive: bool = False):
        self.path = pathlib.Path(directory).resolve()
        self.exclusive = exclusive
        if exclusive:
            self.path.mkdir(parents=True, exist_ok=True)
            lock_directory(self.path)
            remove_stale_temporaries(self.path)
        with _quiet_absl():  # reads every step's _CHECKPOINT_METADATA
            self.manager = ocp.CheckpointManager(
                self.path,
                options=ocp.CheckpointManagerOptions(max_to_keep=2, create=exclusive, enable_async_checkpointing=False),
            )

    def close(self) -> None:
        """Release the directory's lock (the process's exit does it too)."""
        if self.exclusive:
            unlock_directory(self.path)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """Every step on disk, newest first."""
        return sorted(self.manager.all_steps(), reverse=True)

    def save(self, step: int, state, meta: dict) -> None:
        """Save one step, then its file list; a failure (disk full, quota, permissions) leaves
        no trace of the step and is one ValidationError naming the directory."""
        meta = {**meta, DIGEST_KEY: state_digest(state)}
        try:
            with _quiet_absl():
                self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                                meta=ocp.args.JsonSave(meta)))
                self.manager.wait_until_finished()
            if jax.process_index() == 0:
                atomic_write_json(self.path / str(step) / FILES_NAME, file_list(self.path / str(step)))
        except Exception as err:  # noqa: BLE001 - OSError, or tensorstore's ValueError around it
            self.abandon(step)
            raise ValidationError("checkpoint-dir", f"saving round {step}'s checkpoint failed ({_cause(err)}); the "
                                                    f"step was removed, earlier steps are kept", str(self.path)) from None

    def abandon(self, step: int) -> None:
        """After a failed save: remove the step and the temporaries, and release the directory
        (its lock file too when no checkpoint is left in it)."""
        with contextlib.suppress(Exception):
            self.manager.close()  # Orbax's threads, before the interpreter shuts down under them
        shutil.rmtree(self.path / str(step), ignore_errors=True)
        remove_stale_temporaries(self.path)
        if self.exclusive:
            unlock_directory(self.path)
            if not any(p.name.isdigit() for p in self.path.iterdir()):
                (self.path / LOCK_NAME).unlink(missing_ok=True)

    def check_files(self, step: int) -> None:
        """The step's files against its file list; DamagedCheckpoint naming the first that is
        missing or differs (a step without its list was not finished, or was tampered with)."""
        directory = self.path / str(step)
        listed = read_json(directory / FILES_NAME)
        if not isinstance(listed, dict) or not listed:  # an empty list would check nothing
            raise DamagedCheckpoint(f"its file list {FILES_NAME} is missing, empty or unreadable", step, self.path)
        found = file_list(directory)
        for name, entry in listed.items():
            if name not in found:
                raise DamagedCheckpoint(f"its file {name} is missing", step, self.path)
            if found[name] != entry:
                raise DamagedCheckpoint(f"its file {name} was changed or truncated (size or SHA-256 differs)", step,
                                        self.path)
        unlisted = sorted(set(found) - set(listed))  # the list is made of every file once the step is written
        if unlisted:
            raise DamagedCheckpoint(f"its file {unlisted[0]} is not in its file list", step, self.path)

    def read_meta(self, step: int) -> dict:
        """The step's JSON meta alone (no array is read), after its files are checked."""
        self.check_files(step)
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:  # noqa: BLE001 - Orbax raises many kinds for damaged files
            raise DamagedCheckpoint(f"its meta cannot be read ({type(err).__name__})", step, self.path) from None
        if not isinstance(meta, dict):
            raise DamagedCheckpoint("its meta is not a JSON object", step, self.path)
        return meta

    def _restore_state(self, step: int, meta: dict, target=None):
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
        except Exception as err:  # noqa: BLE001 - truncated or missing files: many exception kinds
            raise DamagedCheckpoint(f"its state cannot be read ({type(err).__name__})", step, self.path) from None
        saved = meta.get(DIGEST_KEY)
        if saved is not None and state_digest(state) not in (None, saved):
            raise DamagedCheckpoint("its state does not match the digest saved with it", step, self.path)
        return placed_like(state, target)

    def restore(self, step: int, target) -> tuple[dict, dict]:
        """Step `step`'s state (arranged as `target`) and meta; DamagedCheckpoint if damaged."""
        meta = self.read_meta(step)
        return self._restore_state(step, meta, target), meta

    def restore_raw(self, step: int) -> tuple[dict, dict]:
        """The saved state as nested dicts of arrays, without a target structure (to read
        another run's checkpoint, whose optimizer states need not match this run's)."""
        meta = self.read_meta(step)
        return self._restore_state(step, meta), meta

    def restore_newest_intact(self, target, check_meta: Callable[[dict], None]) -> tuple[dict, dict]:
        """The newest step that is intact: its meta passes `check_meta` (which raises to refuse
        the run, e.g. other settings) before its state is read, and its state matches its digest.
        Damaged newer steps are moved aside with one line on stderr; none intact is an error."""
        damaged: list[tuple[int, str]] = []
        for step in self.steps():
            try:
                meta = self.read_meta(step)
                check_meta(meta)
                state = self._restore_state(step, meta, target)
            except DamagedCheckpoint as why:
                damaged.append((step, why.reason))
                continue
            if damaged:
                moved = "; ".join(f"step {bad} is damaged: {why}, moved to {self._set_aside(bad)}"
                                  for bad, why in damaged)
                print(f"collapipe: warning: checkpoint {moved}; resuming from step {step} in {self.path}",
                      file=sys.stderr)
            return state, meta
        raise ValidationError("checkpoint-dir", "holds no intact checkpoint to resume ("
                              + "; ".join(f"step {bad}: {why}" for bad, why in damaged) + ")", str(self.path))

    def _set_aside(self, step: int) -> str:
        """Rename a damaged step out of Orbax's sight (kept for inspection); returns the new name."""
        name = f"damaged-{step}-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(self.path / str(step), self.path / name)
        with _quiet_absl():
            self.manager.reload()
        return name
