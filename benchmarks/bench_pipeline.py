"""GPipe through shard_map vs the unpipelined model on the CPU with 8 host devices.

Measures, in one run (record: results/bench/pipeline.json):

* training-step time (value and gradients of the split BERT-NER model, `small` preset) of the
  unpipelined reference and of the GPipe-pipelined encoder for several decisions (δ, order, m)
  on the 8-device host mesh and folded onto one device, with each layout's padded compute
  (Σ slots / L);
* the paper's Table III: compiled peak training memory of one device's segment (δ TEBs alone,
  and the per-device SPMD program of the GPipe step with and without re-materialisation) vs
  the whole encoder on one device (VanillaFL), for the paper presets at b = 64, m = 4, from
  XLA's memory_analysis(), next to the analytic δ·γ_0 of models/cost.py;
* analytic TEB FLOPs vs XLA's cost_analysis() for every preset.

The host devices share the machine's cores, so pipelining cannot be faster here: the step-time
ratio shows the schedule's overhead (bubbles, padding, ppermute), not a speed-up. XLA reads
XLA_FLAGS once, when JAX starts, so `main()` runs the measurement in a fresh subprocess with
--xla_force_host_platform_device_count=8 (`make bench` imports every bench in one process).
"""

from __future__ import annotations

import os
import subprocess
import sys

HOST_DEVICES = 8


