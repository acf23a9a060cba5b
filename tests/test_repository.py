"""A clone is self-contained: no tracked output under results/, no path outside the checkout."""

import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tracked(*paths: str) -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], cwd=ROOT, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_nothing_under_results_is_tracked():
    # results/ is what `make sweep` / `make bench` write; a tracked file there would make a
    # fresh clone's sweep "already finished"
    assert _tracked("results") == []
    assert (ROOT / "docs" / "results" / "REPORT.md").is_file()  # the snapshot lives here instead


def test_no_tracked_file_points_beside_the_checkout():
    needle = "../" + "shared"  # split so that this file does not match itself
    hits = []
    for rel in _tracked("."):
        path = ROOT / rel
        if path.suffix in (".py", ".md", ".toml", ".json", ".txt", ".cfg", ".yml", ".yaml") or path.name == "Makefile":
            if path.is_file() and needle in path.read_text(encoding="utf-8", errors="replace"):
                hits.append(rel)
    assert hits == []
