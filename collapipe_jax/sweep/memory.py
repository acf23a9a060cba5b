"""The paper's Table III: training memory of one device's segment (δ TEBs) against the whole
encoder on one device (VanillaFL), b = 64, from XLA's compiled memory analysis
(`memory_analysis()` of a jitted value-and-grad step; nothing is executed), next to the
analytic δ·γ_0 of models/cost.py."""

from __future__ import annotations

from collapipe_jax.models import cost
from collapipe_jax.models.compiled_cost import segment_training_memory
from collapipe_jax.models.config import model_preset
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep.plots import save_figure, subplots

PRESETS = ("paper-bert", "paper-transformer")
BATCH = 64
GAMMA_MAX_K_BYTES = 1.5e9  # Table II's γ_k^max


def compute(scale: str, work_dir, progress) -> dict:
    rows = []
    for preset in PRESETS:
        cfg = model_preset(preset)
        L = cfg.n_enc_layers
        deltas = sorted({1, 2, L // 3, L // 2, L} if scale == "quick" else set(range(1, L + 1)))
        for delta in deltas:
            mem = segment_training_memory(cfg, delta, BATCH)
            rows.append({"preset": preset, "delta": delta, "L": L, "batch": BATCH,
                         "xla_peak_bytes": mem["peak_bytes"], "xla_temp_bytes": mem["temp_bytes"],
                         "xla_argument_bytes": mem["argument_bytes"],
                         "analytic_bytes": delta * cost.teb_training_memory_bytes(cfg, BATCH)})
            progress(1)
    return {"memory": rows}


def plot(tables: dict, out) -> None:
    rows = tables["memory"]
    fig, axes = subplots(1, 2, figsize=(11, 4))
    for ax, preset in zip(axes, PRESETS):
        sel = [r for r in rows if r["preset"] == preset]
        ax.plot([r["delta"] for r in sel], [r["xla_peak_bytes"] / 1e9 for r in sel], marker="o", label="XLA compiled peak")
        ax.plot([r["delta"] for r in sel], [r["analytic_bytes"] / 1e9 for r in sel], marker="s", ls="--",
                label="analytic δ·γ_0")
        ax.axhline(GAMMA_MAX_K_BYTES / 1e9, color="k", ls=":", label="γ_k^max = 1.5 GB (Table II)")
        ax.set_xlabel("TEBs on the device δ")
        ax.set_ylabel("training memory [GB]")
        ax.set_title(f"{preset}, b = {BATCH}")
        ax.legend(fontsize=8)
    save_figure(fig, out / "memory.png")


def findings(tables: dict) -> dict:
    rows = tables["memory"]
    claims, notes = [], []
    for preset in PRESETS:
        sel = {r["delta"]: r for r in rows if r["preset"] == preset}
        L = max(sel)
        per_device = L // 6 if L >= 6 else 1  # uniform split over the K = 6 devices of Table II
        if per_device in sel:
            ratio = sel[per_device]["xla_peak_bytes"] / sel[L]["xla_peak_bytes"]
            claims.append({"claim": f"memory per device, CollaPipe (δ = {per_device}) / VanillaFL (δ = {L}), {preset}",
                           "paper": "", "measured": f"{100 * ratio:.1f}%",
                           "note": "XLA compiled peak of one training step; the paper's Table III values are not "
                                   "in our summary of the paper"})
        fits = [d for d, r in sel.items() if r["xla_peak_bytes"] <= GAMMA_MAX_K_BYTES]
        analytic_fit = int(GAMMA_MAX_K_BYTES // cost.teb_training_memory_bytes(model_preset(preset), BATCH))
        notes.append(f"{preset}: the largest segment within γ_k^max = 1.5 GB is δ = {max(fits) if fits else 0} "
                     f"(XLA), {analytic_fit} (analytic γ_0); the whole encoder needs "
                     f"{sel[L]['xla_peak_bytes'] / 1e9:.3g} GB.")
    return {"batch": BATCH, "claims": claims, "findings": notes}


register(Sweep("memory", compute, plot, findings))
