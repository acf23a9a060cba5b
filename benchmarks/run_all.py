"""`make bench`: run every `benchmarks/bench_*.py` module's `main()` in turn.

Each benchmark prints what it measured, as ratios against a reference measured in the same
run, and writes a JSON record under `results/bench/`. Select some with
`python -m benchmarks.run_all system scheduler`.

Each benchmark runs in its own Python process, because XLA reads its flags (such as the
host device count a benchmark needs) once, when JAX starts.
"""

from __future__ import annotations

import subprocess
import pathlib
import sys
import time


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    here = pathlib.Path(__file__).parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    if argv:
        names = [n for n in names if any(a in n for a in argv)]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", f"from benchmarks.{name} import main; main()"])
        if proc.returncode != 0:
            print(f"!!! {name} failed with exit code {proc.returncode}", flush=True)
            failed.append(name)
        print(f"--- {name} took {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        sys.exit(f"failed benchmarks: {failed}")


if __name__ == "__main__":
    main()
