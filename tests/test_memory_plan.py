"""The memory plan (training/memory_plan.py): its search against a fake memory model (the choice is the first
candidate in order of preference that fits, found in few compiles), on the tiny step's real compiled sizes, and in
the training loop, where the step it picks trains exactly as the same settings set by hand."""

import json
import re

import jax
import numpy as np
import pytest

from configs import lora_llama
from lowrank_jax.sharding import make_mesh
from lowrank_jax.training import loop, planned_step
from lowrank_jax.training.config_check import check_config, check_mesh
from lowrank_jax.training.memory_plan import (GIB, HEADROOM, REMAT_FASTEST_FIRST, MemoryPlanError, StepMemory,
                                              candidate_groups, micro_batch_options, plan_memory)
from lowrank_jax.training.placement import compile_train_step
from lowrank_jax.training.workdir import check_workdir
from run_setup import logged_losses, tiny, write_problems


class FakeSteps:
    """`compile_for` whose 'compiled step' is its (remat, grad_accum), with the memory of a linear model: `fixed`
    bytes, plus temporaries `shared` + kept[remat] * `activations` / grad_accum. Records what it compiles."""

    def __init__(self, fixed, shared, activations, kept):
        self.fixed, self.shared, self.activations, self.kept = fixed, shared, activations, kept
        self.compiled = []

    def __call__(self, remat, accum):
        self.compiled.append((remat, accum))
        return remat, accum

    def memory(self, candidate):
        remat, accum = candidate
        return StepMemory(self.fixed, self.shared + int(self.kept[remat] * self.activations / accum))

    def plan(self, budget, remats=REMAT_FASTEST_FIRST, accums=(1, 2, 4, 8, 16, 32), rows=32, seq_len=512):
        self.compiled = []
        return plan_memory(self, remats=remats, accums=accums, batch_rows=rows, seq_len=seq_len, limit_bytes=budget,
                           headroom=0.0, memory_of=self.memory)


# Remat saving much (activations dominate), or little (a large vocabulary's logits dominate, as in the tiny preset).
REMAT_MATTERS = dict(kept={"none": 1.0, "dots_saveable": 0.7, "dots_with_no_batch_dims_saveable": 0.5, "full": 0.1},
                     fixed=10_000, shared=500, activations=80_000)
LOGITS_MATTER = dict(kept={"none": 1.0, "dots_saveable": 0.98, "dots_with_no_batch_dims_saveable": 0.97, "full": 0.95},
                     fixed=10_000, shared=500, activations=80_000)


@pytest.mark.parametrize("model", [REMAT_MATTERS, LOGITS_MATTER])
@pytest.mark.parametrize("rows, seq_len", [(32, 512), (8, 64)])
def test_the_plan_is_the_first_candidate_that_fits(model, rows, seq_len):
    """Reference: every candidate's memory, and the first in order of preference within the budget, at budgets at
    and just below every candidate's size; each candidate compiles at most once and the chosen one is returned."""
    steps = FakeSteps(**model)
    accums = micro_batch_options(rows, 1)
    order = [c for group in candidate_groups(REMAT_FASTEST_FIRST, accums, rows * seq_len) for c in group]
    sizes = sorted({steps.memory(c).total for c in order})
    for budget in [s - d for s in sizes for d in (0, 1)] + [sizes[-1] * 2]:
        fitting = [c for c in order if steps.memory(c).total <= budget]
        if not fitting:
            with pytest.raises(MemoryPlanError):
                steps.plan(budget, accums=accums, rows=rows, seq_len=seq_len)
            continue
        plan, compiled = steps.plan(budget, accums=accums, rows=rows, seq_len=seq_len)
        assert (plan.remat, plan.grad_accum) == compiled == fitting[0], budget
        assert plan.estimate_bytes == steps.memory(fitting[0]).total and plan.micro_batch_rows == rows // compiled[1]
        assert len(set(steps.compiled)) == len(steps.compiled)
        assert [(p.remat, p.grad_accum) for p in plan.probes] == steps.compiled


