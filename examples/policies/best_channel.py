"""A scheduling rule of one's own, as a user writes it (docs/extending.md):

    collapipe schedule --policy examples/policies/best_channel.py:best_channel --seeds 0:8 --engine device
    collapipe compare --policies dssra,examples/policies/best_channel.py:best_channel --seeds 0:64

Every cluster splits the L TEBs evenly over all its K devices in index order with m = 4
micro-batches; the clusters, in index order, each take the free channel of best rate at their
highest feasible power (the highest p <= P_n^max whose upload energy meets E_n^max), and upload
at that power. A cluster left without a feasible free channel does not upload this round.
"""

import jax.numpy as jnp

from collapipe_jax import Decision, RoundInputs, even_delta, index_order


def best_channel(inputs: RoundInputs) -> Decision:
    N, J = inputs.N, inputs.J
    delta = even_delta(inputs.L, inputs.K, N)  # [N, K] int32
    p_max = inputs.max_power()  # [N, J]: NaN where no power meets C8 and C11'
    feasible = ~jnp.isnan(p_max)
    delay = jnp.where(feasible, inputs.upload_delay(jnp.where(feasible, p_max, 1.0)), jnp.inf)  # [N, J]
    taken = jnp.zeros(J, bool)
    channel = []
    for n in range(N):  # N is static: a Python loop unrolls into the traced program
        cost = jnp.where(taken, jnp.inf, delay[n])
        j = jnp.argmin(cost)
        ok = jnp.isfinite(cost[j])
        channel.append(jnp.where(ok, j, -1))
        taken = taken.at[j].set(taken[j] | ok)
    channel = jnp.stack(channel).astype(jnp.int32)
    p = jnp.where(channel >= 0, p_max[jnp.arange(N), jnp.clip(channel, 0)], 0.0)
    m = jnp.full(N, min(4, inputs.b), jnp.int32)
    return Decision(delta=delta, rank=index_order(delta), m=m, channel=channel, p_n_w=p)
