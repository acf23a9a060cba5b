"""Errors raised at the boundary (scenario, decisions, CLI).

Every bad value becomes one `ValidationError` naming the field and the constraint it
breaks; the CLI turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations


class ValidationError(ValueError):
    """A bad input value: `field` is the input's name, `constraint` what it must satisfy."""

    def __init__(self, field: str, constraint: str, value=None):
        self.field = field
        self.constraint = constraint
        self.value = value
        shown = "" if value is None else f" (got {_short(value)})"
        super().__init__(f"invalid {field}: {constraint}{shown}")


class NonFiniteError(ValidationError):
    """A computed number that is NaN or infinite (docs/design.md §8: results are finite or an error
    naming the cause): `where` names the quantity, e.g. `tau_up_s[0]`."""

    def __init__(self, where: str, value: float):
        if value == value:
            shown, cause = f"{value}", "an overflow, or a division by a number that underflowed to 0"
        else:
            shown, cause = "NaN", "0/0 or inf - inf after an overflow or underflow"
        super().__init__("result", f"{where} is {shown} ({cause}): an input lies outside the range the model "
                                   f"computes in (float32)")


class InfeasibleError(RuntimeError):
    """No decision satisfies a constraint; `report` names the constraint and the cluster."""

    def __init__(self, report: dict):
        self.report = report
        super().__init__(report.get("message", str(report)))


def _short(value, limit: int = 80) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's 4,300-digit conversion limit
        return f"an integer of {int(value.bit_length() * 0.30103) + 1} digits"
    return text if len(text) <= limit else text[: limit - 3] + "..."
