"""The LoRA-Pro quickstart notebook runs end to end (nbclient; an error in any cell fails the test) and is
committed with its outputs, plot included."""

import pathlib

import nbclient
import nbformat

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "lorapro_quickstart.ipynb"


def test_lorapro_quickstart_executes_and_is_committed_with_outputs():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    outputs = [o for cell in committed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "commit the notebook executed, with its plot"
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "LoRA-Pro step vs tangent projection" in printed and "notebook run time" in printed
