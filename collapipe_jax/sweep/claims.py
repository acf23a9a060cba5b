"""The paper's quantitative claims next to what the sweeps measure (`results/claims.json`).

Each sweep's `findings(tables)` may return `claims`: a list of objects

    {"id", "claim", "paper", "measured", "setting", "reproduced", "why"[, "n", "ci95"]}

  id          one of CLAIM_IDS (an id appears once per setting: full upload / lora:8, variant, …)
  claim       the paper's statement, in words
  paper       the paper's number (a number, or a string where the paper gives a range or a
              statement such as "≤ −48.98")
  measured    a number, a list of numbers, or an object of numbers, from the sweep's own tables
  setting     what was run (model, variant, tunable, N, rounds, …)
  reproduced  true/false by the rule of the claim's kind (below)
  why         where it does not reproduce: what in the model makes it so (never tuned to match)
  n, ci95     for a claim measured over seeds: the number of seeds and the 95% confidence
              interval [lo, hi] of the mean (`measured` is then the mean), a Student-t interval
              over the per-seed values (`mean_ci95`)

report.py gathers them into `claims.json` and the first table of REPORT.md.

The rules: a relative change the paper reports as p % is reproduced when the measured change has
the same sign and lies within a factor of two of p (|p|/2 ≤ |measured| ≤ 2|p|); an "at least"
claim when the measured value is at or beyond the bound; the other claims state their rule in
their `claim` text. A change measured over seeds counts as reproduced only when the rule holds
for the mean *and* its 95% interval excludes zero (`change_reproduced`).
"""

from __future__ import annotations

import math
from numbers import Real

from collapipe_jax.errors import ValidationError
from collapipe_jax.stats import mean_ci95  # noqa: F401  (the claims' interval)

CLAIM_IDS = (
    "fig4-best-S-m", "fig5-S-m-heterogeneous",
    "fig7-vs-vanillafl", "fig8-vs-titanic", "fig8-vs-pipeline", "fig8-wo-ss", "fig8-vanillafl-vs-pipeline",
    "fig11-vs-loss-only", "fig11-vs-delay-only", "fig11-vs-random",
    "table3-memory",
    "fig6-bleu", "fig6-ner-early-loss", "fig6-accuracy-vs-pipeline", "fig6-accuracy-vs-titanic",
    "fig9-best-S-m-transformer", "fig10-smaller-m-better",
    "abstract-latency",
)
FIELDS = ("id", "claim", "paper", "measured", "setting", "reproduced", "why")
SEED_FIELDS = ("n", "ci95")  # present together, on claims measured over seeds
REPRODUCED_RULE = ("a reported change of p % counts as reproduced when the measured change has the same sign and "
                   "is within a factor of two of p (over seeds: for the mean, with a 95% interval that excludes "
                   "zero); an \"at least\" claim when the measured value reaches the bound")
CI_METHOD = "Student-t 95% interval of the mean over seeds"


def is_measurement(value) -> bool:
    """A finite number, or a non-empty list or object of them (nested one level at most)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, Real):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(is_measurement(v) for v in value)
    if isinstance(value, dict):
        return len(value) > 0 and all(isinstance(k, str) and is_measurement(v) for k, v in value.items())
    return False


def claim(id: str, claim: str, paper, measured, setting: str, reproduced: bool, why: str = "",
          n: int | None = None, ci95=None) -> dict:
    """One claim object; a malformed one is a ValidationError naming the field. `n` and `ci95`
    (given together) mark a claim measured over n seeds, `measured` being their mean."""
    out = {"id": id, "claim": claim, "paper": paper, "measured": measured, "setting": setting,
           "reproduced": bool(reproduced), "why": why}
    if n is not None or ci95 is not None:
        out["n"] = n
        out["ci95"] = None if ci95 is None else [float(v) for v in ci95]
    check_claim(out)
    return out


def check_claim(c: dict) -> None:
    if not isinstance(c, dict) or set(c) not in (set(FIELDS), set(FIELDS) | set(SEED_FIELDS)):
        raise ValidationError("claim", f"must be an object with exactly the fields {list(FIELDS)} "
                                       f"(and {list(SEED_FIELDS)} together)", c)
    if "n" in c:
        if isinstance(c["n"], bool) or not isinstance(c["n"], int) or c["n"] < 1:
            raise ValidationError("claim.n", "must be an integer >= 1", c["n"])
        ci = c["ci95"]
        if (not isinstance(ci, list) or len(ci) != 2 or not all(is_measurement(v) for v in ci)
                or ci[0] > ci[1]):
            raise ValidationError("claim.ci95", "must be [lo, hi] with finite lo <= hi", ci)
    if c["id"] not in CLAIM_IDS:
        raise ValidationError("claim.id", f"must be one of {list(CLAIM_IDS)}", c["id"])
    if not is_measurement(c["measured"]):
        raise ValidationError("claim.measured", "must be a finite number, or a list or object of them", c["measured"])
    if not isinstance(c["reproduced"], bool):
        raise ValidationError("claim.reproduced", "must be true or false", c["reproduced"])
    for field in ("claim", "setting", "why"):
        if not isinstance(c[field], str):
            raise ValidationError(f"claim.{field}", "must be a string", c[field])


def change_pct(value: float, base: float) -> float:
    """(value − base)/base in %: negative when `value` is below `base`."""
    return 100.0 * (float(value) / float(base) - 1.0)


def within_factor_two(measured: float, paper: float) -> bool:
    """The rule for reported changes: same sign, |paper|/2 ≤ |measured| ≤ 2 |paper|."""
    return (measured > 0) == (paper > 0) and abs(paper) / 2 <= abs(measured) <= 2 * abs(paper)


def change_reproduced(mean: float, ci95, paper: float) -> bool:
    """The rule for a change measured over seeds: same sign and within a factor of two of the
    paper's for the mean, and the 95% interval [lo, hi] excludes zero."""
    lo, hi = ci95
    return within_factor_two(mean, paper) and (lo > 0 or hi < 0)


def missing_ids(claims: list[dict]) -> list[str]:
    present = {c["id"] for c in claims}
    return [i for i in CLAIM_IDS if i not in present]
