"""Infeasibility as data: a code per constraint, so that a batch of rounds can report, per
round, which constraint had no feasible decision (the host raises InfeasibleError instead)."""

FEASIBLE, C7, C9, C11 = 0, 1, 2, 3
# the names the host's InfeasibleError reports, indexed by code
NAMES = ("", "C7", "C9'", "C11'")


def name(code: int) -> str:
    """The constraint's name of an infeasibility code ('' when feasible)."""
    return NAMES[int(code)]
