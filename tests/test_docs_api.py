"""docs/api.md and docs/extending.md run: their ```python blocks, in order, as one script each
(as the script `__main__`, so that `__main__:function` names a rule of the script); the
names they use import from `collapipe_jax` with docstrings; the scenario field table is the one
`collapipe scenario --fields` prints; the worked example is the shipped file."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
import sys
import types

import pytest

import collapipe_jax
from collapipe_jax.scenario import Scenario
from collapipe_jax.scenario_fields import FIELD_DOCS, fields_markdown
from tests.test_reliability import run

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = {"api": ROOT / "docs" / "api.md", "extending": ROOT / "docs" / "extending.md"}


def python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("name", sorted(DOCS))
def test_the_python_blocks_run(name, monkeypatch):
    """In this process (the compiled programs of the other tests are reused), as the script
    `__main__` (a rule defined in it is `__main__:function`), from the repository's root."""
    script = "\n\n".join(python_blocks(DOCS[name]))
    assert script.count("\n") > 20
    main = types.ModuleType("__main__")
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.chdir(ROOT)
    exec(compile(script, str(DOCS[name]), "exec"), main.__dict__)


def test_the_api_names_import_from_the_package_with_docstrings():
    used = set()
    for path in DOCS.values():
        used |= set(re.findall(r"\bcp\.([A-Za-z_]+)", path.read_text()))
        used |= {n.strip() for line in re.findall(r"from collapipe_jax import ([^\n]+)", path.read_text())
                 for n in line.split(",")}
    assert {"evaluate", "round_latency_of_power", "compare", "run_schedule_seeds", "RoundInputs"} <= used
    for name in used:
        obj = getattr(collapipe_jax, name)
        assert name in collapipe_jax.__all__ and (inspect.getdoc(obj) or "").strip(), name
    for name in ("evaluate", "round_latency_of_power", "run_schedule", "run_schedule_seeds"):
        assert "Eq. " in inspect.getdoc(getattr(collapipe_jax, name)), name


def test_every_scenario_field_is_documented_and_the_table_is_current():
    assert list(FIELD_DOCS) == [f.name for f in dataclasses.fields(Scenario)]
    assert fields_markdown() in DOCS["api"].read_text()
    code, out, err = run("scenario", "--fields")
    assert code == 0, err
    for field in dataclasses.fields(Scenario):
        assert re.search(rf"^\s*{re.escape(field.name)}\s", out, flags=re.M), field.name


def test_the_worked_example_is_the_shipped_rule():
    source = (ROOT / "examples" / "policies" / "best_channel.py").read_text()
    assert source[source.index("def best_channel"):] in DOCS["extending"].read_text()
