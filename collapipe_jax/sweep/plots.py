"""Figures for the sweeps, drawn without pyplot: a `matplotlib.figure.Figure` needs no display
and no global backend, so sweeps run headless and notebooks keep their own backend."""

from __future__ import annotations

import io
import pathlib

from matplotlib.figure import Figure

from collapipe_jax.io import atomic_write_bytes


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kwargs):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: pathlib.Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