def test_few_compiles_in_the_common_cases():
    steps = FakeSteps(**REMAT_MATTERS)
    plan, _ = steps.plan(budget=10 ** 9)                              # the fastest fits: one compile
    assert steps.compiled == [("none", 1)] and plan.chosen == "fits"
    budget = steps.memory(("none", 2)).total                          # fewer micro-batches do not fit
    plan, _ = steps.plan(budget)
    assert (plan.remat, plan.grad_accum) == ("none", 2)
    assert steps.compiled == [("none", 1), ("none", 2)]               # the next split, straight away
    budget = steps.memory(("none", 4)).total                          # nor does a split in two
    plan, _ = steps.plan(budget)
    assert (plan.remat, plan.grad_accum) == ("none", 4)
    assert steps.compiled == [("none", 1), ("none", 4)]               # the first size rules out 2 micro-batches
    plan, _ = steps.plan(steps.memory(("none", 2)).total - 1)         # the split fails though its estimate fits
    assert (plan.remat, plan.grad_accum) == ("none", 4)
    assert steps.compiled == [("none", 1), ("none", 2), ("full", 4), ("none", 4)]  # then the least-memory one first
    with pytest.raises(MemoryPlanError) as error:                     # the arguments alone are over the budget
        steps.plan(budget=steps.fixed)
    assert steps.compiled == [("none", 1), ("full", 4)]               # the rest are ruled out by these two
    message = str(error.value)
    for expected in ("remat=none at 1 micro-batch:", "remat=full at 4 micro-batches:", "22 more ruled out",
                     "data.batch_size", "train.device_memory_gib"):
        assert expected in message


def test_no_choice_and_no_limit_take_the_first_candidate():
    steps = FakeSteps(**REMAT_MATTERS)
    plan, compiled = steps.plan(budget=100, remats=("full",), accums=(2,))
    assert compiled == ("full", 2) and plan.chosen == "only candidate" and "over the budget" in plan.line()
    plan, compiled = plan_memory(steps, remats=REMAT_FASTEST_FIRST, accums=(1, 2), batch_rows=2, seq_len=8,
                                 limit_bytes=None, memory_of=steps.memory)
    assert compiled == ("none", 1) and plan.chosen == "no limit" and "no memory limit known" in plan.line()


