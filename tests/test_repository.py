"""A clone is self-contained: no tracked output under results/, no path outside the checkout."""

import pathlib
import re
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


# What a user can follow: the design is docs/design.md, in the repository; nothing points at a
# spec or a tracker outside it. Split so that this file does not match itself.
SPEC_NAME = "DES" + "IGN"
TRACKER_WORD = re.compile(r"\b" + "iss" + r"ues?\b", re.IGNORECASE)
CITATION = re.compile(r"docs/design\.md\W{0,3}§\s*(\d+)")
TEXT_SUFFIXES = (".py", ".md", ".toml", ".json", ".ipynb", ".txt", ".cfg", ".yml", ".yaml", ".sh")


def _texts():
    for rel in _tracked("."):
        path = ROOT / rel
        if rel.startswith("data/") and path.suffix != ".md":
            continue  # the data sets' own text (Toutiao titles may spell "Design")
        if (path.suffix in TEXT_SUFFIXES or path.name == "Makefile") and path.is_file():
            yield rel, path.read_text(encoding="utf-8", errors="replace")


def test_no_tracked_file_cites_a_spec_or_a_tracker_outside_the_repository():
    spec = [f"{rel}:{i}" for rel, text in _texts() if rel != "docs/design.md"
            for i, line in enumerate(text.splitlines(), 1) if SPEC_NAME in line]
    tracker = [f"{rel}:{i}" for rel, text in _texts()
               for i, line in enumerate(text.splitlines(), 1) if TRACKER_WORD.search(line)]
    assert spec == [] and tracker == []


def test_every_cited_section_of_docs_design_md_exists():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, flags=re.MULTILINE)}
    assert sections == set(range(1, 10))
    cited = {(rel, int(n)) for rel, text in _texts() for n in CITATION.findall(text)}
    assert len(cited) > 20  # the docstrings do cite it
    assert [(rel, n) for rel, n in sorted(cited) if n not in sections] == []


# The README is the first screen (what it is, `make sweep`, `make test`, a ten-line tour, links);
# the reference parts live in docs/ and are linked from it.
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (code blocks left out): lower case,
    punctuation but '-' and '_' dropped, spaces to '-'."""
    titles = re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", t.strip().lower()).replace(" ", "-") for t in titles}


def test_the_readme_and_docs_link_only_to_files_and_headings_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken, checked = [], 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(FENCE.sub("", text)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: outside the clone
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            checked += 1
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text(encoding="utf-8")):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert checked > 20 and broken == []


def test_the_readme_is_one_screen_that_links_every_reference_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 80
    assert "make sweep" in text and "make test" in text
    linked = set(LINK.findall(text))
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, page.name
