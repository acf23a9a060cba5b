"""Every sweep's figures, drawn from small synthetic tables with the sweeps' real schemas: no text
of one panel (title, axis labels, tick labels, legend) overlaps another panel or its text, every
panel has a title and labelled axes with units, and the figures show what their tables hold
(Fig. 11's accumulated latency and its band, the centralized reference, panels left out)."""

import functools
import itertools
import math
import pathlib
import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.container import BarContainer, ErrorbarContainer

from collapipe_jax.scheduling.policies import ABLATIONS, PAPER_BASELINES
from collapipe_jax.sweep import SWEEPS, distributions, frameworks, plots, policies, segments, training
from collapipe_jax.system.latency import VARIANTS

UNIT = re.compile(r"\[[^\]]+\]\s*$")
NUMBER = re.compile(r"[-+]?[\d.,]+(e[-+]?\d+)?%?|\$.*\$")  # plain or mathtext (10^2) tick labels
TOLERANCE_PX2 = 1.0  # intersections below a pixel are rounding, not overlap


# --------------------------------------------------------------------------- synthetic tables


def rng(seed=0):
    return np.random.default_rng(seed)


def microbatch_tables(std_share: float | None = None):
    """Means from 1 to 33 s; the standard deviation 0.01 s (bands thinner than the lines), or
    `std_share` of each mean."""
    r = rng(1)
    rows = [{"preset": p, "variant": v, "m": m, "tau_pipe_s_mean": float(1 + r.random() * m), "tau_pipe_s_std": 0.01,
             "draws": 8} for p in ("paper-bert", "paper-transformer") for v in VARIANTS for m in (1, 2, 4, 8, 16, 32)]
    for row in rows if std_share is not None else ():
        row["tau_pipe_s_std"] = std_share * row["tau_pipe_s_mean"]
    return {"latency-vs-microbatches": rows}


def power_tables():
    rows = []
    for preset in ("paper-bert", "paper-transformer"):
        for p in np.linspace(0.05, 0.5, 6):
            rows.append({"preset": preset, "p_n_w": float(p), "tau_up_s": float(400 / p), "E_com_j": float(60 + p),
                         "dtau_up_dp_n": float(-400 / p ** 2), "dtau_smooth_dp_n_sum": float(-400 / p ** 2),
                         "Gamma": 0.06, "E_max_n_j": 10.0})
    return {"latency-vs-power": rows}


def memory_tables():
    return {"memory": [{"preset": p, "delta": d, "L": 12, "batch": 64, "xla_peak_bytes": 5e8 * d,
                        "xla_temp_bytes": 4e8 * d, "xla_argument_bytes": 4e7 * d, "analytic_bytes": 3e8 * d}
                       for p in ("paper-bert", "paper-transformer") for d in (1, 2, 4, 6, 12)]}


DIST_SETTINGS = ("paper-bert, lora:8, Table II", "paper-bert, full upload, E_n^max 1000 J")


def distribution_tables():
    r = rng(2)
    hists, dist, grad = [], [], []
    edges = np.geomspace(10, 1000, 25)
    for s in DIST_SETTINGS:
        for family in distributions.FAMILIES:
            for variant in VARIANTS:
                dist.append({"setting": s, "family": family, "variant": variant, "pairs": 4096,
                             "tau_round_s_q50": 100.0, "frac_feasible": 1.0})
                for q in distributions.QUANTITIES:
                    hists += [{"setting": s, "family": family, "variant": variant, "quantity": q, "low": float(lo),
                               "high": float(hi), "count": 1, "density_per_decade": float(r.random())}
                              for lo, hi in zip(edges[:-1], edges[1:])]
            for variant in VARIANTS:
                pass
        for variant in VARIANTS:
            grad += [{"setting": s, "variant": variant, "p_n_w": float(p), "I_w": float(i), "tau_round_s": 100.0,
                      "dtau_dp_n": float(-100 / p / (1 + i))}
                     for p in np.linspace(0.02, 0.5, 6) for i in np.geomspace(0.006, 0.8, 5)]
    return {"distributions": dist, "histograms": hists, "power-gradient-map": grad, "dssra-references": [],
            "throughput": []}


