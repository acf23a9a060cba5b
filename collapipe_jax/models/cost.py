"""Analytic costs of one Transformer Encoder Block (TEB): the system model's size inputs.

Per TEB and per sample (sequence length s, width d, FFN width f, h heads):

* parameters     P   = 4(d² + d)            attention Q, K, V, O with biases
                     + (d f + f) + (f d + d) FFN with biases
                     + 4 d                   two LayerNorms (scale, bias)
* forward FLOPs  o_l = 8 s d²                Q, K, V, O projections (2 FLOPs per MAC)
                     + 4 s² d                scores QKᵀ and probabilities × V
                     + 4 s d f               the two FFN matmuls
  (bias adds, softmax, GELU and LayerNorm are O(s d) and left out, as is usual.)
* backward FLOPs o'_l = 2 o_l                grads w.r.t. inputs and weights
* activation z^s = s d × bits per value      what one stage sends the next (D2D)
* gradient   g^s = s d × bits per value      what comes back in the backward pass
* training memory per TEB γ_0 = 3 P bytes (params, grads, one optimiser state)
                     + b × A bytes, A = s(8 d + 2 f) + h s² values saved for backward

* LoRA adapters (`models/lora.py`, tunable = lora:R): rank-R A [d, R] and B [R, d] on the query
  and value projections of each of the L TEBs, P_lora = L · 2 · R (d + d); what a CU uploads
  with lora:R is P_lora × bits per value instead of θ^enc (Alg. 1, line 23: the tunable θ̂).

These are the "model config" path of docs/design.md §3; `tests/test_cost.py` checks them by hand
and the FLOPs against XLA's `cost_analysis()` of the compiled block.
"""

from __future__ import annotations

from collapipe_jax.errors import ValidationError
from collapipe_jax.models.config import ModelConfig
from collapipe_jax.options import INT32_MAX


def teb_param_count(cfg: ModelConfig) -> int:
    d, f = cfg.d_model, cfg.d_ff
    return 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d


def teb_forward_flops(cfg: ModelConfig) -> float:
    """o_l: forward FLOPs of one TEB for one sample (matmuls only)."""
    s, d, f = cfg.seq_len, cfg.d_model, cfg.d_ff
    return float(8 * s * d * d + 4 * s * s * d + 4 * s * d * f)


def teb_backward_flops(cfg: ModelConfig) -> float:
    """o'_l: backward FLOPs of one TEB for one sample (twice the forward)."""
    return 2.0 * teb_forward_flops(cfg)


def activation_bits(cfg: ModelConfig) -> float:
    """z^s: bits of one sample's activation crossing a stage boundary."""
    return float(cfg.seq_len * cfg.d_model * cfg.bytes_per_value * 8)


def gradient_bits(cfg: ModelConfig) -> float:
    """g^s: bits of one sample's activation gradient crossing a stage boundary backwards."""
    return activation_bits(cfg)


def encoder_param_bits(cfg: ModelConfig) -> float:
    """θ^enc: bits of the L encoder TEBs, uploaded for federated aggregation."""
    return float(cfg.n_enc_layers * teb_param_count(cfg) * cfg.bytes_per_value * 8)


def lora_param_count(cfg: ModelConfig, rank: int) -> int:
    """Parameters of rank-R LoRA adapters on Q and V of every TEB: L · 2 · R · (d_in + d_out)."""
    d = cfg.d_model
    return cfg.n_enc_layers * 2 * rank * (d + d)


def lora_param_bits(cfg: ModelConfig, rank: int) -> float:
    """Bits of the LoRA adapters (fp32 like every parameter): BERT-base, R = 8: 9,437,184 ≈ 9.44 Mbit."""
    return float(lora_param_count(cfg, rank) * cfg.bytes_per_value * 8)


def parse_tunable(tunable: str) -> int | None:
    """'full' -> None (the whole encoder is tuned and uploaded); 'lora:R' -> R."""
    if tunable == "full":
        return None
    rank = tunable[5:] if isinstance(tunable, str) and tunable.startswith("lora:") else ""
    # 10 digits at most before int() reads them (Python refuses to convert 4,300 and more)
    if rank.isascii() and rank.isdigit() and len(rank) <= 10 and 1 <= int(rank) <= INT32_MAX:
        return int(rank)
    raise ValidationError("tunable", f"must be 'full' or 'lora:R' with R an integer in [1, {INT32_MAX}]", tunable)


def tunable_param_bits(cfg: ModelConfig, tunable: str = "full") -> float:
    """θ̂: bits a CU uploads per round, the whole encoder ('full') or its LoRA adapters ('lora:R')."""
    rank = parse_tunable(tunable)
    return encoder_param_bits(cfg) if rank is None else lora_param_bits(cfg, rank)


def encoder_output_bits(cfg: ModelConfig, batch: int) -> float:
    """z^enc: bits of the encoder output of one batch, sent to the edge server's decoder/head."""
    return float(batch) * activation_bits(cfg)


def saved_activation_values(cfg: ModelConfig) -> int:
    """Values one TEB keeps per sample for its backward pass."""
    s, d, f, h = cfg.seq_len, cfg.d_model, cfg.d_ff, cfg.n_heads
    return s * (8 * d + 2 * f) + h * s * s


def teb_training_memory_bytes(cfg: ModelConfig, batch: int) -> float:
    """γ_0: bytes one TEB needs on a device while training a batch of `batch` samples."""
    params = teb_param_count(cfg) * cfg.bytes_per_value
    return float(3 * params + batch * saved_activation_values(cfg) * cfg.bytes_per_value)


def model_size_inputs(cfg: ModelConfig, batch: int, tunable: str = "full") -> dict[str, float]:
    """The system model's size inputs computed from a model config (SI units: FLOPs, bits, bytes);
    theta_enc_bits is what is uploaded: the encoder ('full') or its adapters ('lora:R')."""
    return {
        "o_fwd_flops": teb_forward_flops(cfg),
        "o_bwd_flops": teb_backward_flops(cfg),
        "z_bits": activation_bits(cfg),
        "g_bits": gradient_bits(cfg),
        "z_enc_bits": encoder_output_bits(cfg, batch),
        "theta_enc_bits": tunable_param_bits(cfg, tunable),
        "gamma0_bytes": teb_training_memory_bytes(cfg, batch),
    }
