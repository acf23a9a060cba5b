"""XLA's own count of a TEB's FLOPs and of a segment's training memory (compiled, not run).

The analytic costs in `models/cost.py` feed the system model; this module measures the same
things from the compiled programs, so the two can be cross-checked (tests/test_compiled_cost.py)
and so the paper's Table III (memory per device) can be reproduced from the real Flax model:

* `xla_teb_flops(cfg, batch)`: `cost_analysis()["flops"]` of one TEB forward, and of forward +
  backward (gradients w.r.t. the parameters and the input, as a pipeline stage needs), per
  sample. XLA counts a multiply-add as 2 FLOPs, like o_l, and also counts the elementwise work
  (softmax, LayerNorm, GELU, bias adds) that o_l leaves out; so XLA ≥ analytic, and the gap
  shrinks as d and f grow (see the table in benchmarks/bench_pipeline.py's record).
* `segment_training_memory(cfg, n_layers, batch)`: `memory_analysis()` of one training step of
  n_layers TEBs on a batch (value and gradients w.r.t. params and input). A device holding δ_k
  TEBs in GPipe keeps the activations of all m micro-batches until their backward pass, i.e.
  of the whole batch b, so its segment's step is this with n_layers = δ_k; VanillaFL (the
  whole encoder on the CU) is n_layers = L. Peak bytes = arguments + outputs + temporaries −
  aliased, from XLA's buffer assignment (the temporaries are one allocation in which XLA has
  already reused buffers). The backend's own `peak_memory_in_bytes` is kept as
  `xla_reported_peak_bytes`, but on the CPU it counts only arguments + outputs.

Only shapes are used (`jax.ShapeDtypeStruct`), nothing is allocated or run, so paper-size
models are measured in seconds on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from collapipe_jax.models.config import ModelConfig
from collapipe_jax.models.teb import encoder_reference, teb_apply, teb_shapes


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _inputs(cfg: ModelConfig, batch: int):
    x = jax.ShapeDtypeStruct((batch, cfg.seq_len, cfg.d_model), jnp.float32)
    pad = jax.ShapeDtypeStruct((batch, cfg.seq_len), jnp.bool_)
    return x, pad


def _train_step(params, x, pad):
    """Value and gradients (params, input) of a scalar function of the segment's output."""

    def loss(p, x):
        return jnp.sum(encoder_reference(p, x, pad) * x)  # a weighting the output depends on

    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)


def xla_teb_flops(cfg: ModelConfig, batch: int = 1) -> dict:
    """XLA's FLOPs of one TEB per sample: {"forward": ..., "forward_backward": ...}."""
    params = teb_shapes(cfg)
    x, pad = _inputs(cfg, batch)
    fwd = jax.jit(teb_apply).lower(params, x, pad).compile()

    def fwd_bwd(p, x, pad):
        return jax.value_and_grad(lambda p, x: jnp.sum(teb_apply(p, x, pad) * x), argnums=(0, 1))(p, x)

    both = jax.jit(fwd_bwd).lower(params, x, pad).compile()
    return {"forward": _flops(fwd) / batch, "forward_backward": _flops(both) / batch}


def memory_stats(compiled) -> dict:
    """Buffer sizes of a compiled program, in bytes, and its peak."""
    mem = compiled.memory_analysis()
    stats = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "alias_bytes": int(mem.alias_size_in_bytes),
    }
    stats["peak_bytes"] = stats["argument_bytes"] + stats["output_bytes"] + stats["temp_bytes"] - stats["alias_bytes"]
    stats["xla_reported_peak_bytes"] = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    return stats


def segment_training_memory(cfg: ModelConfig, n_layers: int, batch: int) -> dict:
    """Compiled memory of one training step of n_layers TEBs on `batch` samples (bytes)."""
    params = teb_shapes(cfg, n_layers)
    x, pad = _inputs(cfg, batch)
    return memory_stats(jax.jit(_train_step).lower(params, x, pad).compile())
