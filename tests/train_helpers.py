"""Shared by the training tests: a run killed part-way, as a crash or Ctrl-C would; the flags of
a command-line run with the library's defaults."""

import pathlib

import pytest

from collapipe_jax import train as train_mod


def kill_during_second_evaluation(monkeypatch, cfg) -> None:
    """Run `train(cfg)` and interrupt it in its second evaluation — after round 0's checkpoint,
    before round 1's — then put the real evaluation back."""
    real_eval, calls = train_mod.evaluate_model, {"n": 0}

    def dying_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_model", dying_eval)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg)
    monkeypatch.setattr(train_mod, "evaluate_model", real_eval)


# `--config` of an empty recipe: a command-line run with TrainConfig's own defaults, not the
# task's CPU recipe's settings a run without --config takes (train_config.bare_defaults).
LIBRARY_DEFAULTS = ["--config", str(pathlib.Path(__file__).with_name("library-defaults.json"))]
