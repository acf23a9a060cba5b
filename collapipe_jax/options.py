"""Config dataclass fields that describe themselves: default, help text, choices.

The run configurations (`train.TrainConfig`, `scheduling.schedule.ScheduleConfig`, ...) are
frozen dataclasses; each field is declared with `option(...)`, and `cli.py` generates the
subcommand's options from the fields (flag `--name-with-dashes`, type from the annotation,
default and choices from here). A default is written once, in the dataclass.

The checks here are the boundary of docs/design.md §8: one-line `ValidationError`s naming the field,
for values out of range and for numbers that JAX's int32/float32 cannot represent; and the
memory budget that the size guards (scenario.py, tasks/batching.py, cli.py) share.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import typing
from typing import Any

from collapipe_jax.errors import ValidationError

# Representable numbers: JAX computes in int32 and float32 unless x64 is enabled, so every
# integer input must fit int32 and every real one must survive the float32 conversion (no
# overflow to inf, no underflow of a non-zero value to 0 or to a subnormal, which XLA's CPU
# backend flushes to zero).
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38  # np.finfo(np.float32).max
FLOAT32_TINY = 1.1754943508222875e-38  # np.finfo(np.float32).tiny: the smallest normal float32
SEED_MAX = 2**32 - 1  # seeds are unsigned 32-bit: numpy's generators refuse negative ones
MEMORY_SHARE = 8  # size guards allow a run 1/8 of the machine's memory (JAX, XLA and other users keep the rest)


@functools.lru_cache(maxsize=1)
def memory_budget() -> int:
    """Bytes a run may plan for: 1/MEMORY_SHARE of the physical memory (8 GiB assumed where the
    system does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 8 * 2**30
    return int(total) // MEMORY_SHARE


def option(default: Any, help: str, *, choices=None, flag: str | None = None, cli: bool = True,
           positional: bool = False, off_help: str | None = None):
    """A dataclass field with its command-line description in `metadata`.

    `choices`: the allowed values (a module's constant, never retyped); `flag`: the option name
    when it is not `--<field-with-dashes>`; `cli=False`: not a command-line option; `off_help`:
    the help of the `--no-<name>` switch of a boolean that defaults to True.
    """
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
            "cli": cli, "positional": positional, "off_help": off_help}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    """The command-line name of a config field, as error messages name it too."""
    return field.metadata.get("flag") or field.name.replace("_", "-")


TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@functools.lru_cache(maxsize=None)
def field_types(cls) -> dict[str, tuple[Any, bool]]:
    """{field name: (base type, whether None is allowed)} from a config dataclass's annotations."""
    hints = typing.get_type_hints(cls)
    types = {}
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        args = typing.get_args(kind)
        base = next((t for t in args if t is not type(None)), kind) if args else kind
        types[field.name] = (base, type(None) in args)
    return types


def check_type(name: str, base, optional: bool, value) -> None:
    """`value` of the annotated type: what argparse's converters guarantee for a flag, checked
    for values that come from elsewhere (a recipe's JSON: numbers for paths, strings for
    booleans, null for a choice)."""
    if base not in TYPE_WORDS:
        return
    if value is None:
        ok = optional
    elif base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = is_int(value)
    elif base is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    require(ok, name, f"must be {TYPE_WORDS[base]}" + (" or null" if optional else ", not null" if value is None else ""),
            value)


def check_fields(config) -> None:
    """Choices and basic types of every `option` field of a config dataclass (one-line errors)."""
    types = field_types(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        check_type(flag_name(field), *types[field.name], value)
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
    """An integer in [low, high] (None allowed when `optional`); `high` defaults to int32's largest."""
    if optional and value is None:
        return
    high = INT32_MAX if high is None else high
    require(is_int(value) and low <= value <= high, field, f"must be an integer in [{low}, {high}]", value)


def check_seed(field: str, value) -> None:
    check_int(field, value, low=0, high=SEED_MAX)


def float32_problem(value: float) -> str | None:
    """Why a finite float does not survive the float32 conversion, or None when it does."""
    if abs(value) > FLOAT32_MAX:
        return f"it overflows (|x| > {FLOAT32_MAX:.4g})"
    if value != 0 and abs(value) < FLOAT32_TINY:
        return f"it underflows (0 < |x| < {FLOAT32_TINY:.4g})"
    return None


def as_finite_float(value) -> float | None:
    """The number as a finite Python float, or None (not a number, a bool, NaN, inf, or an
    integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        x = float(value)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def check_float(field: str, value, *, low: float | None = None, high: float | None = None, strict_low: bool = False,
                optional: bool = False) -> None:
    """A finite number within the bounds (`strict_low`: > low instead of >= low) that survives
    the float32 conversion."""
    if optional and value is None:
        return
    x = as_finite_float(value)
    ok = x is not None
    if ok and low is not None:
        ok = x > low if strict_low else x >= low
    if ok and high is not None:
        ok = x <= high
    parts = []
    if low is not None:
        parts.append(f"{'>' if strict_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    require(ok, field, "must be a finite number" + (" " + " and ".join(parts) if parts else ""), value)
    problem = float32_problem(x)
    require(problem is None, field, f"must be representable in float32: {problem}", value)
