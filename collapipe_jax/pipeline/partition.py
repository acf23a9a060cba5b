"""Segmentation: a decision (δ per device, pipeline order) -> the padded stage layout.

CollaPipe gives device k of a cluster δ_k consecutive TEBs (Σ_k δ_k = L, Eq. 17's C4) and runs
the scheduled devices (δ_k > 0) as a pipeline in a chosen order (footnote 1 of the paper: the
order need not follow device indices). S = #{k : δ_k > 0} stages. To give every stage, and
every cluster, the same static shapes, the stage layout pads:

* slots: every stage holds n_slots ≥ max_k δ_k slots; stage j's first δ slots hold its layers
  (consecutive, in pipeline order), the rest are masked (a masked slot is the identity);
* stages: n_stages ≥ S; stages past S are fully masked (identity stages), so clusters with
  different S share one compiled program. Devices with δ = 0 hold no stage.

`StageLayout` (a flax.struct dataclass of arrays, so it is data, not shape: per-cluster
layouts can be stacked on a leading axis and vmapped over):

    layer_index  int32 [n_stages, n_slots]  which encoder layer each slot holds (0 where masked)
    slot_mask    bool  [n_stages, n_slots]  True where the slot holds a real layer
    stage_device int32 [n_stages]           the device (index into δ) running each stage, −1 if none

`to_stages(stacked, layout)` gathers the usual stacked params [L, ...] into the stage layout
[n_stages, n_slots, ...]; being a gather, `jax.grad` through it scatter-adds the stage gradients
back onto [L, ...] (masked slots get zero gradient). `from_stages(staged, layout, n_layers)` is
its inverse on the real slots. The padded compute is n_stages·n_slots slot evaluations per
micro-batch instead of L: `padding_overhead`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from collapipe_jax.errors import ValidationError


@struct.dataclass
class StageLayout:
    layer_index: jax.Array  # int32 [n_stages, n_slots]
    slot_mask: jax.Array  # bool [n_stages, n_slots]
    stage_device: jax.Array  # int32 [n_stages]

    @property
    def n_stages(self) -> int:
        return self.slot_mask.shape[-2]

    @property
    def n_slots(self) -> int:
        return self.slot_mask.shape[-1]


def _int_vector(name: str, values) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1 and arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    # whole-valued floats (e.g. from JSON) are accepted; NaN, inf and fractions are not
    if arr.ndim == 1 and arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValidationError(name, "must be a 1-D sequence of integers", values)


def make_stage_layout(
    delta: Sequence[int],
    order: Sequence[int] | None = None,
    n_stages: int | None = None,
    n_slots: int | None = None,
    n_layers: int | None = None,
) -> StageLayout:
    """Stage layout of one cluster (host-side numpy).

    delta: δ_k per device (K entries, δ_k ≥ 0); order: device indices in pipeline order
    (default: by index); it must list every device with δ_k > 0 exactly once and may list
    devices with δ_k = 0 (skipped). n_stages ≥ S (default S), n_slots ≥ max δ (default max δ);
    n_layers, when given, must equal Σ δ_k.
    """
    d = _int_vector("delta", delta)
    if d.size == 0:
        raise ValidationError("delta", "must have at least one device", delta)
    if np.any(d < 0):
        raise ValidationError("delta", "every δ_k must be >= 0", delta)
    total = int(d.sum())
    if total < 1:
        raise ValidationError("delta", "Σ δ_k must be >= 1", delta)
    if n_layers is not None and total != n_layers:
        raise ValidationError("delta", f"Σ δ_k must equal L = {n_layers}", delta)
    o = np.arange(d.size) if order is None else _int_vector("order", order)
    if np.any((o < 0) | (o >= d.size)):
        raise ValidationError("order", f"device indices must be in [0, {d.size})", order)
    if len(set(o.tolist())) != o.size:
        raise ValidationError("order", "must not repeat a device", order)
    missing = sorted(set(np.flatnonzero(d > 0).tolist()) - set(o.tolist()))
    if missing:
        raise ValidationError("order", f"must list every device with δ_k > 0 (missing {missing})", order)
    active = [int(k) for k in o if d[k] > 0]
    s, max_delta = len(active), int(d.max())
    n_stages = s if n_stages is None else n_stages
    n_slots = max_delta if n_slots is None else n_slots
    if not isinstance(n_stages, (int, np.integer)) or n_stages < s:
        raise ValidationError("n_stages", f"must be an integer >= S = {s}", n_stages)
    if not isinstance(n_slots, (int, np.integer)) or n_slots < max_delta:
        raise ValidationError("n_slots", f"must be an integer >= max δ = {max_delta}", n_slots)

    layer_index = np.zeros((n_stages, n_slots), np.int32)
    slot_mask = np.zeros((n_stages, n_slots), bool)
    stage_device = np.full((n_stages,), -1, np.int32)
    start = 0
    for j, k in enumerate(active):
        layer_index[j, : d[k]] = np.arange(start, start + d[k])
        slot_mask[j, : d[k]] = True
        stage_device[j] = k
        start += int(d[k])
    return StageLayout(layer_index=layer_index, slot_mask=slot_mask, stage_device=stage_device)


def stack_layouts(layouts: Sequence[StageLayout]) -> StageLayout:
    """Per-cluster layouts (same n_stages, n_slots) stacked on a leading cluster axis, for vmap."""
    shapes = {lay.slot_mask.shape for lay in layouts}
    if len(shapes) != 1:
        raise ValidationError("layouts", "must share n_stages and n_slots to be stacked", sorted(shapes))
    return jax.tree.map(lambda *xs: np.stack(xs), *layouts)


def to_stages(stacked: dict, layout: StageLayout) -> dict:
    """[L, ...] params -> [n_stages, n_slots, ...] (a gather; masked slots hold a copy of layer 0)."""
    index = jnp.asarray(layout.layer_index)
    return jax.tree.map(lambda p: jnp.take(p, index, axis=0), stacked)


def from_stages(staged: dict, layout: StageLayout, n_layers: int) -> dict:
    """[n_stages, n_slots, ...] -> [L, ...] from the real slots (inverse of `to_stages`)."""
    # Masked slots scatter to the out-of-range index L and are dropped.
    index = jnp.where(jnp.asarray(layout.slot_mask), jnp.asarray(layout.layer_index), n_layers).reshape(-1)

    def gather_back(p):
        flat = p.reshape((-1,) + p.shape[2:])
        return jnp.zeros((n_layers,) + p.shape[2:], p.dtype).at[index].set(flat, mode="drop")

    return jax.tree.map(gather_back, staged)


def padding_overhead(layout: StageLayout) -> dict:
    """Padded compute of the layout: slot evaluations per micro-batch vs the L real layers.

    `all_slots_over_L` = n_stages·n_slots / L counts every evaluated slot (what the SPMD
    program computes); `active_stage_slots_over_L` = S·n_slots / L leaves out the identity
    stages past S, i.e. the work on devices that actually hold a segment.
    """
    mask = np.asarray(layout.slot_mask)
    n_layers = int(mask.sum())
    s = int(mask.any(axis=-1).sum())
    return {
        "L": n_layers,
        "S": s,
        "n_stages": int(mask.shape[0]),
        "n_slots": int(mask.shape[1]),
        "all_slots_over_L": mask.size / n_layers,
        "active_stage_slots_over_L": s * mask.shape[1] / n_layers,
    }