def segment_tables():
    r = rng(3)
    fig4 = [{"flops": f, "variant": v, "S": S, "m": m, "tau_pipe_s": float(1 + r.random() * S * m), "draws": 8}
            for f, _ in segments.FLOPS for v in VARIANTS for S in (1, 2, 3, 6) for m in range(1, 65)]
    fig5 = []
    for upload in ("full", "lora:8"):
        for f, _ in segments.FLOPS:
            for v in VARIANTS:
                for t in range(4):
                    for rank in range(3):
                        fig5.append({"flops": f, "variant": v, "tunable": upload, "round": t, "rank": rank,
                                     "cluster": rank, "S": int(5 - rank), "m": int(r.integers(1, 64)),
                                     "min_S_memory": 3, "tau_pipe_s": float(1 + r.random()),
                                     "uniform_tau_pipe_s": float(2 + r.random()), "uniform_m": 1})
    return {"fig4": fig4, "fig5": fig5}


POLICY_SETTINGS = [policies.setting_label(u, N, J, v) for u in ("full", "lora:8") for N, J in policies.CLUSTERS
                   for v in VARIANTS]
ROUNDS = 12


def policy_tau(policy: str, setting_index: int, t: int) -> float:
    """A synthetic τ(t): random-feasible ~30× the others, the others ~10% apart."""
    base = 100.0 * (1 + setting_index) * (1 + 0.1 * (t % 3))
    return base * (30.0 if policy == "random-feasible" else 1 + 0.02 * policies.POLICIES.index(policy))


def policy_tables(seeds: bool = False):
    totals, per_round = [], []
    for k, setting in enumerate(POLICY_SETTINGS):
        for policy in policies.POLICIES:
            for V in policies.VS:
                taus = [policy_tau(policy, k, t) for t in range(ROUNDS)]
                totals.append({"setting": setting, "N": 3, "J": 4, "tunable": "full", "variant": "paper", "V": V,
                               "policy": policy, "uses_V": policy in policies.V_POLICIES, "rounds": ROUNDS,
                               "total_latency_s": sum(taus), "total_cmp_s": 1.0, "total_up_s": sum(taus) - 1,
                               "mean_solve_ms": 1.0, "max_Y": 0.0, "mean_Gamma": 0.05, "violating_rounds": 0})
                if V in (policies.CLAIM_V, 10.0):
                    cum = np.cumsum(taus)
                    for t, tau in enumerate(taus):
                        row = {"setting": setting, "V": V, "policy": policy, "round": t, "tau_round_s": tau,
                               "max_Y": 0.1 * t, "mean_Gamma": 0.05, "solve_ms": 1.0}
                        if seeds:  # the seeded compute's columns: a mean that is not the running sum here
                            row.update(cum_latency_s=2 * cum[t], cum_latency_lo=1.9 * cum[t],
                                       cum_latency_hi=2.1 * cum[t], n=5)
                        per_round.append(row)
    return {"policies": totals, "policies-per-round": per_round}


def framework_tables(intervals: bool = False, same_computation: bool = False):
    """Random times per framework and upload; `same_computation`: each lora:8 row takes the full
    upload's computation and D2D times (what the engine gives when the decisions do not depend on
    the upload)."""
    r = rng(4)
    rows = []
    for figure, model in frameworks.FIGURES:
        for upload in ("full", "lora:8"):
            for variant in VARIANTS:
                for name, _, _ in frameworks.ENTRANTS:
                    cmp_, dd, up = float(1 + 10 * r.random()), float(50 * r.random()), float(1e4 * (1 + r.random()))
                    row = {"figure": figure, "model": model, "tunable": upload, "variant": variant,
                           "framework": name, "rounds": 30, "total_cmp_s": cmp_, "total_dd_s": dd,
                           "total_up_s": up, "total_latency_s": cmp_ + dd + up, "violating_rounds": 0,
                           "violated": "", "mean_S": 3.0, "mean_m": 2.0}
                    if intervals:
                        for f in ("total_cmp", "total_dd", "total_up", "total_latency"):
                            row.update({f"{f}_lo": 0.9 * row[f"{f}_s"], f"{f}_hi": 1.1 * row[f"{f}_s"]})
                        row["n"] = 5
                    rows.append(row)
    if same_computation:
        full = {(r["figure"], r["variant"], r["framework"]): r for r in rows if r["tunable"] == "full"}
        for row in rows:
            twin = full[(row["figure"], row["variant"], row["framework"])]
            row.update(total_cmp_s=twin["total_cmp_s"], total_dd_s=twin["total_dd_s"])
            row["total_latency_s"] = row["total_cmp_s"] + row["total_dd_s"] + row["total_up_s"]
    return {"frameworks": rows}


