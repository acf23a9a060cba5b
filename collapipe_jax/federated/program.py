"""The device programs of a training run: the jitted federated round for a decision's stage
layouts, and the jitted prediction for evaluation.

Numerics vs schedule: synchronous GPipe computes exactly the unpipelined gradient, whatever m
is (tests/test_gpipe.py), so the compiled round uses one static number of micro-batches for
every cluster, while each cluster's scheduled m enters the latency and energy charged by the
system model. Under `pipeline_schedule="pipedream"` (rounds.py, pipeline/pipedream.py) m is
the number of updates per local step and S the staleness, so they change learning; the round
then computes with the unsegmented encoder at the stale weights. S, δ and the order are data: stage layouts padded to the round's largest S and δ
(a program is compiled per distinct padded stage count and cached).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from collapipe_jax.federated.centralized import make_centralized_round
from collapipe_jax.federated.optim import client_direction, learning_rate_schedule, server_transform
from collapipe_jax.federated.rounds import RoundSpec, make_round
from collapipe_jax.models import split
from collapipe_jax.models.lora import freeze_base, lora_trainable_mask
from collapipe_jax.models.teb import encoder_reference
from collapipe_jax.pipeline.gpipe import pipelined_encoder, stage_mesh
from collapipe_jax.pipeline.partition import StageLayout, make_stage_layout, stack_layouts
from collapipe_jax.programs import program_cache


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    """Everything static about a compiled round (the lru_cache key of `compiled_round`)."""

    pipelined: bool
    n_micro: int  # static GPipe micro-batches (the gradient is m-independent)
    n_stages: int  # padded stage count of the round's layouts
    local_steps: int = 1  # compiled E
    optimizer: str = "sgd"
    lr: float = 0.05
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1  # of the learning-rate schedule: rounds × E
    clip_norm: float | None = None
    server_optimizer: str = "avg"
    server_lr: float = 1.0
    server_momentum: float = 0.0  # FedAvgM's β (server_optimizer sgd)
    noise_mode: str = "relative"
    independent: bool = False
    cluster_chunk: int | None = None
    client_state: str = "reset"
    dropout: float = 0.0
    label_smoothing: float = 0.0
    dtype: str = "float32"
    lora: bool = False  # train and upload only the LoRA adapters of the client model
    pipeline_schedule: str = "gpipe"  # "pipedream": n_micro stale-weight updates per local step (rounds.py)

    def spec(self) -> RoundSpec:
        direction = client_direction(self.optimizer, self.weight_decay, self.clip_norm)
        # pipedream: the round splits the micro-batches and computes each one's gradient at its
        # stale weights with the unsegmented encoder (a simulation, not a shard_map schedule)
        pipedream = self.pipelined and self.pipeline_schedule == "pipedream"
        return RoundSpec(
            loss_fn=loss_fn_for(self.pipelined and not pipedream, self.n_micro, self.n_stages, self.dropout,
                                self.label_smoothing, self.dtype),
            direction=freeze_base(direction) if self.lora else direction,
            schedule=learning_rate_schedule(self.lr_schedule, self.lr, self.warmup_steps, self.total_steps),
            server_tx=None if self.independent else server_transform(self.server_optimizer, self.server_lr,
                                                                          self.server_momentum),
            local_steps=self.local_steps, noise_mode=self.noise_mode, independent=self.independent,
            cluster_chunk=self.cluster_chunk, client_state=self.client_state,
            head_direction=direction, upload_mask=lora_trainable_mask if self.lora else None,
            **(dict(pipeline_schedule="pipedream", n_micro=self.n_micro, history=self.n_stages) if pipedream else {}))


@program_cache(maxsize=32)
def compiled_round(settings: RoundSettings):
    """The jitted round for one program shape, shared by every run in the process (a resumed or
    repeated run reuses the compiled executable)."""
    return make_round(settings.spec())


@program_cache(maxsize=8)
def compiled_centralized(settings: RoundSettings):
    """The jitted centralized round (federated/centralized.py) for the run's settings."""
    return make_centralized_round(settings.spec())


def loss_fn_for(pipelined: bool, n_micro: int, n_stages: int, dropout: float = 0.0, label_smoothing: float = 0.0,
                dtype: str = "float32"):
    """loss_fn(client, server, batch, layout, key) -> (loss_sum, weight_sum) of the split model;
    `key` keys the dropout masks (per round, local step and cluster; per sample and layer inside)."""

    def loss_fn(client, server, batch, layout, key):
        if pipelined:
            encoder = pipelined_encoder(layout, n_micro, mesh=stage_mesh(n_stages))
        else:
            encoder = encoder_reference
        return split.split_model_loss({"client": client, "server": server}, batch, encoder, dropout_key=key,
                                      dropout=dropout, dtype=dtype, label_smoothing=label_smoothing)

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


@program_cache(maxsize=8)
def predict_fn(seq_len: int, batch_size: int = 256, dtype: str = "float32"):
    """Jitted predictions of the unsegmented model on a whole test split, in one program
    (greedy decoding with a key/value cache for translation)."""

    @jax.jit
    def predict(client, server, tokens):
        return split.predict_batched({"client": client, "server": server}, tokens, batch_size=batch_size,
                                     max_len=seq_len, dtype=dtype)

    return predict


@program_cache(maxsize=8)
def jitted_init(model_cfg, model_task: str, n_classes: int | None):
    """The split model's initialiser as one compiled program (rather than hundreds of eagerly
    compiled small ops)."""
    return jax.jit(lambda key: split.init_split_model(key, model_cfg, model_task, n_classes))
