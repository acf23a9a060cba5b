"""The device programs of a training run: the jitted federated round for a decision's stage
layouts, and the jitted prediction for evaluation.

Numerics vs schedule: synchronous GPipe computes exactly the unpipelined gradient, whatever m
is (tests/test_gpipe.py), so the compiled round uses one static number of micro-batches for
every cluster, while each cluster's scheduled m enters the latency and energy charged by the
system model. S, δ and the order are data: stage layouts padded to the round's largest S and δ
(a program is compiled per distinct padded stage count and cached).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from collapipe_jax.federated.rounds import make_round
from collapipe_jax.models import bert, split, transformer
from collapipe_jax.models.teb import encoder_reference
from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh
from collapipe_jax.pipeline.partition import StageLayout, make_stage_layout, stack_layouts


@functools.lru_cache(maxsize=32)
def compiled_round(pipelined: bool, n_micro: int, n_stages: int, lr: float, noise_mode: str, independent: bool,
                   cluster_chunk: int | None = None):
    """The jitted round for one program shape, shared by every run in the process (a resumed or
    repeated run reuses the compiled executable)."""
    sgd = optax.sgd(lr)
    return make_round(loss_fn_for(pipelined, n_micro, n_stages), sgd, sgd, noise_mode=noise_mode,
                      independent=independent, cluster_chunk=cluster_chunk)


def loss_fn_for(pipelined: bool, n_micro: int, n_stages: int):
    """loss_fn(client, server, batch, layout) -> (loss_sum, weight_sum) of the split model."""

    def loss_fn(client, server, batch, layout):
        if pipelined:
            encoder = pipelined_encoder(layout, n_micro, mesh=stage_mesh(n_stages))
        else:
            encoder = encoder_reference
        return split.split_model_loss({"client": client, "server": server}, batch, encoder)

    return loss_fn


def layout_shape(delta: np.ndarray) -> tuple[int, int]:
    """(largest S, largest δ) over the clusters: the padded stage layout of a round."""
    delta = np.asarray(delta)
    return int((delta > 0).sum(axis=1).max()), int(delta.max())


def stage_layouts(delta: np.ndarray, orders: list[list[int]], n_stages: int, n_slots: int) -> StageLayout:
    """Every cluster's stage layout padded to (n_stages, n_slots), stacked on a leading N axis."""
    delta = np.asarray(delta)
    return stack_layouts([make_stage_layout(delta[n], orders[n], n_stages, n_slots) for n in range(delta.shape[0])])


def single_stage_layouts(n_clusters: int, n_layers: int) -> StageLayout:
    """A one-stage layout per cluster for the unsegmented paths (the loss ignores it; vmap
    needs data)."""
    delta = np.zeros((n_clusters, 1), np.int64)
    delta[:, 0] = n_layers
    return stage_layouts(delta, [[0]] * n_clusters, 1, n_layers)


def replicated(n_stages: int) -> NamedSharding:
    """Replicated over the round's stage mesh (where the round returns its state)."""
    return NamedSharding(stage_mesh(n_stages), PartitionSpec())


@functools.lru_cache(maxsize=8)
def predict_fn(task_kind: str, seq_len: int):
    """Jitted predictions of the unsegmented model on an eval batch."""

    @jax.jit
    def predict(client, server, tokens):
        x, pad_mask = split.embed_apply(client["embed"], tokens)
        enc = encoder_reference(client["encoder"], x, pad_mask)
        if task_kind == "seq2seq":
            return transformer.greedy_decode(server, enc, pad_mask, seq_len)
        return bert.predict(server, enc)

    return predict


@functools.lru_cache(maxsize=8)
def jitted_init(model_cfg, model_task: str, n_classes: int | None):
    """The split model's initialiser as one compiled program (rather than hundreds of eagerly
    compiled small ops)."""
    return jax.jit(lambda key: split.init_split_model(key, model_cfg, model_task, n_classes))
