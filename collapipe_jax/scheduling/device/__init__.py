"""The device engine: the decision rules of `scheduling/` (DSSRA, the paper's baselines, the
frameworks' fixed rules) as pure JAX functions with static shapes, for a batch of rounds at once
(`vmap`) and T rounds in order (`lax.scan`, queues carried).

It mirrors the host solvers module for module (the host implementation is the reference):

    segments.py    Sub-1 (Alg. 2): per-cluster fronts under both variants, the m rule, the
                   default plan and the frameworks' fixed plans        ↔ scheduling/segments.py
    resources.py   Sub-2 (Alg. 3): channel matching, power bounds and power control
                                                                        ↔ scheduling/resources.py
    problem.py     the batched round problem built from a `SystemState` on the device
    dssra.py       Alg. 4's alternation, the round objective, one round ↔ scheduling/dssra.py
    policies.py    every rule of the registry on the same problem       ↔ scheduling/policies.py
    run.py         `lax.scan` over rounds, `vmap` over seeds, sharding over devices

Every function computes in the dtype of its inputs: float64 (under `jax.enable_x64`) matches
the host's float64 solvers, float32 is what accelerators run fastest.
"""
