"""experiments/gsm8k_comparison.py's plan: the sweep's lr grid per method, the final stage's lr = the swept lr with the
lowest validation loss (written by hand here), the base model evaluated once, and finished runs skipped."""

import argparse
import json
import os

import pytest

from experiments import gsm8k_comparison as comparison


def plan_args(tmp_path, stage, **overrides):
    values = dict(stage=stage, methods="base,lora-r8,full", lr_scales="1,2", seeds="0,1", eval_examples=1319,
                  out=str(tmp_path), extend_edges=False)
    return argparse.Namespace(**{**values, **overrides})


def write_sweep_run(tmp_path, name, lr, val_loss):
    os.makedirs(tmp_path / "sweep", exist_ok=True)
    with open(tmp_path / "sweep" / f"{name}_lr{lr:.3g}.json", "w") as f:
        json.dump({"name": name, "lr": lr, "report": {"val_loss": val_loss}}, f)


def test_sweep_multiplies_each_configs_lr_and_skips_base(tmp_path):
    runs = comparison.planned_runs(plan_args(tmp_path, "sweep"))
    assert [(name, seed, lr, examples) for name, seed, lr, examples, _ in runs] == [
        ("lora-r8", 0, 5e-4, 0), ("full", 0, 2e-5, 0), ("lora-r8", 0, 1e-3, 0), ("full", 0, 4e-5, 0)]
    assert runs[0][-1] == str(tmp_path / "sweep" / "lora-r8_lr0.0005.json")


def test_final_takes_the_lowest_validation_loss_and_evaluates_base_once(tmp_path):
    for lr, loss in ((5e-4, 0.95), (1e-3, 0.90), (2e-3, 0.93)):
        write_sweep_run(tmp_path, "lora-r8", lr, loss)
    for lr, loss in ((2e-5, 1.2), (4e-5, 1.3)):
        write_sweep_run(tmp_path, "full", lr, loss)
    runs = comparison.planned_runs(plan_args(tmp_path, "final"))
    assert [(name, seed, lr) for name, seed, lr, _, _ in runs] == [
        ("base", 0, comparison.BASE_LR), ("lora-r8", 0, 1e-3), ("full", 0, 2e-5),
        ("lora-r8", 1, 1e-3), ("full", 1, 2e-5)]
    assert all(examples == 1319 for _, _, _, examples, _ in runs)


def test_final_without_sweep_results_names_the_missing_stage(tmp_path):
    with pytest.raises(SystemExit, match="run the `sweep` stage first"):
        comparison.planned_runs(plan_args(tmp_path, "final", methods="lora-r8"))


def test_extend_edges_steps_past_a_best_range_end_only(tmp_path):
    for lr, loss in ((5e-4, 0.95), (1e-3, 0.90)):  # best at the top: try 2e-3
        write_sweep_run(tmp_path, "lora-r8", lr, loss)
    for lr, loss in ((2e-5, 1.2), (4e-5, 1.3)):  # best at the bottom: try 1e-5
        write_sweep_run(tmp_path, "full", lr, loss)
    runs = comparison.planned_runs(plan_args(tmp_path, "sweep", extend_edges=True))
    assert [(name, lr) for name, _, lr, _, _ in runs] == [("lora-r8", 2e-3), ("full", 1e-5)]
    write_sweep_run(tmp_path, "lora-r8", 2e-3, 0.97)  # now interior: nothing more for lora-r8
    runs = comparison.planned_runs(plan_args(tmp_path, "sweep", extend_edges=True))
    assert [(name, lr) for name, _, lr, _, _ in runs] == [("full", 1e-5)]


def test_final_refuses_results_of_another_lr(tmp_path):
    write_sweep_run(tmp_path, "lora-r8", 1e-3, 0.9)
    os.makedirs(tmp_path / "final")
    stale = tmp_path / "final" / "lora-r8_s0.json"
    stale.write_text(json.dumps({"name": "lora-r8", "seed": 0, "lr": 5e-4}))
    with pytest.raises(SystemExit, match="another lr"):
        comparison.run_all(plan_args(tmp_path, "final", methods="lora-r8", seeds="0", jobs=1))
    assert json.loads(stale.read_text())["lr"] == 5e-4  # left as it was


def test_a_rerun_starts_over_instead_of_meeting_an_interrupted_runs_checkpoints(tmp_path, monkeypatch):
    result = tmp_path / "final" / "full_s2.json"
    leftover = tmp_path / "runs" / "full_s2" / "checkpoints" / "150"
    os.makedirs(leftover)  # an attempt killed after its last checkpoint, before writing its JSON

    class Stop(Exception):
        pass

    def fake_run(config):
        assert config.workdir == str(tmp_path / "runs" / "full_s2") and not os.path.exists(config.workdir)
        raise Stop

    monkeypatch.setattr(comparison.train, "run", fake_run)
    args = argparse.Namespace(name="full", seed=2, lr=1e-3, eval_examples=0, result=str(result), model="m.gguf",
                              gsm8k="gsm8k", steps=150, jobs=1, workdir=str(tmp_path / "runs"))
    with pytest.raises(Stop):
        comparison.run_one(args)
