"""The accelerator-sized sweep `distributions` at a tiny size: its numbers against an independent
evaluation of the same pairs (one pair at a time through `system.evaluate` with a leading-axis
vmap, NumPy statistics, `system.report.constraint_violations`), its random plans against C1/C2
and `make_decision`'s validation, its state mapping against `scenario.draw_state`, its ∂τ/∂p_n
map against the closed form of Eq. 10/11, and the files it writes."""

import contextlib
import io
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.scenario import Scenario, draw_state, make_decision, mean_state, orders_of
from collapipe_jax.scenario import scenario_preset
from collapipe_jax.sweep import SWEEPS, run_sweep
from collapipe_jax.sweep import distributions as dist
from collapipe_jax.system import evaluate
from collapipe_jax.system.latency import VARIANTS
from collapipe_jax.system.report import constraint_violations

# 1000 pairs in chunks of 64: 16 chunks, the last one part padding, over the session's devices.
# DSSRA on all of them (`solved_pairs` unset): on its first 300 only, one mean came out 1.1e-5
# from the check's (float32 solves in chunks of 64 against one batch of 300 parting on a pair, it
# seems), beyond the 1e-5 the means are held to
TINY = dist.DistributionConfig(pairs=1000, references=2, grid=4, seed=3, chunk=64)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep run once through `run_sweep` at `--scale paper`, made tiny."""
    out = tmp_path_factory.mktemp("sweep")
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setitem(dist.SCALE_CONFIGS, "paper", TINY)
        summary = run_sweep(SWEEPS[dist.NAME], "paper", out)
    tables = json.loads((out / dist.NAME / "tables.json").read_text())
    return {"out": out / dist.NAME, "summary": summary, "tables": tables["tables"], "stderr": err.getvalue()}


_draw_pairs = jax.jit(dist.draw_pairs, static_argnums=(0, 4))
_uniforms = jax.jit(dist.pair_uniforms, static_argnums=2)


def _pairs_of(inputs, family, n):
    """The pairs of one group as the sweep draws them, moved to a leading batch axis (NumPy), and
    per variant which pairs have a decision (DSSRA: solved on the pair's own draw, outside the
    reduction)."""
    lead = lambda tree: jax.tree.map(lambda x: np.moveaxis(np.asarray(x), -1, 0), tree)  # noqa: E731
    if family == "dssra":
        state = _draw_states(inputs["space"], inputs["base"], inputs["key"], jnp.arange(n))
        decisions, solved = _solved(inputs["space"], state)
        return lead(state), {v: lead(d) for v, d in decisions.items()}, {v: np.asarray(x) for v, x in solved.items()}
    tables, rows = inputs["families"][family]
    state, decisions = _draw_pairs(inputs["space"], inputs["base"], inputs["key"], jnp.arange(n),
                                   family == "random", tables, rows)
    return lead(state), {v: lead(d) for v, d in decisions.items()}, {v: np.ones(n, bool) for v in VARIANTS}


_draw_states = jax.jit(dist.draw_states, static_argnums=0)
_solved = jax.jit(dist.solved_decisions, static_argnums=0)


def _violations(states, decision, metrics, i):
    """`constraint_violations` of pair i, fed only the fields it reads (cheap slices)."""
    view = types.SimpleNamespace
    state = view(gamma0_bytes=states.gamma0_bytes[i], gamma_max_k_bytes=states.gamma_max_k_bytes[i],
                 E_max_k_j=states.E_max_k_j[i], E_max_n_j=states.E_max_n_j[i])
    return {v["constraint"] for v in constraint_violations(
        state, view(delta=decision.delta[i]), view(E_sch_j=metrics.E_sch_j[i], E_com_j=metrics.E_com_j[i]))}


def _order_statistic(values, q):
    return np.sort(values)[math.floor(q * (len(values) - 1))]


def test_sweep_numbers_equal_an_independent_evaluation(swept):
    rows = swept["tables"]["distributions"]
    assert len(rows) == len(dist.settings()) * len(dist.FAMILIES) * len(VARIANTS)
    batched = jax.jit(jax.vmap(evaluate, in_axes=(0, 0, None)), static_argnums=2)
    for s_index, (label, scenario) in enumerate(dist.settings()):
        inputs = dist.setting_inputs(TINY, s_index, scenario)
        for family in dist.FAMILIES:
            count = dist.family_pairs(TINY, family)
            all_states, all_decisions, solved = _pairs_of(inputs, family, count)
            for variant in VARIANTS:
                row = next(r for r in rows if (r["setting"], r["family"], r["variant"]) == (label, family, variant))
                keep = solved[variant]
                states = jax.tree.map(lambda x: x[keep], all_states)  # noqa: B023
                decisions = {variant: jax.tree.map(lambda x: x[keep], all_decisions[variant])}  # noqa: B023
                m = jax.tree.map(np.asarray, batched(states, decisions[variant], variant))
                tau = np.asarray(m.tau_round_s, np.float64)
                energy = np.asarray(m.E_com_j, np.float64).sum(1) + np.asarray(m.E_pipe_j, np.float64).sum(1)
                assert row["pairs"] == keep.sum() and row["unsolved"] == count - keep.sum()
                assert row["nonfinite"] == 0
                for name, x in (("tau_round_s", tau), ("energy_j", energy)):
                    np.testing.assert_allclose(row[f"{name}_mean"], x.mean(), rtol=1e-5)
                    np.testing.assert_allclose([row[f"{name}_min"], row[f"{name}_max"]], [x.min(), x.max()], rtol=1e-6)
                    for q in dist.QUANTILES:  # within one histogram bin of the order statistic
                        exact = _order_statistic(x, q)
                        got = row[f"{name}_q{round(100 * q):02d}"]
                        assert exact / dist.BIN_RATIO / (1 + 1e-5) <= got <= exact * dist.BIN_RATIO * (1 + 1e-5), \
                            (label, family, variant, name, q, got, exact)
                np.testing.assert_allclose(row["Gamma_mean"], np.asarray(m.Gamma, np.float64).mean(), rtol=1e-5)
                broken = {"C7": 0, "C9": 0, "C11": 0, "feasible": 0}
                for i in range(int(keep.sum())):
                    found = _violations(states, decisions[variant], m, i)
                    broken["C7"] += "C7" in found
                    broken["C9"] += "C9'" in found
                    broken["C11"] += "C11'" in found
                    broken["feasible"] += bool(found)
                for c, n in broken.items():
                    assert row[f"frac_{c}"] == pytest.approx(1 - n / keep.sum(), abs=1e-12), (label, family, variant, c)


def test_families_differ_as_built(swept):
    rows = swept["tables"]["distributions"]
    for label, scenario in dist.settings():
        uniform = [r for r in rows if r["setting"] == label and r["family"] == "uniform"]
        # the uniform decision meets C7 (2 TEBs of γ_0 per device) on every draw
        assert all(r["frac_C7"] == 1.0 for r in uniform)
        random = [r for r in rows if r["setting"] == label and r["family"] == "random"]
        assert all(r["frac_C7"] < 1.0 for r in random)  # S = 1 plans hold all L TEBs on one device
        # DSSRA solved on every pair's own draw: each solved decision meets C7, C9' and C11'
        solved = [r for r in rows if r["setting"] == label and r["family"] == "dssra"]
        assert all(r["frac_feasible"] == 1.0 and r["pairs"] + r["unsolved"] == TINY.pairs for r in solved)
    refs = swept["tables"]["dssra-references"]
    assert len(refs) == len(dist.settings()) * len(VARIANTS) * TINY.references and all(r["feasible"] for r in refs)


def test_dssra_family_takes_the_first_solved_pairs():
    quick = dist.SCALE_CONFIGS["quick"]
    assert quick.solved_pairs < quick.pairs
    assert dist.family_pairs(quick, "dssra") == quick.solved_pairs
    assert all(dist.family_pairs(quick, f) == quick.pairs for f in dist.FAMILIES if f != "dssra")
    assert all(dist.family_pairs(TINY, f) == TINY.pairs for f in dist.FAMILIES)


@pytest.mark.parametrize("families", [(), ("uniform", "optimal")])
def test_families_must_be_known(families):
    with pytest.raises(ValueError, match="families"):
        dist.DistributionConfig(pairs=8, references=1, grid=2, families=families)


def test_state_mapping_is_draw_states():
    scenario = scenario_preset("paper-bert")
    space = dist.PairSpace.of(scenario)
    key = jax.random.PRNGKey(11)
    keys = jax.random.split(key, 6)  # draw_state's own keys and uniforms, one per ranged field
    u = jnp.concatenate([jax.random.uniform(k, shape).ravel() for k, shape in zip(keys, space.shapes)])
    assert u.shape == (space.state_words,)
    mine, theirs = dist.state_from_uniforms(space, mean_state(scenario), u), draw_state(scenario, key)
    assert jax.tree.structure(mine) == jax.tree.structure(theirs)
    for name, a, b in zip(mine.__dataclass_fields__, jax.tree.leaves(mine), jax.tree.leaves(theirs)):
        # the same float32 operations; 2 ulp leave room for a fused multiply-add on one side
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2.5e-7, err_msg=name)


def test_pair_uniforms_depend_only_on_the_pair():
    key = jax.random.PRNGKey(5)
    whole = np.asarray(_uniforms(key, jnp.arange(300), 7))
    part = np.asarray(dist.pair_uniforms(key, jnp.arange(120, 130), 7))  # eager, another shape
    np.testing.assert_array_equal(whole[:, 120:130], part)
    assert whole.shape == (7, 300) and 0.0 <= whole.min() and whole.max() < 1.0
    assert abs(whole.mean() - 0.5) < 0.02 and len(np.unique(whole)) == whole.size


@pytest.mark.parametrize("scenario", [
    scenario_preset("paper-bert"),
    Scenario(N=5, K=6, J=3, L=4, b=8),  # more clusters than channels, fewer TEBs than devices
])
def test_random_plans_are_valid(scenario):
    space = dist.PairSpace.of(scenario)
    n = 1500
    u = _uniforms(jax.random.PRNGKey(2), jnp.arange(n), space.decision_words)
    decisions = jax.jit(jax.vmap(lambda v: dist.random_decision(space, v), in_axes=-1))(u)
    decisions = jax.tree.map(np.asarray, decisions)
    delta, rank = np.asarray(decisions.delta), np.asarray(decisions.rank)
    m, channel, p = np.asarray(decisions.m), np.asarray(decisions.channel), np.asarray(decisions.p_n_w)
    S = (delta > 0).sum(-1)
    K = scenario.K
    assert np.all(delta >= 0) and np.all(delta.sum(-1) == scenario.L)  # C1
    assert np.all((S >= 1) & (S <= min(K, scenario.L)))  # C2
    # the scheduled devices hold the ranks 0..S-1 once each, the others -1
    ranks = np.sort(np.where(delta > 0, rank, K), axis=-1)
    np.testing.assert_array_equal(ranks, np.where(np.arange(K) < S[..., None], np.arange(K), K))
    assert np.all(rank[delta == 0] == -1)
    for i in range(n):
        used = channel[i][channel[i] >= 0]
        assert len(set(used)) == len(used) == min(scenario.N, scenario.J)  # C6, every channel in use
    for i in range(200):  # make_decision validates C1, the orders, m, C6 and C8 once more
        make_decision(scenario, delta[i], m[i], channel[i], p[i], orders_of(jax.tree.map(lambda x: x[i], decisions)))
    assert np.all((m >= 1) & (m <= scenario.b))
    assert np.all((p >= scenario.P_max_n_w / 10 - 1e-7) & (p <= scenario.P_max_n_w))
    # every stage count, every device and every m turns up, about uniformly
    counts = np.bincount(S.ravel(), minlength=min(scenario.K, scenario.L) + 1)[1:]
    assert counts.min() > 0.8 * counts.mean()
    assert set(np.unique(rank[rank >= 0])) == set(range(min(scenario.K, scenario.L)))
    assert set(np.unique(m)) == set(range(1, scenario.b + 1))


def test_histogram_quantiles_against_numpy():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.lognormal(3.0, 2.0, 5000), [3e-8, 2e11]])  # one value past each end
    counts = np.asarray(dist.log_histogram(jnp.asarray(x, jnp.float32), jnp.ones(x.size, bool)))
    assert counts.sum() == x.size and counts[0] == 1 and counts[-1] == 1
    xf = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    got = dist.histogram_quantiles(counts, xf.min(), xf.max(), (0.0, 0.1, 0.5, 0.9, 1.0))
    for q, v in zip((0.0, 0.1, 0.5, 0.9, 1.0), got):
        exact = _order_statistic(xf, q)
        assert exact / dist.BIN_RATIO / (1 + 1e-6) <= v <= exact * dist.BIN_RATIO * (1 + 1e-6), (q, v, exact)
    coarse = dist.coarse_histogram(counts, xf.min(), xf.max(), bins=40)
    assert sum(r["count"] for r in coarse) == x.size and len(coarse) <= 40
    assert all(a["high"] == pytest.approx(b["low"]) for a, b in zip(coarse, coarse[1:]))


def test_gradient_map_is_the_closed_form(swept):
    """At the mean state every cluster ties; Σ_n ∂τ/∂p_n is then dτ^up/dp of Eq. 10/11:
    τ^up = bits / (B log2(1 + p h / (I + B N0))), and τ − τ^up (the pipeline) is the same
    everywhere on the grid."""
    rows = swept["tables"]["power-gradient-map"]
    assert len(rows) == len(dist.settings()) * len(VARIANTS) * TINY.grid ** 2
    for label, s in dist.settings():
        h, B = float(np.mean(s.h_n)), float(np.mean(s.B_U_hz))
        bits = s.uploaded_theta_bits + s.z_enc_bits  # the lora:8 setting uploads the adapters
        for variant in VARIANTS:
            sel = [r for r in rows if r["setting"] == label and r["variant"] == variant]
            p, interference = np.array([r["p_n_w"] for r in sel]), np.array([r["I_w"] for r in sel])
            snr = p * h / (interference + B * s.N0_w_per_hz)
            tau_up = bits / (B * np.log2(1 + snr))
            dtau = -tau_up * (h / (interference + B * s.N0_w_per_hz)) / ((1 + snr) * np.log(1 + snr))
            np.testing.assert_allclose([r["dtau_dp_n"] for r in sel], dtau, rtol=2e-4)
            tau = np.array([r["tau_round_s"] for r in sel])
            pipeline = tau - tau_up  # float32 τ: a few ulp of the largest τ
            assert np.all(pipeline > 0)
            np.testing.assert_allclose(pipeline, pipeline[0], atol=2e-6 * tau.max())


def test_files_summary_and_device(swept):
    folder, summary = swept["out"], swept["summary"]
    for name in ("distributions", "histograms", "dssra-references", "power-gradient-map", "throughput"):
        assert (folder / f"{name}.csv").read_text().count("\n") > 1, name
    for png in ("distributions.png", "power-gradient-map.png"):
        assert (folder / png).stat().st_size > 1000
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    device = jax.local_devices()[0]
    assert summary["device"]["kind"] == device.device_kind and summary["device"]["platform"] == device.platform
    assert summary["device"]["devices"] == jax.device_count() and summary["device"]["chunk"] == TINY.chunk
    throughput = swept["tables"]["throughput"]
    assert summary["pairs"] == sum(r["pairs"] for r in throughput) == sum(dist.family_pairs(TINY, f) for f in dist.FAMILIES) * len(dist.settings())
    assert summary["pairs_per_s"] > 0 and all(r["evaluations"] == 2 * r["pairs"] for r in throughput)
    # paper scale without an accelerator warns and estimates its duration; with one it does not
    warned = "warning" in swept["stderr"] and "minutes" in swept["stderr"]
    assert warned == (device.platform == "cpu"), swept["stderr"]


def test_chunk_size_follows_the_device():
    cpu = {"platform": "cpu", "devices": 2, "memory_bytes": None}
    assert dist.chunk_size(cpu, 1 << 24) == dist.CPU_CHUNK
    assert dist.chunk_size(cpu, 1000) == 512  # no more than a device's share, a power of two
    gpu = {"platform": "gpu", "devices": 1, "memory_bytes": 80e9}
    assert dist.chunk_size(gpu, 1 << 24) == dist.MAX_CHUNK
    small = {"platform": "gpu", "devices": 1, "memory_bytes": 4e9}
    chunk = dist.chunk_size(small, 1 << 24)
    assert chunk < dist.MAX_CHUNK and 16 * chunk * dist.PAIR_BYTES <= 4e9 < 32 * chunk * dist.PAIR_BYTES
