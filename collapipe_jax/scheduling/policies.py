"""The one registry of decision rules: DSSRA, the paper's baselines, ablations and the frameworks' rules.

Every policy is `policy(problem, Y, rng, losses=None, **options) -> RoundResult`:
  problem  the round's `dssra.RoundProblem` (host float64 copy of the draw and the scenario)
  Y        the Lyapunov queues Y(t) [N]
  rng      `policy_rng(seed, t)`: the one seeding of every random choice, so a resumed or
           repeated run (train or schedule) makes the same decisions
  losses   the previous round's per-cluster training losses (None when there are none)
  options  `solver` ("exact" | "milp") and `m_rule` ("stationary" | "exhaustive") for the rules
           that solve Sub-1, the others ignore them; `stages` and `micro_batches` fix the plan of
           the `default` rule (given only to it)
`collapipe schedule --policy` and `collapipe train --policy` take their names from here.

  dssra                 Alg. 4
  random, loss-only,    the paper's baselines (§VI): which J CUs upload, by a random draw, the
  delay-only            highest training loss or the lowest local training delay; the rest is
                        the default plan (baselines.py)
  uniform               CollaPipe w/o segment scheduling (Fig. 8)
  dssra-no-queue,       ablations: DSSRA without its queue term, DSSRA weighting Γ by the
  dssra-loss-weighted,  losses, and a uniformly random feasible decision
  random-feasible
  default               no optimisation at all (PipeLine's decision, frameworks.py)
  vanilla-fl, titanic   the fixed rules of those frameworks (frameworks.py)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from collapipe_jax.choices import ABLATIONS, PAPER_BASELINES, SCHEDULER_POLICIES  # noqa: F401 (re-exported)
from collapipe_jax.scheduling import baselines, dssra, frameworks

Policy = Callable[..., dssra.RoundResult]


def dssra_policy(problem: dssra.RoundProblem, Y, rng=None, losses=None, **options) -> dssra.RoundResult:
    """Alg. 4 (DSSRA) with the round's queues."""
    return dssra.dssra_round(problem, Y, **options)


POLICIES: dict[str, Policy] = {
    "dssra": dssra_policy,
    "random": baselines.random_policy,
    "loss-only": baselines.loss_only_policy,
    "delay-only": baselines.delay_only_policy,
    "uniform": baselines.uniform_policy,  # CollaPipe w/o segment scheduling
    "dssra-no-queue": baselines.dssra_no_queue_policy,
    "dssra-loss-weighted": baselines.dssra_loss_weighted_policy,
    "random-feasible": baselines.random_feasible_policy,
    "default": frameworks.default_policy,  # no optimisation at all (PipeLine's decision)
    "vanilla-fl": frameworks.vanilla_fl_policy,
    "titanic": frameworks.titanic_policy,
}
# the rules whose every decision satisfies C1–C11' (or that raise InfeasibleError); the fixed
# rules (default, vanilla-fl, titanic) cap p_n by C11' too but keep their δ and m, and the host
# round reports what they break (C7, C9', or C11' where no power meets the budget)
CONSTRAINED_POLICIES = ("dssra",) + PAPER_BASELINES + ABLATIONS
# the rules that decide round t + 1 from round t's training losses
LOSS_POLICIES = ("loss-only", "dssra-loss-weighted")


def policy_rng(seed: int, t: int) -> np.random.Generator:
    """The generator of round t's random choices: a pure function of (seed, t)."""
    return np.random.default_rng([seed, t])
