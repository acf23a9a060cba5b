"""The notebooks in notebooks/ run top to bottom at a small size, and are stored without outputs.

Each notebook has one cell tagged `parameters` holding its sizes; the test puts a cell with the
small values below it (as papermill does) and executes the notebook with nbclient in a kernel
of the interpreter that runs pytest (ipykernel's own spec, never a kernel registered on the
machine), in the repository root. A cell that raises fails the test.
"""

import ast
import pathlib
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# the small sizes each notebook runs at here (its parameters cell has the full ones)
SMALL = {
    "sensitivity": {"GRID": 5, "DRAWS": 64, "TEMPERATURES": (0.3, 3.0)},
    "scheduler": {"ROUNDS": 3, "V_VALUES": (1e-6, 1e-4)},
    # the committed snapshot, whatever `make sweep` may have left in results/
    "reproduce": {"RESULTS": "docs/results"},
    # test_device_engine's seeded setting: DSSRA's compiled program is reused
    "own_policy": {"SEEDS": "0:4", "ROUNDS": 6},
}
CELL_TIMEOUT_S = 600  # a guard against a hung kernel, not a speed requirement


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"want one cell tagged 'parameters', found {len(tagged)}"
    assert nb.cells[tagged[0]].cell_type == "code"
    return tagged[0]


def _assigned_names(source: str) -> set[str]:
    tree = ast.parse(source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)}


def inject(nb, values: dict):
    """A copy of `nb` with a cell setting `values` right after its parameters cell."""
    nb = nbformat.from_dict(nb)
    i = _parameters_index(nb)
    unknown = set(values) - _assigned_names(nb.cells[i].source)
    assert not unknown, f"not in the parameters cell: {sorted(unknown)}"  # else the override would do nothing
    cell = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items()))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(i + 1, cell)
    return nb


def execute(nb):
    # an empty kernel search path leaves only ipykernel's built-in "python3", which runs
    # sys.executable: the notebook sees this interpreter's packages, wherever pytest runs
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return nb


def test_every_notebook_is_executed_by_a_notebook_test():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_is_stored_without_outputs_and_linked(name):
    nb = _read(name)
    nbformat.validate(nb)
    _parameters_index(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the outputs before committing"
    assert f"notebooks/{name}.ipynb" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs_top_to_bottom(name):
    nb = execute(inject(_read(name), SMALL[name]))
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    # it ends in a figure or a table
    last = [o for c in code for o in c.outputs if o.output_type in ("display_data", "execute_result")]
    assert last and {"image/png", "text/html"} & set(last[-1].get("data", {})), "no figure or table at the end"


def test_a_notebook_that_raises_fails():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("raise ValueError('broken notebook')")])
    with pytest.raises(Exception, match="broken notebook"):
        execute(nb)


def test_notebook_kernel_is_this_interpreter():
    nb = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys, os; print(sys.executable); print(os.getcwd())")]))
    printed = nb.cells[0].outputs[0].text.split()
    assert printed == [sys.executable, str(ROOT)]
