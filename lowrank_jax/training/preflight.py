"""Checks of a run against what is on disk, before any weight loads: the adapter targets and ranks against the
model's structure (built abstractly from its config), and for evaluation, that the run to evaluate has a checkpoint.

Nothing here creates a file or directory, or reads a tensor.
"""

from __future__ import annotations

import os

import ml_collections

from lowrank_jax.adapters import AdapterConfig, check_targets
from lowrank_jax.training.checkpoint import saved_steps
from lowrank_jax.training.model_source import abstract_model

PEFT_CONFIG_FILE = "adapter_config.json"  # what marks a PEFT adapter directory (the run's `<workdir>/peft`)


def check_adapter_targets(adapter: AdapterConfig | None, model_cfg: ml_collections.ConfigDict, path: str) -> None:
    """The `adapter` block fits the model of `model_cfg` at the resolved `path`: its targets match linear layers,
    each at least as wide as the rank. Nothing to check for full fine-tuning (`adapter` None).

    Raises:
      ValueError: naming the settings, the layers at fault and the layers the model has.
    """
    if adapter is None:
        return
    try:
        check_targets(abstract_model(model_cfg, path), adapter)
    except ValueError as err:
        raise ValueError(f"config: adapter.targets={adapter.targets!r} / adapter.rank={adapter.rank} do not fit the "
                         f"model at model.path={model_cfg.path!r}: {err} Set --config.adapter.targets=... or "
                         "--config.adapter.rank=...") from None


def check_not_peft(path: str) -> None:
    """eval.py's `--model` or `--workdir` is not a PEFT adapter directory (adapters only: no model, no checkpoint).

    Raises:
      ValueError: saying what to evaluate instead.
    """
    if os.path.isfile(os.path.join(path, PEFT_CONFIG_FILE)):
        run = os.path.dirname(os.path.abspath(path))
        raise ValueError(
            f"{path} is a PEFT adapter directory ({PEFT_CONFIG_FILE}, as a run exports to <workdir>/peft), which "
            f"eval.py does not load. Evaluate the run it came from with --workdir={run} (its checkpoints, with the "
            f"run's --config), or its merged model with --model={os.path.join(run, 'merged')} (written when the run "
            "has --config.train.export_merged=True)")


def check_run_to_evaluate(workdir: str) -> None:
    """eval.py's run directory holds a checkpoint to restore (looked at without creating anything).

    Raises:
      ValueError: `workdir` is a PEFT adapter directory; FileNotFoundError: it has no checkpoint. Each says what to
      pass instead.
    """
    check_not_peft(workdir)
    if not saved_steps(workdir):
        directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        raise FileNotFoundError(
            f"no checkpoint in {directory}: eval.py restores the adapters of a run from <workdir>/checkpoints. Train "
            f"it first (python train.py with the same --config and --config.workdir={workdir}), or point --workdir "
            "at the directory of the run that holds checkpoints/; to evaluate a model directory or .gguf file, pass "
            "--model=PATH, and for the base model without adapters, --base")
