"""The GSM8K comparison notebook executes against the committed results (nbclient; any cell error fails), prints
experiments/summarize.py's tables for every model folder, and draws each from all of its runs, so the figures cannot
drift from the JSON."""

import os
import pathlib

import nbclient
import nbformat

from experiments.summarize import load, model_folders, summary

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "gsm8k_comparison.ipynb"


def test_gsm8k_comparison_notebook_executes_on_committed_results():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in committed.cells if c.cell_type == "code" for o in c.outputs)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    folders = model_folders(str(ROOT / "experiments" / "results"))
    assert folders, "no committed results"
    for folder in folders:
        sweep, final = load(folder)
        assert summary(folder) in printed
        assert (f"{os.path.basename(folder)}: figure drawn from {len(sweep)} sweep runs and {len(final)} evaluated "
                "runs") in printed