def training_tables(centralized: bool = False, ner_at_floor: bool = True, evaluated_rounds=(4, 9)):
    rows, finals = [], []
    names = training.FRAMEWORKS + (("centralized",) if centralized else ())
    for task in training.TASKS:
        metric = training.TASK_METRIC[task]
        for framework in names:
            elapsed = 0.0
            for t in range(10):
                elapsed += 1.0
                evaluated = t in evaluated_rounds
                value = 0.0 if (task != "toutiao" and ner_at_floor) else 0.1 * (t + 1)
                rows.append({"S": 1.0, "m": 1.0, "task": task, "framework": framework, "round": t,
                             "loss": 3.0 - 0.1 * t, "tau_round_s": 1.0, "cumulative_latency_s": elapsed,
                             "energy_j": 1.0, "round_cmp_s": 0.1, "round_up_s": 0.9,
                             f"metric_{metric}": value if evaluated else None})
            finals.append({"task": task, "framework": framework, "rounds": 10, "model": "tiny", "batch": 16,
                           "n_classes": 15 if task == "toutiao" else None,
                           "local_steps": 5, "final_loss": 2.1 if framework == "centralized" else 2.2,
                           "total_latency_s": elapsed, "total_energy_j": 10.0, "wall_s": 1.0, "violating_rounds": 0,
                           f"final_{metric}": 0.77 if framework == "centralized" else value})
    return {"training": rows, "training-final": finals}


SM_SEEDS = (0, 1, 2)


def sm_loss(schedule: str, S: int, m: int, seed: int, t: int) -> float:
    """Synthetic losses: gpipe's the same for every plan, pipedream's moved by S, m and the seed."""
    return 9.0 - t + (0.0 if schedule == "gpipe" else 0.1 * S + 0.05 * m) + 0.2 * seed


def sm_tables():
    rows = []
    for task, schedule, seed in itertools.product(training.SM_TASKS, training.SCHEDULES, SM_SEEDS):
        for S, m in training.sm_plans(task, "quick"):
            elapsed = 0.0
            for t in range(3):
                elapsed += S + 1 / m
                metric = {"multi30k": "metric_bleu", "ner": "metric_entity_f1"}[task]
                rows.append({"S": S, "m": m, "task": task, "model": "tiny", "rounds": 3, "round": t, "seed": seed,
                             "schedule": schedule, "loss": sm_loss(schedule, S, m, seed, t),
                             "tau_round_s": S + 1 / m, "cumulative_latency_s": elapsed,
                             metric: (0.1 * S + seed) if t == 2 else None})
    return {"learning-vs-s-m": rows}


def scaling_tables():
    """DSSRA's change against each rule and its queues along each axis (the scaling sweep's schema)."""
    from collapipe_jax.sweep import scaling

    rows, gains = [], []
    for axis, values in scaling.AXES["paper"]:
        for i, value in enumerate(values):
            point = dict(scaling.BASE, **{axis: value})
            for rule in scaling.RULES["paper"]:
                rows.append({"axis": axis, "value": value, **point, "policy": rule, "rounds": 4, "n": 8,
                             "total_latency_s": 100.0 + i, "total_latency_s_lo": 99.0 + i,
                             "total_latency_s_hi": 101.0 + i, "max_Y": 0.1 * i, "max_Y_lo": 0.0, "max_Y_hi": 0.2 * i})
            for j, rule in enumerate(scaling.RULES["paper"][1:]):
                change = -2.0 * (j + 1) - i
                gains.append({"axis": axis, "value": value, **point, "baseline": rule, "n": 8, "change_pct": change,
                              "change_pct_lo": change - 1.0, "change_pct_hi": change + 1.0})
    cost = [{**scaling.point_of("N", N), "seeds": 8, "rounds": 10, "device_s_per_round": 1e-4 * N,
             "device_first_call_s": 5.0 + N / 10, "device_marginal_call_s": 8e-3 * N, "host_rounds": scaling.HOST_ROUNDS[N],
             "host_s_per_round": 1e-3 * N ** 1.5} for N in scaling.N_VALUES]
    return {"scaling": rows, "scaling-gains": gains, "scaling-cost": cost}