def main() -> None:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={HOST_DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    subprocess.run([sys.executable, "-m", "benchmarks.bench_pipeline", "--child"], env=env, check=True)


def _measure() -> None:
    import jax
    import jax.numpy as jnp


    from benchmarks.common import best_time, write_record
    from collapipe_jax.models import split
    from collapipe_jax.models.compiled_cost import segment_training_memory, xla_teb_flops
    from collapipe_jax.models.config import MODEL_PRESETS, model_preset
    from collapipe_jax.models.cost import teb_backward_flops, teb_forward_flops, teb_training_memory_bytes
    from collapipe_jax.pipeline.gpipe import gpipe_ticks, pipelined_encoder, pipelined_step_memory, stage_mesh
    from collapipe_jax.pipeline.partition import make_stage_layout, padding_overhead

    assert len(jax.devices()) == HOST_DEVICES, jax.devices()
    cfg = model_preset("small")  # d = 128, 4 heads, f = 512, L = 6, s = 64
    batch = 16
    params = split.init_split_model(jax.random.key(0), cfg, "ner", n_classes=9)
    toks = jax.random.randint(jax.random.key(1), (batch, cfg.seq_len), 3, cfg.vocab_size)
    data = {"tokens": toks, "labels": toks % 9}

    def timed(step):
        jax.block_until_ready(step(params, data))  # compile outside the timing
        return best_time(lambda: jax.block_until_ready(step(params, data)), repeat=5)

    ref_step = jax.jit(jax.value_and_grad(split.split_model_mean_loss))
    t_ref = timed(ref_step)
    print(f"unpipelined step ({cfg.name}, b={batch}): {t_ref * 1e3:.1f} ms")
    ref_grad = ref_step(params, data)[1]

    decisions = [
        ("uniform S=3", [2, 2, 2], None, 4, HOST_DEVICES),
        ("uneven S=3, device 1 idle", [3, 0, 1, 2], [3, 0, 2, 1], 4, HOST_DEVICES),
        ("uniform S=6", [1] * 6, None, 4, HOST_DEVICES),
        ("uniform S=6, m=1", [1] * 6, None, 1, HOST_DEVICES),
        ("uniform S=6 folded on 1 device", [1] * 6, None, 4, 1),
        ("uneven S=3 folded on 1 device", [3, 0, 1, 2], [3, 0, 2, 1], 4, 1),
    ]
    rows = []
    for label, delta, order, n_micro, n_dev in decisions:
        layout = make_stage_layout(delta, order, n_layers=cfg.n_enc_layers)
        mesh = stage_mesh(layout.n_stages, jax.devices()[:n_dev])
        loss = lambda p, b, layout=layout, n_micro=n_micro, mesh=mesh: split.split_model_mean_loss(  # noqa: E731
            p, b, pipelined_encoder(layout, n_micro, mesh)
        )
        step = jax.jit(jax.value_and_grad(loss))
        t = timed(step)
        # the host is shared: time the (compiled) reference again right after, and pair them
        t_ref_now = min(t_ref, timed(ref_step))
        grad = step(params, data)[1]
        err = max(
            float(jnp.linalg.norm(g - r) / jnp.linalg.norm(r))
            for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad))
            if float(jnp.linalg.norm(r)) > 1e-3  # the key bias' exact gradient is 0
        )
        over = padding_overhead(layout)
        row = {
            "decision": label,
            "delta": delta,
            "order": order,
            "n_micro": n_micro,
            "mesh_devices": mesh.size,
            "ticks": gpipe_ticks(layout.n_stages, n_micro),
            "step_s": t,
            "unpipelined_step_s": t_ref_now,
            "step_over_unpipelined": t / t_ref_now,
            "slots_over_L": over["all_slots_over_L"],
            "max_grad_rel_err": err,
        }
        rows.append(row)
        print(
            f"{label:34s} m={n_micro} D={mesh.size} ticks={row['ticks']:2d} "
            f"{t * 1e3:7.1f} ms ({t / t_ref_now:4.2f}x)  Σslots/L={over['all_slots_over_L']:.2f}  grad err {err:.1e}"
        )

    memory = []
    for name, delta_seg in (("paper-transformer", 1), ("paper-bert", 2)):
        pcfg = model_preset(name)
        n_dev = pcfg.n_enc_layers // delta_seg  # 6 devices, uniform δ
        layout = make_stage_layout([delta_seg] * n_dev, n_layers=pcfg.n_enc_layers)
        seg = segment_training_memory(pcfg, delta_seg, 64)
        whole = segment_training_memory(pcfg, pcfg.n_enc_layers, 64)
        pipe = pipelined_step_memory(pcfg, layout, 4, 64)
        pipe_remat = pipelined_step_memory(pcfg, layout, 4, 64, remat=True)
        row = {
            "model": name,
            "b": 64,
            "m": 4,
            "devices": n_dev,
            "segment_tebs": delta_seg,
            "L": pcfg.n_enc_layers,
            "segment_peak_bytes": seg["peak_bytes"],
            "pipelined_per_device_peak_bytes": pipe["peak_bytes"],
            "pipelined_remat_per_device_peak_bytes": pipe_remat["peak_bytes"],
            "whole_encoder_peak_bytes": whole["peak_bytes"],
            "segment_over_whole": seg["peak_bytes"] / whole["peak_bytes"],
            "analytic_segment_bytes": delta_seg * teb_training_memory_bytes(pcfg, 64),
            "analytic_whole_bytes": pcfg.n_enc_layers * teb_training_memory_bytes(pcfg, 64),
        }
        memory.append(row)
        gib = 2.0**30
        print(
            f"Table III {name:17s} δ={delta_seg}/{pcfg.n_enc_layers} b=64: segment {seg['peak_bytes'] / gib:.2f} GiB, "
            f"GPipe step per device {pipe['peak_bytes'] / gib:.2f} GiB (remat {pipe_remat['peak_bytes'] / gib:.2f}), "
            f"whole encoder (VanillaFL) {whole['peak_bytes'] / gib:.2f} GiB; analytic δγ0 "
            f"{row['analytic_segment_bytes'] / gib:.2f} vs Lγ0 {row['analytic_whole_bytes'] / gib:.2f} GiB"
        )

    flops = []
    for name, pcfg in MODEL_PRESETS.items():
        xla = xla_teb_flops(pcfg)
        o_f, o_b = teb_forward_flops(pcfg), teb_backward_flops(pcfg)
        flops.append(
            {
                "model": name,
                "analytic_forward": o_f,
                "xla_forward": xla["forward"],
                "forward_ratio": xla["forward"] / o_f,
                "analytic_forward_backward": o_f + o_b,
                "xla_forward_backward": xla["forward_backward"],
                "forward_backward_ratio": xla["forward_backward"] / (o_f + o_b),
            }
        )
        print(f"FLOPs {name:17s} XLA/analytic forward {xla['forward'] / o_f:.3f}, fwd+bwd {xla['forward_backward'] / (o_f + o_b):.3f}")

    path = write_record(
        "pipeline",
        {
            "model": cfg.name,
            "task": "ner",
            "batch": batch,
            "unpipelined_step_s": t_ref,
            "pipelined": rows,
            "memory_table_iii": memory,
            "flops_cross_check": flops,
            "note": "8 host devices share the CPU cores: ratios show schedule overhead, not speed-up",
        },
    )
    print(f"wrote {path}")



if __name__ == "__main__":
    if "--child" in sys.argv:
        _measure()
    else:
        main()
