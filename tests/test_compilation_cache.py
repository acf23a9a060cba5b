"""Compiled programs kept across processes (collapipe_jax/programs.py `use_compilation_cache`):
where they go, and a damaged or unwritable cache costing a compilation and one warning line,
never a crash or a wrong result. Every cache here lives under pytest's tmp_path (the suite
never writes to the user's home)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from collapipe_jax import programs

REPO = pathlib.Path(__file__).resolve().parent.parent

# A process that keeps its programs where the package says, runs a small jitted program twice
# (the second time after dropping the in-memory programs, so it is loaded from the disk cache)
# and prints the results, the folder and what it loaded from disk.
PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from collapipe_jax import programs
folder = programs.use_compilation_cache()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # this program compiles fast
fn = lambda x: jnp.cumsum(jnp.sin(x) * 3.0) @ x
x = jnp.arange(1.0, 8.0)
first = float(jax.jit(fn)(x))
jax.clear_caches()
second = float(jax.jit(fn)(x))
print(json.dumps({"folder": folder, "results": [first, second]}))
"""


def run_program(env_cache) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # the package decides
    env.update(COLLAPIPE_CACHE=str(env_cache), PYTHONPATH=str(REPO), HOME=str(env_cache) + "-home")
    proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def expected_value() -> float:
    import numpy as np

    x = np.arange(1.0, 8.0)
    return float(np.cumsum(np.sin(x) * 3.0) @ x)


def test_the_folder_is_collapipe_cache_then_the_commands_own_then_the_users(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COLLAPIPE_CACHE", raising=False)
    assert programs.compilation_cache_dir() == str(tmp_path / "home" / ".cache" / "collapipe_jax" / "jax")
    assert programs.compilation_cache_dir(tmp_path / "out" / ".jax-cache") == str(tmp_path / "out" / ".jax-cache")
    monkeypatch.setenv("COLLAPIPE_CACHE", str(tmp_path / "mine"))
    assert programs.compilation_cache_dir() == str(tmp_path / "mine" / "jax")
    assert programs.compilation_cache_dir(tmp_path / "out" / ".jax-cache") == str(tmp_path / "mine" / "jax")


def test_an_unwritable_cache_folder_is_named_with_its_reason(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert programs.cache_dir_problem(str(blocker / "jax")) is not None  # a file where a folder must go
    assert programs.cache_dir_problem(str(tmp_path / "new" / "jax")) is None
    assert (tmp_path / "new" / "jax").is_dir() and not list((tmp_path / "new" / "jax").iterdir())  # no probe left


@pytest.mark.slow  # ~10-20 s: keeps the default suite near 10 minutes on 2 cores
def test_a_damaged_cache_is_rebuilt_with_one_warning_and_an_unwritable_one_skipped(tmp_path):
    cache = tmp_path / "cache"
    first, err = run_program(cache)
    assert first["folder"] == str(cache / "jax") and "warning" not in err
    assert first["results"][0] == pytest.approx(expected_value(), rel=1e-6)
    entries = sorted((cache / "jax").glob("*-cache"))
    assert entries, "nothing was kept in the compilation cache"
    for entry in entries:  # damaged: overwritten with bytes that are no compressed program
        entry.write_bytes(b"\x00not a program" * 7)
    again, err = run_program(cache)
    warnings = [line for line in err.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "damaged entry of the compilation cache" in warnings[0], err
    assert again["results"] == first["results"]
    # rebuilt: the entries were replaced by readable ones (the second call in that process loaded
    # its program back without a warning), and a third process loads them silently
    assert all(entry.read_bytes()[:14] != b"\x00not a program" for entry in entries if entry.exists())
    third, err = run_program(cache)
    assert "warning" not in err.lower() and third["results"] == first["results"]

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    skipped, err = run_program(blocked)
    lines = [line for line in err.splitlines() if line.strip()]
    assert skipped["folder"] is None and skipped["results"] == first["results"]
    assert len(lines) == 1 and lines[0].startswith("collapipe: warning: the compilation cache"), err


def test_the_commands_that_compile_keep_their_programs(monkeypatch, capsys):
    from collapipe_jax import cli

    called = []
    monkeypatch.setattr(cli, "use_compilation_cache", lambda *a: called.append(a))
    # the cache is set before the command's own checks: a refused --seeds still reached it, cheaply
    assert cli.main(["schedule", "--seeds", "5:2"]) == 2
    assert called == [()]
    assert cli.main(["scenario", "--json"]) == 0  # compiles nothing: no cache folder is made
    assert called == [()] and set(cli.CACHED_COMMANDS) == {"schedule", "compare", "train"}
    capsys.readouterr()