TABLES = {
    "scaling": scaling_tables,
    "latency-vs-microbatches": microbatch_tables, "latency-vs-power": power_tables, "memory": memory_tables,
    "distributions": distribution_tables, "segments": segment_tables, "policies": policy_tables,
    "frameworks": framework_tables, "training": training_tables, "learning-vs-s-m": sm_tables,
}


# --------------------------------------------------------------------------- drawing and checks


VARIANTS_OF = {  # the schemas the compute will grow into: seeds and intervals, the centralized reference
    "policies-seeded": ("policies", lambda: policy_tables(seeds=True)),
    "frameworks-intervals": ("frameworks", lambda: framework_tables(intervals=True)),
    "frameworks-same": ("frameworks", lambda: framework_tables(same_computation=True)),
    "microbatches-wide": ("latency-vs-microbatches", lambda: microbatch_tables(std_share=0.3)),
    "training-centralized": ("training", lambda: training_tables(centralized=True, ner_at_floor=False)),
    "training-one-evaluation": ("training", lambda: training_tables(ner_at_floor=False, evaluated_rounds=(3,))),
}
CASES = {**{name: (name, make) for name, make in TABLES.items()}, **VARIANTS_OF}


@functools.cache
def drawn(case: str) -> dict:
    """A sweep's figures drawn from the case's synthetic tables, laid out and rendered (each case
    once per session: the checks below share them); {png name: Figure}."""
    name, make = CASES[case]
    saved = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_figure", lambda fig, path: saved.__setitem__(path.name, fig))
        SWEEPS[name].plot(make(), pathlib.Path("unused"))  # save_figure is replaced: nothing is written
    for fig in saved.values():
        FigureCanvasAgg(fig)
        fig.canvas.draw()
    return saved


def is_colorbar(ax) -> bool:
    return hasattr(ax, "_colorbar")


def drawn_ticklabels(axis):
    """The tick labels matplotlib draws: visible, not empty, and at a tick inside the view."""
    lo, hi = sorted(axis.get_view_interval())
    out = []
    for locs, labels in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                         (axis.get_minorticklocs(), axis.get_minorticklabels())):
        slack = 1e-9 * max(abs(lo), abs(hi), 1e-300)
        out += [t for x, t in zip(locs, labels) if t.get_visible() and t.get_text() and lo - slack <= x <= hi + slack]
    return out


def visible_texts(ax):
    """The text of one axes that must stay clear of other axes: titles, labels, tick labels, legend."""
    texts = [t for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label)
             if t.get_visible() and t.get_text()]
    for axis in (ax.xaxis, ax.yaxis):
        texts += drawn_ticklabels(axis)
    legend = ax.get_legend()
    return texts + ([legend] if legend is not None else [])


