"""The one style of every sweep's figures, drawn without pyplot: a `matplotlib.figure.Figure`
needs no display and no global backend, so sweeps run headless and notebooks keep their own
backend.

What the style guarantees (tests/test_figures.py checks it on every sweep's figures):
* a figure's size follows its grid of panels (`PANEL` inches each), laid out by matplotlib's
  constrained layout, so titles, labels and tick labels of one panel never reach into another;
* font sizes readable at 100% (`FONT`), titles wrapped to their panel's width;
* every panel has a title and both axes a label with its unit in brackets (`[s]`, `[J]`;
  `[count]`, `[fraction]` or `[unitless]` for pure numbers); a categorical axis (names as
  ticks) needs no unit;
* one legend per figure, above the panels and outside the data (`figure_legend`);
* curves that may coincide differ in colour, marker and dash (`style`), their markers start at
  different points (`markevery`) or the curves sit side by side on a discrete axis (`dodge`);
* panels with nothing to show (`at_floor`) are left out and named in a note under the figure
  (`note`, `left_out_note`).
"""

from __future__ import annotations

import io
import math
import pathlib
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter

from collapipe_jax.io import atomic_write_bytes

PANEL = (4.2, 3.1)  # inches per panel (width, height)
FONT = {"title": 10, "label": 9, "tick": 8, "legend": 8, "note": 8.5, "suptitle": 11}
DPI = 120
# lines that may coincide stay distinguishable: colour, marker and dash differ together
COLORS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
          "tab:olive", "tab:cyan")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (8, 2, 2, 2)))


def figure(nrows: int = 1, ncols: int = 1, panel=PANEL, **kwargs):
    """A Figure of nrows × ncols panels of `panel` inches each, with constrained layout."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.06, wspace=0.04, hspace=0.04)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    for ax in axes.ravel():
        ax.tick_params(labelsize=FONT["tick"])
    return fig, axes


def wrap(text: str, width_in: float, size: float) -> str:
    """Break `text` into lines that fit `width_in` inches at font `size` (≈ 0.5 em a glyph)."""
    chars = max(int(width_in * 72 / (0.5 * size)), 12)
    return "\n".join(textwrap.wrap(text, chars, break_on_hyphens=False, break_long_words=False)) or text


def label(ax, title: str, xlabel: str | None, ylabel: str | None) -> None:
    """Title and axis labels of one panel in the figure style, the title wrapped to the panel."""
    ax.set_title(wrap(title, _span_width(ax), FONT["title"]), fontsize=FONT["title"])
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=FONT["label"])
    if ylabel is not None:
        ax.set_ylabel(wrap(ylabel, 0.9 * ax.get_figure().get_figheight() / _rows(ax), FONT["label"]),
                      fontsize=FONT["label"])


def _rows(ax) -> int:
    return ax.get_subplotspec().get_gridspec().nrows


def _span_width(ax) -> float:
    spec = ax.get_subplotspec()
    cols = spec.colspan.stop - spec.colspan.start
    return 0.85 * cols * ax.get_figure().get_figwidth() / spec.get_gridspec().ncols


def style(i: int) -> dict:
    """Line style i of a set of curves that may lie on one another: colour, marker and dash all
    differ, and every other marker is hollow so that one drawn over another still shows."""
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)],
            "linestyle": LINESTYLES[i % len(LINESTYLES)], "markersize": 5, "linewidth": 1.4,
            "markerfacecolor": "none" if i % 2 else COLORS[i % len(COLORS)]}


def nested_style(i: int, count: int) -> dict:
    """`style(i)` with markers from large (the first of `count` curves) to small (the last, drawn
    last): curves whose points coincide show every marker, one inside the other."""
    return {**style(i), "markersize": 4 + 2 * (count - 1 - i), "zorder": 2 + i}


def markevery(i: int, points: int, marks: int = 8) -> tuple[int, int]:
    """(start, step) for about `marks` markers on `points` points, the start shifted by curve i."""
    step = max(points // marks, 1)
    return (i % step, step)


def figure_legend(fig, axes, ncols: int | None = None, title: str | None = None) -> None:
    """One legend for the whole figure, above the panels (the note goes under them); `title`, the
    figure's title, heads it (a suptitle and an outside legend would share one place). Each label
    once, with the handle of the first panel that has it."""
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles and not lab.startswith("_"):
                handles[lab] = h
                labels.append(lab)
    if not labels:
        return
    width = fig.get_figwidth()
    longest = max(len(s) for s in labels)
    fit = max(int(width * 72 / (FONT["legend"] * (0.6 * longest + 4))), 1)
    fig.legend([handles[k] for k in labels], labels, loc="outside upper center", fontsize=FONT["legend"],
               ncols=ncols or min(len(labels), fit), frameon=False,
               title=title and wrap(title, 0.95 * width, FONT["suptitle"]), title_fontsize=FONT["suptitle"])


def note(fig, lines) -> None:
    """A note under the figure (what was left out, what a band means); constrained layout keeps
    it clear of the panels."""
    lines = [s for s in ([lines] if isinstance(lines, str) else lines) if s]
    if lines:
        text = "\n".join(wrap(s, 0.95 * fig.get_figwidth(), FONT["note"]) for s in lines)
        fig.supxlabel(text, fontsize=FONT["note"], style="italic", ha="center")


def suptitle(fig, text: str) -> None:
    """The figure's title, for a figure without `figure_legend` (which takes the title itself)."""
    fig.suptitle(wrap(text, 0.95 * fig.get_figwidth(), FONT["suptitle"]), fontsize=FONT["suptitle"])


