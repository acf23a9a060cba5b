"""Model-level costs on the CPU: greedy decoding with and without the key/value cache, compute
dtype and dropout in a training step (record: results/bench/models.json).

* Greedy decoding of 1,000 source sentences (the size of Multi30K's test_2016_flickr) with the
  `small` Transformer (d = 128, 2 decoder blocks, max_len = seq_len = 64), random weights:
  the previous decoder (each step re-runs the decoder over the whole max_len prefix buffer,
  reproduced below as `uncached_greedy_decode`) against `transformer.greedy_decode` (key/value
  cache, cross-attention K/V once), both called per eval batch of 64 as `train.evaluate_model`
  does, and `split.predict_batched` (the whole test set in one jitted program). Untrained
  weights rarely emit EOS, so every sentence runs to max_len: the cached decoder's early exit
  (stop when all have emitted EOS) does not help here, the ratio is the cache's alone. Both
  decoders must produce the same tokens (checked).
* One training step (value and gradients of the split BERT-NER loss, `small`, b = 32,
  unpipelined) in float32 vs bfloat16 compute, and with dropout 0.1 vs none; compile times.

The ratios are measured in one run on one machine; the 2-core CPU is shared, so the record
keeps the load average.
"""

from __future__ import annotations

import os
import sys
import time