def test_candidate_order():
    """Micro-batches of >= 4096 tokens per device: remat policies in turn, each at its fewest micro-batches; then
    smaller micro-batches, the largest first, each with the fastest policy."""
    groups = candidate_groups(("none", "full"), (1, 2, 4, 8), tokens_per_device=16384)
    assert groups == [[("none", 1), ("none", 2), ("none", 4), ("full", 1), ("full", 2), ("full", 4)],
                      [("none", 8), ("full", 8)]]
    assert candidate_groups(("none", "full"), (1, 2), tokens_per_device=512) == [
        [("none", 1), ("full", 1)], [("none", 2), ("full", 2)]]
    assert micro_batch_options(12, 2) == (1, 2, 3, 6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    write_problems(directory)
    return directory


def test_the_tiny_run_plans_and_trains_as_the_same_settings_set_by_hand(data_dir, tmp_path, capsys, monkeypatch):
    """The tiny preset's step set by hand (no remat, 2 micro-batches), then planned with both 'auto' under a limit
    just above that step's size: the plan compiles (no remat, 1), (full, 1) and (no remat, 2) once each, takes the
    last, prints and stores it (config.json keeps 'auto', and a resume is accepted), and the run trains to the same
    losses and adapters. Then, on those real compiled sizes: no remat when it fits, a remat policy when only that
    fits at one micro-batch, the error below everything."""
    two_steps = {"train.steps": 2}
    by_hand = loop.run(tiny(lora_llama, data_dir, tmp_path / "hand", **two_steps,
                            **{"model.remat": "none", "data.grad_accum": 2}))
    hand_plan = by_hand.report["memory_plan"]
    assert (hand_plan["remat"], hand_plan["grad_accum"], hand_plan["chosen"]) == ("none", 2, "only candidate")

    compiles = []
    monkeypatch.setattr(planned_step, "compile_train_step",
                        lambda *a, **k: compiles.append(a[3]["input_ids"].shape[0]) or compile_train_step(*a, **k))
    budget = 1.2 * hand_plan["estimate_bytes"]
    auto = tiny(lora_llama, data_dir, tmp_path / "auto", **two_steps, **{
        "model.remat": "auto", "data.grad_accum": 0, "train.device_memory_gib": budget / (1 - HEADROOM) / GIB})
    planned = loop.run(auto)
    plan = planned.report["memory_plan"]
    sizes = {(p["remat"], p["grad_accum"]): p["estimate_bytes"] for p in plan["probes"]}
    assert list(sizes) == [("none", 1), ("full", 1), ("none", 2)] and compiles == [1, 1, 2]
    assert sizes["none", 1] > sizes["full", 1] > budget >= sizes["none", 2] == hand_plan["estimate_bytes"]
    assert (plan["remat"], plan["grad_accum"], plan["chosen"]) == ("none", 2, "fits")
    assert "memory plan: remat=none, 2 micro-batches of 4 rows, est. 0.1 of" in capsys.readouterr().out
    with open(tmp_path / "auto" / "memory_plan.json") as f:
        assert json.load(f) == plan
    with open(tmp_path / "auto" / "config.json") as f:
        stored = json.load(f)
    assert (stored["model"]["remat"], stored["data"]["grad_accum"]) == ("auto", 0)
    auto.resume = True
    assert check_workdir(auto)
    assert logged_losses(tmp_path / "auto") == logged_losses(tmp_path / "hand")
    for a, b in zip(jax.tree.leaves(planned.trainable), jax.tree.leaves(by_hand.trainable), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def replay(budget):  # the search again at other limits, on the compiled sizes above
        fixed = {c: StepMemory(0, size) for c, size in sizes.items()}
        return plan_memory(lambda *c: c, remats=("none", "full"), accums=(1, 2), batch_rows=8, seq_len=64,
                           limit_bytes=budget, headroom=0.0, memory_of=fixed.__getitem__)[0]

    assert (replay(sizes["none", 1]).remat, replay(sizes["none", 1]).grad_accum) == ("none", 1)
    assert (replay(sizes["full", 1]).remat, replay(sizes["full", 1]).grad_accum) == ("full", 1)
    with pytest.raises(MemoryPlanError, match="no train step fits"):
        replay(sizes["none", 2] // 2)


@pytest.mark.parametrize("overrides, message", [
    ({"model.remat": "fastest"}, "model.remat='fastest': use 'auto' (the fastest policy that fits"),
    ({"data.grad_accum": -1}, "data.grad_accum=-1 must be 0 (the memory plan picks"),
    ({"train.device_memory_gib": -1.0}, "train.device_memory_gib=-1.0 must be 0 (the device's own limit)"),
])
def test_bad_memory_settings_fail_before_loading(data_dir, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_config(tiny(lora_llama, data_dir, tmp_path, **overrides))


def test_an_auto_batch_must_still_split_over_the_batch_devices(data_dir, tmp_path):
    config = tiny(lora_llama, data_dir, tmp_path, **{"data.batch_size": 6, "data.grad_accum": 0})
    check_mesh(config, make_mesh(1, 2, 1, devices=jax.devices()[:2]), 1)     # 6 rows over 2 devices: fine
    with pytest.raises(ValueError, match=r"data.batch_size = 6 rows must split evenly over data\*fsdp = 4 devices"):
        check_mesh(config, make_mesh(1, 4, 1, devices=jax.devices()[:4]), 1)
