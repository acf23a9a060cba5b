"""The package's layering: data flows one way (docs/design.md §2), no module imports a higher layer,
there is no import circle, and command-line options are declared only in cli.py."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "collapipe_jax"

# bottom up; a module may import its own package/module and anything in a lower layer
LAYERS = [
    {"errors"},
    {"io", "options", "distributed", "stats", "choices", "programs"},
    {"models", "tasks", "checkpoints"},
    {"pipeline", "scenario"},
    {"scenario_fields"},
    {"federated", "system"},
    {"scheduling"},
    {"train_config"},
    {"train_records", "run_plot"},
    {"train"},
    {"sweep"},
    {"report", "comparison"},
    {"cli"},
]


def unit_of(module: str) -> str:
    """'collapipe_jax.scheduling.dssra' → 'scheduling' (a sub-package or a top-level module)."""
    return module.split(".")[1]


def layer_of(unit: str) -> int:
    return next(i for i, units in enumerate(LAYERS) if unit in units)


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


MODULES = dict(modules())


def imports_of(path: pathlib.Path) -> set[str]:
    """The package's modules imported by a file; `from pkg import sub` counts as importing the
    submodule `pkg.sub` when it is one (not the package's __init__)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("collapipe_jax.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("collapipe_jax"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in MODULES else node.module)
    return out - {"collapipe_jax"}


GRAPH = {name: imports_of(path) for name, path in MODULES.items() if name != "collapipe_jax"}


def test_every_unit_has_a_layer():
    for name in GRAPH:
        layer_of(unit_of(name))


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_upward_import(name):
    here = unit_of(name)
    for target in GRAPH[name]:
        there = unit_of(target)
        assert there == here or layer_of(there) < layer_of(here), f"{name} imports {target} (a higher layer)"


def test_no_import_circle():
    known = {name for name in GRAPH}

    def resolve(target):  # `from collapipe_jax.sweep import base` names a module or a package
        return target if target in known else None

    state = {}

    def visit(node, trail):
        state[node] = "open"
        for target in GRAPH.get(node, ()):
            target = resolve(target)
            if target is None or target == node:
                continue
            assert state.get(target) != "open", " -> ".join(trail + [target])
            if target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in GRAPH:
        if node not in state:
            visit(node, [node])


def test_options_only_in_cli():
    for name, path in modules():
        if name != "collapipe_jax.cli":
            assert "add_argument" not in path.read_text(), name


def test_training_loop_module_stays_small():
    """The host loop stays readable: its settings and records live beside it (train_config,
    train_records)."""
    lines = (PACKAGE / "train.py").read_text().count("\n")
    assert lines <= 400, f"train.py has {lines} lines"