def area(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def describe(artist) -> str:
    return repr(artist.get_text()) if hasattr(artist, "get_text") else type(artist).__name__


def overlaps(fig) -> list[str]:
    """Every pair (text of axes A, text or frame of axes B ≠ A) that intersects, every figure-level
    legend or note over an axes, every text outside the figure, and every legend over its own data."""
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    boxes = {id(ax): [(describe(t), t.get_window_extent(renderer)) for t in visible_texts(ax)] for ax in axes}
    found = []
    for a in axes:
        for b in axes:
            if a is b:
                continue
            others = boxes[id(b)] + [("frame", b.get_window_extent(renderer))]
            for name_a, box_a in boxes[id(a)]:
                for name_b, box_b in others:
                    if area(box_a, box_b) > TOLERANCE_PX2:
                        found.append(f"{name_a} of {a.get_title()!r} over {name_b} of {b.get_title()!r}")
        legend = a.get_legend()
        if legend is not None and area(legend.get_window_extent(renderer), a.get_window_extent(renderer)) > 0:
            found.append(f"the legend of {a.get_title()!r} over its data")
    figure_texts = list(fig.legends) + [t for t in (fig._suptitle, fig._supxlabel, fig._supylabel)
                                        if t is not None and t.get_text()]
    for t in figure_texts:
        box = t.get_window_extent(renderer)
        for ax in axes:
            if area(box, ax.get_tightbbox(renderer)) > TOLERANCE_PX2:
                found.append(f"figure text {describe(t)} over {ax.get_title()!r}")
    for t in figure_texts + [t for ax in axes for t in visible_texts(ax)]:
        box, page = t.get_window_extent(renderer), fig.bbox
        if box.x0 < page.x0 - 1 or box.y0 < page.y0 - 1 or box.x1 > page.x1 + 1 or box.y1 > page.y1 + 1:
            found.append(f"{describe(t)} outside the figure")
    return found


def categorical(axis) -> bool:
    """An axis whose ticks are names (frameworks, settings): it needs no unit."""
    labels = [t.get_text() for t in drawn_ticklabels(axis)]
    return bool(labels) and not any(NUMBER.fullmatch(s.replace("\N{MINUS SIGN}", "-")) for s in labels)


def unlabelled(fig) -> list[str]:
    """Panels without a title, and axes with visible tick labels but no label or no unit."""
    missing = []
    for ax in fig.axes:
        if not ax.get_visible() or is_colorbar(ax):
            if is_colorbar(ax) and not UNIT.search(ax.get_ylabel() or ax.get_xlabel()):
                missing.append("a colour bar without a label with its unit")
            continue
        if not ax.get_title().strip():
            missing.append(f"a panel without a title ({ax.get_xlabel()!r}, {ax.get_ylabel()!r})")
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if not drawn_ticklabels(axis):
                continue  # a shared axis whose ticks are labelled on the neighbouring panel
            if not label.strip():
                missing.append(f"{ax.get_title()!r}: an axis without a label")
            elif not categorical(axis) and not UNIT.search(label):
                missing.append(f"{ax.get_title()!r}: {label!r} has no unit in brackets")
    return missing


# --------------------------------------------------------------------------- the tests


def test_every_sweep_has_synthetic_tables():
    assert set(TABLES) == set(SWEEPS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_figures_have_no_overlapping_text_and_label_every_axis(case):
    figures = drawn(case)
    assert figures, f"{case} drew no figure"
    for png, fig in figures.items():
        assert overlaps(fig) == [], png
        assert unlabelled(fig) == [], png
        width, height = fig.get_size_inches()
        assert width * height <= 30 * 20 and max(width / height, height / width) < 5, (png, width, height)


def test_the_checks_find_overlaps_and_missing_units():
    """The checks above can fail: panels packed without a layout, long titles and tick labels run
    into their neighbours; labels without units are named."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    axes = fig.subplots(2, 2)
    for ax in axes.ravel():
        ax.plot([1, 2], [1e6, 2e6])
        ax.set_title("a title long enough to run into the panel beside it", fontsize=12)
        ax.set_xlabel("time")
        ax.set_ylabel("latency [s]")
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    assert any("over" in o for o in overlaps(fig))
    assert any("'time' has no unit" in m for m in unlabelled(fig))


def title(ax) -> str:
    return ax.get_title().replace("\n", " ")


def lines_of(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_fig11_draws_the_running_sum_of_tau_per_policy_and_setting():
    fig = drawn("policies")["policies.png"]
    panels = [ax for ax in fig.axes if ax.get_title().startswith("(")]
    assert len(panels) == len(POLICY_SETTINGS)
    for k, ax in enumerate(panels):
        curves = lines_of(ax)
        assert "random-feasible" not in curves  # off the shared scale
        assert set(curves) == set(("dssra",) + PAPER_BASELINES + ABLATIONS) - {"random-feasible"}
        for policy, line in curves.items():
            expected = np.cumsum([policy_tau(policy, k, t) for t in range(ROUNDS)])
            np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
        assert not any(isinstance(c, PolyCollection) for c in ax.collections)  # no band without intervals
    # random-feasible is in a panel of its own, with DSSRA's totals beside it
    own = [ax for ax in fig.axes if "random-feasible" in ax.get_title()]
    assert len(own) == 1 and own[0].get_yscale() == "log"


def test_fig11_uses_the_seeded_mean_and_draws_its_95_percent_band():
    fig = drawn("policies-seeded")["policies.png"]
    ax = next(ax for ax in fig.axes if ax.get_title().startswith("(1)"))
    dssra = lines_of(ax)["dssra"]
    expected = 2 * np.cumsum([policy_tau("dssra", 0, t) for t in range(ROUNDS)])
    np.testing.assert_allclose(dssra.get_ydata(), expected, rtol=1e-12)
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(lines_of(ax))
    top = bands[0].get_paths()[0].vertices[:, 1].max()
    assert math.isclose(top, 2.1 * expected[-1] / 2, rel_tol=1e-9)
    assert "95%" in fig._supxlabel.get_text()


def test_frameworks_show_computation_apart_from_the_upload_and_error_bars_with_intervals():
    fig = drawn("frameworks")["frameworks.png"]
    computation = [ax for ax in fig.axes if ": computation" in title(ax)]
    assert len(computation) == len(frameworks.FIGURES) * len(VARIANTS)
    # the computation panel's scale is the computation's, not the upload's
    assert all(ax.get_xlim()[1] < 100 for ax in computation)
    assert not any(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers)
    fig = drawn("frameworks-intervals")["frameworks.png"]
    assert any(isinstance(c, ErrorbarContainer) for ax in fig.axes for c in ax.containers)


def hatched_bars(fig) -> int:
    return sum(1 for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer)
               for bar in c.patches if bar.get_hatch())


def test_frameworks_caption_names_hatched_bars_only_where_they_are_drawn():
    """A second (hatched) bar per framework where the lora:8 upload's computation differs from
    the full upload's, and the caption says so; where it never differs, one bar and the caption
    says the times are the same (it once named hatched bars that were not drawn)."""
    differs, same = drawn("frameworks")["frameworks.png"], drawn("frameworks-same")["frameworks.png"]
    computation = [ax for ax in differs.axes if ": computation" in title(ax)]
    assert hatched_bars(differs) == 2 * len(computation) * len(frameworks.ENTRANTS)  # computation and D2D columns
    assert "hatched bars: the lora:8 upload" in " ".join(differs._supxlabel.get_text().split())
    assert hatched_bars(same) == 0
    caption = " ".join(same._supxlabel.get_text().split())
    assert "hatched" not in caption and "the same under the full and lora:8 uploads" in caption


def test_microbatch_bands_are_drawn_and_the_note_says_when_they_are_too_thin_to_see():
    for case, thin in (("latency-vs-microbatches", True), ("microbatches-wide", False)):
        fig = drawn(case)["latency-vs-microbatches.png"]
        rows = CASES[case][1]()["latency-vs-microbatches"]
        for ax in fig.axes:  # one band per variant, ± 1 SD around the mean
            bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
            assert len(bands) == len(VARIANTS)
            preset = title(ax).split(":")[0]
            top = max(r["tau_pipe_s_mean"] + r["tau_pipe_s_std"] for r in rows if r["preset"] == preset)
            assert math.isclose(max(b.get_paths()[0].vertices[:, 1].max() for b in bands), top, rel_tol=1e-6)
        note = " ".join(fig._supxlabel.get_text().split())
        widest = max(r["tau_pipe_s_std"] for r in rows)
        assert f"at most {widest:.2g} s" in note
        assert ("not visible" in note) == thin, note


def test_scaling_titles_name_the_scenario_and_coinciding_markers_stay_visible():
    from collapipe_jax.sweep import scaling

    figures = drawn("scaling")
    assert set(figures) == {f"scaling-{axis}.png" for axis, _ in scaling.AXES["paper"]} | {"scaling-cost.png"}
    for name, fig in figures.items():
        if name == "scaling-cost.png":
            continue
        head = " ".join(fig.legends[0].get_title().get_text().split())
        assert "paper-bert, lora:8 upload" in head
        curves = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("DSSRA vs")]
        sizes = [line.get_markersize() for line in curves]
        # drawn in order, each later curve's markers smaller and on top: one inside the other
        assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
        assert [line.get_zorder() for line in curves] == sorted(line.get_zorder() for line in curves)


def test_scaling_draws_both_engines_cost_against_n_on_log_log_axes():
    from collapipe_jax.sweep import scaling

    fig = drawn("scaling")["scaling-cost.png"]
    cost = scaling_tables()["scaling-cost"]
    per_round, first = fig.axes[0], fig.axes[1]
    assert all(ax.get_xscale() == "log" and ax.get_yscale() == "log" for ax in (per_round, first))
    curves = {line.get_label(): line for line in per_round.get_lines()}
    device = next(v for k, v in curves.items() if k.startswith("device"))
    host = next(v for k, v in curves.items() if k.startswith("host"))
    assert list(device.get_xdata()) == list(scaling.N_VALUES) == list(host.get_xdata())
    assert list(device.get_ydata()) == [c["device_s_per_round"] for c in cost]
    assert list(host.get_ydata()) == [c["host_s_per_round"] for c in cost]
    note = " ".join(fig._supxlabel.get_text().split())
    fewest, most = min(scaling.HOST_ROUNDS.values()), max(scaling.HOST_ROUNDS.values())
    assert f"few rounds only ({fewest}–{most} rounds" in note  # the host's rounds timed, said in the caption


def test_training_leaves_out_metrics_at_the_floor_and_draws_the_centralized_reference():
    fig = drawn("training")["training.png"]
    titles = [ax.get_title() for ax in fig.axes]
    assert not any("entity F1" in t or "BLEU" in t for t in titles)
    assert any("accuracy" in t for t in titles)
    note = fig._supxlabel.get_text()
    assert "entity F1" in note and "BLEU" in note
    assert not any(line.get_linestyle() == "--" and line.get_color() == "k" for ax in fig.axes
                   for line in ax.get_lines())

    fig = drawn("training-centralized")["training.png"]
    ylabels = {ax.get_ylabel() for ax in fig.axes}
    assert {"entity F1 [fraction]", "BLEU (cased sacreBLEU) [0–100]", "accuracy [fraction]"} <= ylabels
    for ax in fig.axes:
        reference = lines_of(ax)["centralized (final)"]
        assert reference.get_linestyle() == "--"
        expected = 2.1 if ax.get_ylabel().startswith("cross-entropy") else 0.77
        assert np.allclose(reference.get_ydata(), expected)
        assert "centralized" not in {k for k in lines_of(ax) if k != "centralized (final)"}


def test_fig5_shows_s_and_m_per_cluster_with_the_papers_values():
    tables = segment_tables()
    fig = drawn("segments")["fig5-heterogeneous.png"]
    s_panels = [ax for ax in fig.axes if ax.get_ylabel().startswith("stages S")]
    m_panels = [ax for ax in fig.axes if ax.get_ylabel().startswith("micro-batches m")]
    assert len(s_panels) == len(m_panels) == 2  # one row per upload
    ax = s_panels[0]
    paper = lines_of(ax)["paper's Fig. 5"]
    assert list(paper.get_ydata()) == segments.PAPER_FIG5["S"]
    # the first setting's bars are the mean S per cluster rank, by hand
    first = [r for r in tables["fig5"] if r["tunable"] == "full"
             and (r["flops"], r["variant"]) == (segments.FLOPS[0][0], VARIANTS[0])]
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    heights = [p.get_height() for p in bars.patches]
    assert heights == [np.mean([r["S"] for r in first if r["rank"] == k]) for k in range(3)]


def test_wrap_fits_the_width_and_at_floor():
    text = "N=3, J=4, full upload (E_n^max 1000 J), consistent, and more words to wrap"
    lines = plots.wrap(text, 2.0, 10).split("\n")
    assert len(lines) > 1 and " ".join(lines) == text
    assert plots.at_floor([0.0, None, 0.0]) and plots.at_floor([]) and not plots.at_floor([0.0, 0.2])
    assert plots.at_floor([float("nan")])


RESULTS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results"


def csv_tables(folder: pathlib.Path) -> dict:
    """A sweep's tables read back from its CSVs (numbers, booleans and empty cells restored)."""
    import csv

    def value(text: str):
        if text == "":
            return None
        if text in ("True", "False"):
            return text == "True"
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    return {p.stem: [{k: value(v) for k, v in row.items()} for row in csv.DictReader(p.open())]
            for p in sorted(folder.glob("*.csv"))}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_the_committed_results_draw_cleanly(name):
    """The same checks on the figures of the committed snapshot's tables (real numbers)."""
    folder = RESULTS / name
    if not any(folder.glob("*.csv")):
        pytest.skip(f"no committed tables for {name}")
    saved = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save_figure", lambda fig, path: saved.__setitem__(path.name, fig))
        SWEEPS[name].plot(csv_tables(folder), pathlib.Path("unused"))
    for png, fig in saved.items():
        FigureCanvasAgg(fig)
        fig.canvas.draw()
        assert overlaps(fig) == [], png
        assert unlabelled(fig) == [], png


@pytest.mark.parametrize("lo, hi, at_least", [(30.0, 100.0, 3), (0.9, 8.0, 4), (1.0, 1e6, 6)])
def test_log_axes_get_enough_labelled_ticks(lo, hi, at_least):
    """Fig. 4's complaint: a log axis over less than a decade showed one labelled tick."""
    ticks = [t for t in plots.FewDecadesLogLocator(base=10).tick_values(lo, hi) if lo <= t <= hi]
    assert len(ticks) >= at_least
    assert len(ticks) <= 12  # and not so many that they collide


def round_panels(fig):
    return [ax for ax in fig.axes if ax.get_xlabel() == "round t [count]"]


@pytest.mark.parametrize("case", ["training", "training-one-evaluation", "learning-vs-s-m"])
def test_round_axes_tick_whole_rounds_and_dodge_the_markers(case):
    """One evaluated round (3) once gave the BLEU panels ticks 2.88-3.12: the ticks must be whole
    rounds, and the curves sit within a fraction of a round of them."""
    (fig,) = drawn(case).values()
    panels = round_panels(fig)
    assert panels
    for ax in panels:
        lo, hi = ax.get_xlim()
        ticks = [x for x in ax.xaxis.get_majorticklocs() if lo <= x <= hi]
        assert ticks and all(float(x).is_integer() for x in ticks), (ax.get_title(), ticks)
        for line in ax.get_lines():
            xs = np.asarray(line.get_xdata(), float)
            if len(xs) > 1 or line.get_label().startswith("S ="):
                assert np.all(np.abs(xs - np.round(xs)) < 0.3)


def test_accuracy_panels_draw_chance_from_the_class_count():
    fig = drawn("training")["training.png"]
    accuracy = [ax for ax in fig.axes if ax.get_ylabel() == "accuracy [fraction]"]
    assert len(accuracy) == 2  # per round and against simulated time
    for ax in accuracy:
        chance = lines_of(ax)["chance (1/15)"]
        assert np.allclose(chance.get_ydata(), 1 / 15)  # Toutiao's 15 classes, from the tables' n_classes
    assert not any("chance" in label for ax in fig.axes if ax.get_ylabel() != "accuracy [fraction]"
                   for label in lines_of(ax))


def test_learning_vs_s_m_draws_the_mean_over_seeds_with_a_95_percent_band_per_plan_and_reading():
    from scipy import stats

    fig = drawn("learning-vs-s-m")["learning-vs-s-m.png"]
    for task, schedule in itertools.product(training.SM_TASKS, training.SCHEDULES):
        plans = training.sm_plans(task, "quick")
        (ax,) = [ax for ax in fig.axes if ax.get_title().replace("\n", " ") ==
                 f"{task}: training loss per round, {schedule}"]
        lines = lines_of(ax)
        assert sorted(lines) == sorted(f"S = {S}, m = {m}" for S, m in plans)  # one line per plan, not per seed
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(plans)
        S, m = plans[-1]
        line = lines[f"S = {S}, m = {m}"]
        per_seed = np.array([[sm_loss(schedule, S, m, s, t) for t in range(3)] for s in SM_SEEDS])
        np.testing.assert_allclose(line.get_ydata(), per_seed.mean(axis=0), rtol=1e-12)
        half = stats.t.ppf(0.975, 2) * per_seed.std(axis=0, ddof=1) / np.sqrt(3)  # the Student-t band by hand
        top = bands[-1].get_paths()[0].vertices[:, 1].max()
        assert math.isclose(top, (per_seed.mean(axis=0) + half).max(), rel_tol=1e-9)
    assert "95%" in fig._supxlabel.get_text()
