"""The benchmark's NumPy and Python-loop references compute what the JAX model computes."""

import jax
import numpy as np
import pytest

from benchmarks.bench_system import random_batch
from benchmarks.system_reference import numpy_evaluate, python_evaluate
from collapipe_jax.scenario import scenario_preset
from collapipe_jax.system import evaluate


@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_references_equal_jax_model(variant):
    scenario = scenario_preset("paper-bert").replace(N=5, J=5)
    states, decisions = random_batch(scenario, 64, seed=4)
    out = jax.vmap(lambda s, d: evaluate(s, d, variant))(states, decisions)
    st = {k: np.asarray(v) for k, v in vars(states).items() if k != "fading"}
    dc = {k: np.asarray(v) for k, v in vars(decisions).items()}
    ref = numpy_evaluate(st, dc, variant)
    for key in ("tau_pipe_s", "tau_up_s", "tau_round_s", "E_com_j", "E_sch_j", "Gamma"):
        np.testing.assert_allclose(ref[key], getattr(out, key), rtol=2e-5)
    for i in range(0, 64, 9):
        tau, e_pipe, gamma = python_evaluate({k: v[i].tolist() for k, v in st.items()},
                                             {k: v[i].tolist() for k, v in dc.items()}, variant)
        np.testing.assert_allclose(tau, out.tau_round_s[i], rtol=2e-5)
        np.testing.assert_allclose(e_pipe, out.E_pipe_j[i], rtol=2e-5)
        np.testing.assert_allclose(gamma, out.Gamma[i], rtol=2e-5)
