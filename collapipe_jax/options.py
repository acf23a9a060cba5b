"""Config dataclass fields that describe themselves: default, help text, choices.

The run configurations (`train.TrainConfig`, `scheduling.schedule.ScheduleConfig`, ...) are
frozen dataclasses; each field is declared with `option(...)`, and `cli.py` generates the
subcommand's options from the fields (flag `--name-with-dashes`, type from the annotation,
default and choices from here). A default is written once, in the dataclass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from collapipe_jax.errors import ValidationError


def option(default: Any, help: str, *, choices=None, flag: str | None = None, cli: bool = True,
           positional: bool = False):
    """A dataclass field with its command-line description in `metadata`.

    `choices`: the allowed values (a module's constant, never retyped); `flag`: the option name
    when it is not `--<field-with-dashes>`; `cli=False`: not a command-line option.
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
            "cli": cli, "positional": positional}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    """The command-line name of a config field, as error messages name it too."""
    return field.metadata.get("flag") or field.name.replace("_", "-")


def check_fields(config) -> None:
    """Choices and basic types of every `option` field of a config dataclass (one-line errors)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        choices = field.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ValidationError(flag_name(field), f"must be one of {list(choices)}", value)


def require(ok: bool, field: str, constraint: str, value=None) -> None:
    """Raise the one-line ValidationError when `ok` is false."""
    if not ok:
        raise ValidationError(field, constraint, value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(field: str, value, low: int = 1, high: int | None = None, optional: bool = False) -> None:
    """An integer in [low, high] (None allowed when `optional`)."""
    if optional and value is None:
        return
    span = f">= {low}" if high is None else f"in [{low}, {high}]"
    require(is_int(value) and value >= low and (high is None or value <= high), field, f"must be an integer {span}",
            value)


def check_float(field: str, value, *, low: float | None = None, high: float | None = None, strict_low: bool = False,
                optional: bool = False) -> None:
    """A finite number within the bounds (`strict_low`: > low instead of >= low)."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict_low else value >= low
    if ok and high is not None:
        ok = value <= high
    parts = []
    if low is not None:
        parts.append(f"{'>' if strict_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    require(ok, field, "must be a finite number" + (" " + " and ".join(parts) if parts else ""), value)
