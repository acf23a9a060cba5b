"""Client and server optimizers of the federated round, from optax.

Client (the E local steps of every cluster, and the server-side decoder/head): an update
*direction* d = D(g) — gradient clipping, then plain (SGD), heavy-ball momentum, or Adam
moments, and weight decay — times a learning rate η(s) taken from a schedule of the global
local-step index s. The learning rate is applied outside the optax chain (θ ← θ − η(s)·d),
exactly as `optax.sgd`/`optax.adamw` would with their own step counter, so that the client
optimizer state can be reset each round (FedAvg convention) while the schedule keeps counting
over the whole run.

  sgd       d = g (+ λθ)                      momentum  d = trace_β(g + λθ), β = 0.9
  adam      d = adam(g + λθ)   (L2, coupled)  adamw     d = adam(g) + λθ  (decoupled, Loshchilov & Hutter)
Weight decay λ applies to weight matrices and embeddings only (no biases, no LayerNorm scales).

Server, on the client model: the weighted mean of the uploads θ̄ = Σ_n D_n θ̃_n / Σ_n D_n gives the
pseudo-gradient Δ = θ^t − θ̄ (Reddi et al., 2021, "Adaptive Federated Optimization"):
  avg   θ^{t+1} = θ̄                      (FedAvg, Eq. 7–9; = sgd with server learning rate 1)
  sgd   θ^{t+1} = θ^t − η_s v, v ← β v + Δ   (FedAvgM, Hsu et al., 2019; β = 0: FedAvg with a server
                                          learning rate η_s, which is FedAvg itself at η_s = 1)
  adam  θ^{t+1} = θ^t − η_s adam(Δ)      (FedAdam, ε = 1e-3 as in the paper's adaptivity τ)
  yogi  θ^{t+1} = θ^t − η_s yogi(Δ)      (FedYogi, ε = 1e-3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from collapipe_jax.choices import CLIENT_OPTIMIZERS, LR_SCHEDULES, SERVER_OPTIMIZERS  # noqa: F401 (re-exported)

NO_DECAY = ("bias", "scale")  # parameter names that weight decay skips


def decay_mask(params):
    """True on the leaves weight decay applies to: everything but biases and LayerNorm scales."""
    def decays(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name not in NO_DECAY

    return jax.tree_util.tree_map_with_path(decays, params)


def client_direction(name: str, weight_decay: float = 0.0, clip_norm: float | None = None,
                     momentum: float = 0.9) -> optax.GradientTransformation:
    """The update direction of a local step, without the learning rate (see the module doc)."""
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    decay = [optax.add_decayed_weights(weight_decay, mask=decay_mask)] if weight_decay > 0 else []
    if name == "sgd":
        parts += decay
    elif name == "momentum":
        parts += decay + [optax.trace(decay=momentum)]
    elif name == "adam":
        parts += decay + [optax.scale_by_adam()]
    elif name == "adamw":
        parts += [optax.scale_by_adam()] + decay
    else:
        raise ValueError(f"unknown client optimizer {name!r}")
    return optax.chain(*parts) if parts else optax.identity()


def learning_rate_schedule(name: str, lr: float, warmup_steps: int = 0, total_steps: int = 1) -> optax.Schedule:
    """η(s) over the global local-step index s: constant, or linear warm-up from 0 to `lr` over
    `warmup_steps` followed by a cosine or linear decay to 0 at `total_steps`."""
    if name == "constant":
        return optax.constant_schedule(lr)
    warmup = min(max(int(warmup_steps), 0), max(int(total_steps) - 1, 0))
    decay_steps = max(int(total_steps) - warmup, 1)
    if name == "warmup-cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    elif name == "warmup-linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    else:
        raise ValueError(f"unknown learning-rate schedule {name!r}")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def server_transform(name: str, server_lr: float = 1.0,
                     momentum: float = 0.0) -> optax.GradientTransformation | None:
    """The server optimizer on the pseudo-gradient Δ = θ^t − θ̄; None is FedAvg (θ^{t+1} = θ̄).
    `momentum` β is FedAvgM's server momentum (sgd only)."""
    if name == "avg":
        return None
    if name == "sgd":
        return optax.sgd(server_lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(server_lr, b1=0.9, b2=0.99, eps=1e-3)
    if name == "yogi":
        return optax.yogi(server_lr, b1=0.9, b2=0.99, eps=1e-3)
    raise ValueError(f"unknown server optimizer {name!r}")


def apply_direction(params, direction, lr):
    """θ − η d, in each leaf's dtype."""
    return jax.tree.map(lambda p, d: p - jnp.asarray(lr, p.dtype) * d.astype(p.dtype), params, direction)
