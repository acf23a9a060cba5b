"""benchmarks/gap_ablation.py's table: gaps paired by seed, Student-t interval, unpaired seeds left out."""

import numpy as np
import pytest
from scipy import stats

from benchmarks import gap_ablation as gap
from collapipe_jax.train_config import TrainConfig


def test_gap_is_paired_by_seed_with_student_t_interval():
    runs = [{"row": "central", "seed": s, "accuracy": a} for s, a in ((0, 0.70), (1, 0.66), (2, 0.68))]
    runs += [{"row": "base", "seed": s, "accuracy": a} for s, a in ((0, 0.61), (1, 0.60), (2, 0.64), (7, 0.1))]
    row = next(r for r in gap.table(runs) if r["row"] == "base")
    d = 100 * np.array([0.61 - 0.70, 0.60 - 0.66, 0.64 - 0.68])  # seed 7 has no reference: not paired
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert row["n_paired"] == 3 and row["gap_points"] == pytest.approx(d.mean())
    assert row["gap_ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert "| baseline |" in gap.markdown(gap.table(runs))


@pytest.mark.parametrize("row", sorted(gap.ROWS))
def test_every_row_is_a_valid_train_config(row):
    TrainConfig(**{k: v for k, v in {**gap.COMMON, **gap.ROWS[row][2]}.items() if k != "recipe"})