def left_out_note(names: list[str], why: str) -> str:
    """The note's sentence naming the panels left out, or nothing when none was."""
    return f"Left out ({why}): {', '.join(names)}." if names else ""


def at_floor(values, floor: float = 0.0) -> bool:
    """True when there is no finite value above `floor` (a metric that has not left its floor)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return not finite or max(finite) <= floor


def band(ax, x, lo, hi, color, alpha: float = 0.2) -> None:
    """A shaded interval (a 95% band, a ± std) under a curve; nothing when either side is missing."""
    if lo is None or hi is None or any(v is None for v in list(lo) + list(hi)):
        return
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, linewidth=0)


def hide_unused(axes, used: int) -> None:
    for ax in np.ravel(axes)[used:]:
        ax.remove()


def save_figure(fig: Figure, path: pathlib.Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())


class FewDecadesLogLocator(LogLocator):
    """Ticks at 1, 2 and 5 times each power of ten, or more of them when the axis spans less than
    about a decade (which would otherwise show one labelled tick)."""

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((max(vmin, 1e-300), max(vmax, 1e-300)))
        decades = math.log10(hi / lo) if hi > lo else 0.0
        self._subs = np.array((1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1.2 else
                              (1.0, 2.0, 5.0) if decades < 3 else (1.0,))
        return super().tick_values(vmin, vmax)


def log_ticks(axis) -> None:
    """Enough labelled ticks on a log axis, written plainly (0.5, 20, 1e+06)."""
    axis.set_major_locator(FewDecadesLogLocator(base=10))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def log2_ticks(ax, values) -> None:
    """x ticks at the powers of two up to the largest of `values`, written as integers."""
    top = max([v for v in values if v and v > 0], default=1)
    ticks = [2 ** k for k in range(int(math.log2(top)) + 1)]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def dodge(i: int, n: int, step: float) -> float:
    """The x shift of curve i of n: curves that coincide on a discrete axis (rounds) sit side by
    side instead of hiding one another."""
    return (i - (n - 1) / 2) * step


def integer_ticks(axis) -> None:
    """Ticks on whole numbers only (rounds, counts), even where the view holds one whole number
    (MaxNLocator's default falls back to fractional ticks below two)."""
    axis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def round_axis(ax, rounds, pad: float = 0.5) -> None:
    """An x axis of rounds: integer ticks and a view of at least ±`pad` round around the rounds
    drawn, so that curves dodged by a fraction of a round (`dodge`) never turn the axis into
    fractional ticks (one evaluated round alone once gave ticks 2.88–3.12)."""
    rounds = [float(r) for r in rounds]
    if rounds:
        ax.set_xlim(min(rounds) - pad, max(rounds) + pad)
    integer_ticks(ax.xaxis)


def chance_line(ax, n_classes: int | None) -> None:
    """A dotted line at the accuracy of guessing uniformly among `n_classes` classes (1/K),
    labelled; nothing without a class count."""
    if n_classes:
        ax.axhline(1.0 / n_classes, color="0.4", ls=":", lw=1.2, label=f"chance (1/{n_classes})")