def uncached_greedy_decode(server_params, enc_out, pad_mask, max_len):
    """The greedy decoder before the cache (kept here only as the benchmark's baseline)."""
    import jax
    import jax.numpy as jnp

    from collapipe_jax.models.transformer import BOS, EOS, PAD, decoder_logits

    batch = enc_out.shape[0]
    buf = jnp.full((batch, max_len + 1), PAD, jnp.int32).at[:, 0].set(BOS)

    def step(i, carry):
        buf, done = carry
        logits = decoder_logits(server_params, enc_out, pad_mask, buf[:, :max_len])
        tok = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, i, axis=1, keepdims=False), axis=-1)
        tok = jnp.where(done, PAD, tok).astype(jnp.int32)
        buf = jax.lax.dynamic_update_index_in_dim(buf, tok, i + 1, axis=1)
        return buf, done | (tok == EOS)

    buf, _ = jax.lax.fori_loop(0, max_len, step, (buf, jnp.zeros((batch,), bool)))
    return buf[:, 1:]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure_decode(n_sentences: int = 1000, eval_batch: int = 64, repeat: int = 2) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from collapipe_jax.models import split, transformer
    from collapipe_jax.models.config import model_preset
    from collapipe_jax.models.teb import encoder_reference

    cfg = model_preset("small")
    params = split.init_split_model(jax.random.key(0), cfg, "translation")
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 31, n_sentences)  # Multi30K sources are 8-30 tokens with BOS/EOS
    toks = rng.integers(3, cfg.vocab_size, (n_sentences, cfg.seq_len))
    toks = np.where(np.arange(cfg.seq_len)[None] < lengths[:, None], toks, 0).astype(np.int32)
    n_batches = -(-n_sentences // eval_batch)
    padded = np.zeros((n_batches * eval_batch, cfg.seq_len), np.int32)
    padded[:n_sentences] = toks

    def per_batch(decode):
        @jax.jit
        def run(params, tokens):
            x, ok = split.embed_apply(params["client"]["embed"], tokens)
            enc = encoder_reference(params["client"]["encoder"], x, ok)
            return decode(params["server"], enc, ok, cfg.seq_len)

        def all_batches():
            outs = [np.asarray(run(params, padded[i : i + eval_batch])) for i in range(0, len(padded), eval_batch)]
            return np.concatenate(outs)[:n_sentences]

        return run, all_batches

    record = {"sentences": n_sentences, "eval_batch": eval_batch, "max_len": cfg.seq_len, "model": "small"}
    results = {}
    for name, decode in (("uncached", uncached_greedy_decode), ("cached", transformer.greedy_decode)):
        run, all_batches = per_batch(decode)
        _, compile_s = _timed(lambda: run.lower(params, padded[:eval_batch]).compile())
        all_batches()  # warm (compiled on the first call)
        times = []
        for _ in range(1 if name == "uncached" else repeat):
            out, t = _timed(all_batches)
            times.append(t)
        results[name] = out
        record[f"{name}_compile_s"] = compile_s
        record[f"{name}_s"] = min(times)
    batched = jax.jit(split.predict_batched, static_argnames=("batch_size", "max_len"))
    for chunk in (128, 256):
        _, compile_s = _timed(lambda: batched.lower(params, toks, batch_size=chunk).compile())
        batched(params, toks, batch_size=chunk).block_until_ready()
        times = [_timed(lambda: np.asarray(batched(params, toks, batch_size=chunk)))[1] for _ in range(repeat)]
        record[f"predict_batched_{chunk}_s"] = min(times)
        record[f"predict_batched_{chunk}_compile_s"] = compile_s
        results[f"batched{chunk}"] = np.asarray(batched(params, toks, batch_size=chunk))
    record["same_tokens"] = all(np.array_equal(results["uncached"], v) for v in results.values())
    record["mean_emitted_tokens"] = float((results["cached"] != transformer.PAD).sum(axis=1).mean())
    record["speedup_cached"] = record["uncached_s"] / record["cached_s"]
    return record


def measure_step(batch: int = 32, repeat: int = 5) -> dict:
    import jax
    import numpy as np

    from benchmarks.common import best_time
    from collapipe_jax.models import split
    from collapipe_jax.models.config import model_preset

    cfg = model_preset("small")
    params = split.init_split_model(jax.random.key(0), cfg, "ner", n_classes=9)
    rng = np.random.default_rng(0)
    toks = rng.integers(3, cfg.vocab_size, (batch, cfg.seq_len)).astype(np.int32)
    lengths = rng.integers(10, cfg.seq_len + 1, batch)
    toks = np.where(np.arange(cfg.seq_len)[None] < lengths[:, None], toks, 0)
    data = {"tokens": toks, "labels": np.where(toks > 0, toks % 9, -1)}
    record = {"batch": batch, "model": "small", "task": "ner"}
    for name, opts in (
        ("float32", {}),
        ("bfloat16", {"dtype": "bfloat16"}),
        ("float32_dropout", {"dropout": 0.1}),
    ):
        rate = opts.get("dropout", 0.0)
        step = jax.jit(jax.value_and_grad(
            lambda p, b, k, opts=opts, rate=rate: split.split_model_mean_loss(
                p, b, dropout_key=k if rate else None, **opts)))
        key = jax.random.key(1)
        _, compile_s = _timed(lambda: step.lower(params, data, key).compile())
        jax.block_until_ready(step(params, data, key))
        record[f"{name}_step_ms"] = 1e3 * best_time(lambda: jax.block_until_ready(step(params, data, key)), repeat)
        record[f"{name}_compile_s"] = compile_s
    record["bf16_over_fp32"] = record["bfloat16_step_ms"] / record["float32_step_ms"]
    record["dropout_over_none"] = record["float32_dropout_step_ms"] / record["float32_step_ms"]
    return record


def main(argv: list[str] | None = None) -> None:
    from benchmarks.common import write_record

    argv = sys.argv[1:] if argv is None else argv
    n = int(argv[0]) if argv else 1000
    load_before = os.getloadavg()
    step = measure_step()
    print(f"training step (small, NER, b=32): fp32 {step['float32_step_ms']:.0f} ms, bf16 {step['bfloat16_step_ms']:.0f} ms "
          f"({step['bf16_over_fp32']:.2f}x), dropout 0.1 {step['float32_dropout_step_ms']:.0f} ms ({step['dropout_over_none']:.2f}x); "
          f"compile fp32 {step['float32_compile_s']:.1f} s, bf16 {step['bfloat16_compile_s']:.1f} s, dropout {step['float32_dropout_compile_s']:.1f} s")
    decode = measure_decode(n)
    print(f"greedy decode of {n} sentences (small, max_len 64): uncached {decode['uncached_s']:.1f} s, "
          f"cached {decode['cached_s']:.2f} s ({decode['speedup_cached']:.1f}x), predict_batched(128) "
          f"{decode['predict_batched_128_s']:.2f} s, (256) {decode['predict_batched_256_s']:.2f} s; same tokens: {decode['same_tokens']}")
    path = write_record("models", {"decode": decode, "step": step, "loadavg_before": load_before, "loadavg_after": os.getloadavg()})
    print(f"record: {path}")


if __name__ == "__main__":
    main()
