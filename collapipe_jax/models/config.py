"""Model configurations: the paper's Transformer and BERT, and small CPU presets.

One frozen dataclass per run, in the manner of the Flax examples' configs. The sizes here
feed both the Flax models (`models/transformer.py`, `models/bert.py`) and the analytic cost
model (`models/cost.py`) that gives the system model its inputs.

| preset              | d_model | heads | d_ff | encoder TEBs (L) | decoder blocks | seq_len |
|---------------------|---------|-------|------|------------------|----------------|---------|
| `tiny`              | 32      | 2     | 64   | 4                | 2              | 32      |
| `small`             | 128     | 4     | 512  | 6                | 2              | 64      |
| `paper-transformer` | 512     | 8     | 2048 | 6                | 6              | 64      |
| `paper-bert`        | 768     | 12    | 3072 | 12               | 0              | 64      |
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from collapipe_jax.errors import ValidationError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    d_model: int
    n_heads: int
    d_ff: int
    n_enc_layers: int  # L: the TEBs that are segmented over the devices
    n_dec_layers: int  # decoder blocks on the edge server (0 for BERT-style encoders)
    seq_len: int
    vocab_size: int = 8000
    bytes_per_value: int = 4  # fp32 parameters, activations and gradients

    def __post_init__(self):
        for field in ("d_model", "n_heads", "d_ff", "n_enc_layers", "seq_len", "vocab_size", "bytes_per_value"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValidationError(f"model.{field}", "must be a positive integer", value)
        if self.n_dec_layers < 0:
            raise ValidationError("model.n_dec_layers", "must be >= 0", self.n_dec_layers)
        if self.d_model % self.n_heads:
            raise ValidationError("model.n_heads", f"must divide d_model={self.d_model}", self.n_heads)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig("tiny", d_model=32, n_heads=2, d_ff=64, n_enc_layers=4, n_dec_layers=2, seq_len=32),
    "small": ModelConfig("small", d_model=128, n_heads=4, d_ff=512, n_enc_layers=6, n_dec_layers=2, seq_len=64),
    "paper-transformer": ModelConfig(
        "paper-transformer", d_model=512, n_heads=8, d_ff=2048, n_enc_layers=6, n_dec_layers=6, seq_len=64,
        vocab_size=10000,
    ),
    "paper-bert": ModelConfig(
        "paper-bert", d_model=768, n_heads=12, d_ff=3072, n_enc_layers=12, n_dec_layers=0, seq_len=64,
        vocab_size=21128,
    ),
}


# Compute dtypes (`--dtype`): parameters and optimizer state stay fp32 whatever is chosen; the
# model casts them at use, so matmuls and activations run in the compute dtype, the loss in fp32.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name) -> jnp.dtype:
    """The jnp dtype for a compute-dtype name ("float32" | "bfloat16"; the dtypes themselves pass)."""
    if isinstance(name, str):
        if name in COMPUTE_DTYPES:
            return jnp.dtype(COMPUTE_DTYPES[name])
    else:
        try:
            dtype = jnp.dtype(name)
        except TypeError:
            dtype = None
        if dtype in [jnp.dtype(d) for d in COMPUTE_DTYPES.values()]:
            return dtype
    raise ValidationError("dtype", f"must be one of {tuple(COMPUTE_DTYPES)}", name)


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ValidationError("model", f"unknown preset, choose one of {sorted(MODEL_PRESETS)}", name)
    return MODEL_PRESETS[name]
