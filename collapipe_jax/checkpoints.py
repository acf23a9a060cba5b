"""Checkpoints of a training run: the round state (a pytree) and the run's records (JSON).

Orbax's CheckpointManager writes each step into a temporary directory and renames it when
complete, so a killed run leaves either a whole checkpoint or none; one step per round, the
last two kept.
"""

from __future__ import annotations

import pathlib

import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: str):
        self.path = pathlib.Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.path,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def restore(self, step: int, target) -> tuple[dict, dict]:
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]

    def restore_raw(self, step: int) -> tuple[dict, dict]:
        """The saved state as nested dicts of arrays, without a target structure (to read
        another run's checkpoint, whose optimizer states need not match this run's)."""
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                 meta=ocp.args.JsonRestore()))
        return out["state"], out["meta"]
