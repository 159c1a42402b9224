"""The GSM8K comparison notebook executes against the committed results (nbclient; any cell error fails) and its
table equals experiments/summarize.py's, so the figures cannot drift from the JSON."""

import pathlib

import nbclient
import nbformat

from experiments.summarize import load, result_table, sweep_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "gsm8k_comparison.ipynb"


def test_gsm8k_comparison_notebook_executes_on_committed_results():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in committed.cells if c.cell_type == "code" for o in c.outputs)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    sweep, final = (load(str(ROOT / "experiments" / "results"), stage) for stage in ("sweep", "final"))
    assert len(final) > 0 and len(sweep) > 0
    assert result_table(final) in printed and sweep_table(sweep) in printed
    assert f"figure drawn from {len(sweep)} sweep runs and {len(final)} final runs" in printed
