"""The GSM8K comparison's planner, scheduler and summary: lr grids on the shared-lr lattice, what runs next given
the finished JSON (extensions past a best range end, finals only once the best is interior), resuming, the deadline,
and the LoRA -> full gap fraction against its formula."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import plan, summarize
from experiments.arms import ARMS, BASE_LR

SETTINGS = plan.Settings(arms=("lora-r8", "full"), lr_points=4, lr_factor=2.0, seeds=(0, 1), shared_lr=5e-4,
                         shared_seeds=(0,))


def write(out, run, val_loss, wall_s=10.0, jobs=1, accuracy=0.1, train_losses=(1.0,), **fields):
    path = plan.result_path(str(out), run)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    report = {"val_loss": val_loss, "trainable_params": 8}
    if run.evaluate:
        report["after"] = {"accuracy": accuracy, "answer_loss": val_loss / 10}
    record = {"name": run.arm, "lr": run.lr, "seed": run.seed, "evaluate": run.evaluate, "wall_s": wall_s,
              "concurrent_runs": jobs, "report": report,
              "curve": [{"step": i + 1, "train/loss": v} for i, v in enumerate(train_losses)], **fields}
    with open(path, "w") as f:
        json.dump(record, f)


def test_grids_sit_on_the_shared_lr_lattice_nearest_the_centre_first():
    assert plan.grid(ARMS["lora-r8"], SETTINGS) == pytest.approx([4e-3, 2e-3, 8e-3, 1e-3])
    assert plan.grid(ARMS["full"], SETTINGS) == pytest.approx([1.25e-4, 6.25e-5, 2.5e-4, 3.125e-5])
    off_lattice = ARMS["lora-r8"]._replace(lr=3e-3)  # snapped to 4e-3 = 5e-4 * 2^3
    assert plan.grid(off_lattice, SETTINGS._replace(lr_points=1)) == pytest.approx([4e-3])


def test_a_fresh_plan_is_base_then_the_shared_lr_then_the_sweeps_round_robin(tmp_path):
    runs = plan.pending(str(tmp_path), [], SETTINGS)
    head = [(r.arm, r.lr, r.seed, r.evaluate) for r in runs]
    assert head[:3] == [("base", BASE_LR, 0, True), ("lora-r8", 5e-4, 0, True), ("full", 5e-4, 0, True)]
    sweep = [(r.arm, pytest.approx(r.lr)) for r in runs[3:]]
    assert sweep == [("lora-r8", 4e-3), ("full", 1.25e-4), ("lora-r8", 2e-3), ("full", 6.25e-5),
                     ("lora-r8", 8e-3), ("full", 2.5e-4), ("lora-r8", 1e-3), ("full", 3.125e-5)]
    assert not any(r.tier >= 3 for r in runs)  # no extension or final before the sweep has results


def test_an_edge_best_extends_the_sweep_and_an_interior_best_starts_the_finals(tmp_path):
    out = str(tmp_path)
    for lr, loss in ((1e-3, 0.9), (2e-3, 0.8), (4e-3, 0.85), (8e-3, 0.95)):  # lora-r8: interior best at 2e-3
        write(out, plan.Run("lora-r8", lr, 0, False), loss)
    for lr, loss in ((3.125e-5, 1.3), (6.25e-5, 1.2), (1.25e-4, 1.1), (2.5e-4, 1.0)):  # full: best at the top edge
        write(out, plan.Run("full", lr, 0, False), loss)
    runs = plan.pending(out, plan.load_results(out), SETTINGS._replace(base=False, shared_seeds=()))
    assert [(r.arm, pytest.approx(r.lr), r.seed, r.evaluate) for r in runs] == [
        ("full", 5e-4, 0, False), ("lora-r8", 2e-3, 0, True), ("lora-r8", 2e-3, 1, True)]
    assert plan.chosen_lr(plan.load_results(out), "full", SETTINGS) is None
    write(out, plan.Run("full", 5e-4, 0, False), 1.05)  # worse: 2.5e-4 is now interior
    assert plan.chosen_lr(plan.load_results(out), "full", SETTINGS) == pytest.approx(2.5e-4)


def test_the_shared_lr_run_is_a_sweep_point_and_diverged_runs_lose(tmp_path):
    out = str(tmp_path)
    write(out, plan.Run("lora-r8", 5e-4, 0, True), 0.7)   # shared lr, evaluated: the lowest point
    for lr, loss in ((1e-3, 0.9), (2e-3, None), (4e-3, 0.85), (8e-3, 0.95)):
        write(out, plan.Run("lora-r8", lr, 0, False), loss)
    points = plan.sweep_points(plan.load_results(out), "lora-r8")
    assert points["0.002"][1] == math.inf and points["0.0005"][1] == 0.7
    runs = plan.pending(out, plan.load_results(out), SETTINGS._replace(arms=("lora-r8",), base=False))
    assert [(r.arm, pytest.approx(r.lr), r.evaluate) for r in runs] == [("lora-r8", 2.5e-4, False)]


def test_order_arm_finishes_each_arm_first(tmp_path):
    runs = plan.pending(str(tmp_path), [], SETTINGS._replace(order="arm", base=False))
    assert [r.arm for r in runs] == ["lora-r8"] * 5 + ["full"] * 5


def test_estimate_uses_measured_device_time_per_run_else_the_prior(tmp_path):
    out = str(tmp_path)
    write(out, plan.Run("lora-r8", 1e-3, 0, False), 0.9, wall_s=120.0, jobs=4)   # 30 device-seconds
    write(out, plan.Run("lora-r8", 2e-3, 0, False), 0.8, wall_s=200.0, jobs=4)   # 50
    todo = [plan.Run("full", 1e-4, 0, False), plan.Run("full", 1e-4, 0, True)]
    seconds, source = plan.estimate(todo, plan.load_results(out), {False: 1000.0, True: 7.0})
    assert seconds == pytest.approx(40.0 + 7.0)
    assert "sweep run 40 s (measured)" in source and "evaluated run 7 s (prior)" in source


def test_evaluated_runs_at_the_present_eval_batch_stand_for_the_rest(tmp_path):
    """Evaluated runs decoded 32 prompts at a time (no eval_batch in their JSON, 100 device-seconds) until one at 256
    ran (20): with eval_batch 256 only that one counts; without, or at a batch nothing ran at, all of them do."""
    out = str(tmp_path)
    write(out, plan.Run("lora-r8", 1e-3, 0, True), 0.9, wall_s=300.0, jobs=3)
    write(out, plan.Run("lora-r8", 1e-3, 1, True), 0.9, wall_s=300.0, jobs=3)
    write(out, plan.Run("lora-r8", 1e-3, 2, True), 0.9, wall_s=60.0, jobs=3, eval_batch=256)
    results, evaluated = plan.load_results(out), [plan.Run("full", 1e-4, 0, True)]
    assert plan.estimate(evaluated, results, {False: 1.0, True: 1.0}, eval_batch=256)[0] == pytest.approx(20.0)
    for batch in (None, 128):
        assert plan.estimate(evaluated, results, {False: 1.0, True: 1.0}, batch)[0] == pytest.approx(220 / 3)


def gap_groups(lora, full, pro, name="val_loss"):
    """{arm: records} with one metric per seed."""
    groups = {}
    for arm, values in (("lora-r8", lora), ("full", full), ("lorapro-r8", pro)):
        groups[arm] = [{"report": {"val_loss": v, "after": {"accuracy": v}}, "curve": []} for v in values]
    return groups


def test_gap_fraction_is_the_papers_formula_and_refuses_when_full_does_not_win():
    lora, full, pro = [0.90, 0.92], [0.70, 0.72], [0.80, 0.84]
    expected = (sum(lora) / 2 - sum(pro) / 2) / (sum(lora) / 2 - sum(full) / 2)  # 0.4
    assert float(summarize.gap_closed(gap_groups(lora, full, pro), "lorapro-r8", "val_loss")) == pytest.approx(
        expected, abs=0.005)
    # accuracy: higher is better, so L = -accuracy; the same numbers read as accuracies mean full loses
    assert summarize.gap_closed(gap_groups(lora, full, pro), "lorapro-r8", "accuracy").startswith(
        "cannot be tested here")
    # a win within twice the combined standard error does not count either
    assert summarize.gap_closed(gap_groups([0.90, 0.94], [0.89, 0.93], pro), "lorapro-r8", "val_loss").startswith(
        "cannot be tested here")
    assert summarize.gap_closed({"lora-r8": []}, "lorapro-r8", "val_loss") == "not run"


def test_humaneval_reruns_a_base_run_without_its_score_and_adds_a_column(tmp_path):
    out = str(tmp_path)
    base, lora = plan.Run("base", BASE_LR, 0, True), plan.Run("lora-r8", 5e-4, 0, True)
    write(out, base, 1.5)
    write(out, lora, 0.7)
    with_humaneval = SETTINGS._replace(humaneval=True)
    assert base[:4] not in [r[:4] for r in plan.pending(out, plan.load_results(out), SETTINGS)]
    assert plan.pending(out, plan.load_results(out), with_humaneval)[0][:4] == base[:4]   # the score before: rerun
    sweep, final = summarize.load(out)
    assert "HumanEval" not in summarize.result_table(final, {"lora-r8": 5e-4})
    record = json.load(open(plan.result_path(out, base)))
    record["report"]["humaneval"] = {"pass@1": 0.25}
    json.dump(record, open(plan.result_path(out, base), "w"))
    assert base[:4] not in [r[:4] for r in plan.pending(out, plan.load_results(out), with_humaneval)]
    sweep, final = summarize.load(out)
    table = summarize.result_table(final, {"lora-r8": 5e-4}).splitlines()
    assert table[0].endswith("| HumanEval pass@1 |") and table[1].count("---") == 10
    assert table[2].endswith("| — |") and table[3].endswith("| 0.250 |")   # lora-r8 has none; base 0.25


def test_a_diverged_final_reads_diverged_with_no_parameter_count(tmp_path):
    """A diverged run's report has no trainable_params (it stops before the count): its row says so rather than 0;
    another run of the same arm supplies the count."""
    out = str(tmp_path)
    diverged = plan.result_path(out, plan.Run("lora-r8", 1e-3, 0, True))
    os.makedirs(os.path.dirname(diverged))
    json.dump({"name": "lora-r8", "lr": 1e-3, "seed": 0, "evaluate": True, "wall_s": 5.0, "concurrent_runs": 1,
               "report": {"val_loss": None, "diverged": "training diverged at step 4"}, "curve": []},
              open(diverged, "w"))
    row = summarize.result_table(summarize.load(out)[1], {"lora-r8": 1e-3}).splitlines()[2].split(" | ")
    assert row[1:5] == ["lora-r8", "0.001", "1", "—"] and row[5] == "diverged"
    write(out, plan.Run("lora-r8", 1e-3, 1, True), 0.7)
    row = summarize.result_table(summarize.load(out)[1], {"lora-r8": 1e-3}).splitlines()[2].split(" | ")
    assert row[3:5] == ["2", "8"]


def test_humaneval_flags_reach_each_run_and_a_missing_package_stops_the_command(monkeypatch):
    from experiments import gsm8k_comparison as comparison

    args = comparison.parse_args(["--model", "m.gguf", "--gsm8k", "g", "--humaneval", "--humaneval-tokens", "64"])
    command = comparison.child_command(plan.Run("lora-r8", 5e-4, 0, True), args)
    assert command[-1] == "--humaneval" and command[command.index("--humaneval-tokens") + 1] == "64"
    assert comparison.settings_from(args).humaneval
    monkeypatch.setattr(comparison.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        comparison.parse_args(["--model", "m.gguf", "--gsm8k", "g", "--humaneval"])


def fake_child(run, args):
    """A stand-in for one run's process: writes its JSON (or fails for the arm named `full`)."""
    path = plan.result_path(args.out, run)
    record = {"name": run.arm, "lr": run.lr, "seed": run.seed, "wall_s": 1.0, "concurrent_runs": args.jobs,
              "report": {"val_loss": 1.0 / run.lr if run.arm != "base" else 2.0, "after": {"accuracy": 0.0,
                                                                                            "answer_loss": 1.0}},
              "curve": []}
    code = ("import json, sys; sys.exit(3) if {fail} else json.dump({record}, open({path!r}, 'w'))"
            .format(fail=run.arm == "full", record=repr(record), path=path))
    return [sys.executable, "-c", code]


def test_run_all_resumes_retries_failures_twice_and_stops_at_the_deadline(tmp_path, monkeypatch):
    from experiments import gsm8k_comparison as comparison

    monkeypatch.setattr(comparison, "child_command", fake_child)
    args = comparison.parse_args(["--model", "m.gguf", "--gsm8k", "g", "--out", str(tmp_path), "--jobs", "2",
                                  "--arms", "lora-r8,full", "--lr-points", "1", "--no-extend", "--seeds", "0",
                                  "--shared-seeds", ""])
    with pytest.raises(SystemExit, match="1 runs failed"):
        comparison.run_all(args)
    assert sorted(os.listdir(tmp_path / "final")) == ["base_lr1e-30_s0.json", "lora-r8_lr0.004_s0.json"]
    assert sorted(os.listdir(tmp_path / "sweep")) == ["full_lr0.000125.log", "lora-r8_lr0.004.json"]  # log kept
    finished = {r["path"]: os.path.getmtime(r["path"]) for r in plan.load_results(str(tmp_path))}
    args.arms = "lora-r8"
    comparison.run_all(args)  # resumes: nothing left for lora-r8, nothing rewritten
    assert {r["path"]: os.path.getmtime(r["path"]) for r in plan.load_results(str(tmp_path))} == finished
    args.seeds, args.deadline_s = "0,1,2", 1e-3
    comparison.run_all(args)  # a deadline already past starts nothing
    assert not os.path.exists(tmp_path / "final" / "lora-r8_lr0.004_s1.json")


def test_runs_spread_over_the_visible_gpus_one_slot_each(tmp_path, monkeypatch):
    """Two GPUs at --jobs 1: each run's process sees one GPU id of CUDA_VISIBLE_DEVICES, both ids get runs, and no
    two runs overlap on one GPU; asking for more GPUs than are visible stops before any run."""
    from experiments import gsm8k_comparison as comparison

    def child(run, args):
        path = plan.result_path(args.out, run)
        code = ("import json, os, time; began = time.time(); time.sleep(0.5); json.dump(dict(name={arm!r}, "
                "lr={lr!r}, seed={seed}, wall_s=1.0, concurrent_runs=1, report=dict(val_loss=1.0), curve=[], "
                "gpu=os.environ['CUDA_VISIBLE_DEVICES'], began=began, ended=time.time()), open({path!r}, 'w'))"
                ).format(arm=run.arm, lr=run.lr, seed=run.seed, path=path)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(comparison, "child_command", child)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    flags = ["--model", "m.gguf", "--gsm8k", "g", "--out", str(tmp_path), "--jobs", "1", "--arms", "lora-r8",
             "--lr-points", "3", "--no-extend", "--seeds", "", "--shared-seeds", "", "--no-base"]
    with pytest.raises(SystemExit, match="--gpus 3: only 2 GPUs are visible"):
        comparison.run_all(comparison.parse_args(flags + ["--gpus", "3"]))
    assert plan.load_results(str(tmp_path)) == []
    comparison.run_all(comparison.parse_args(flags))
    records = plan.load_results(str(tmp_path))
    assert len(records) == 3 and {r["gpu"] for r in records} == {"3", "5"}
    for gpu in ("3", "5"):
        spans = sorted((r["began"], r["ended"]) for r in records if r["gpu"] == gpu)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))


def test_a_run_needing_more_slots_waits_and_nothing_behind_it_starts_first(tmp_path, monkeypatch):
    """At --jobs 2 full fine-tuning takes both slots: runs start in the plan's order, so the full sweep run second in
    the plan starts once the first run ends, before the LoRA run behind it, and never beside another run."""
    from experiments import gsm8k_comparison as comparison

    def child(run, args):
        path = plan.result_path(args.out, run)
        code = ("import json, time; began = time.time(); time.sleep(0.5); json.dump(dict(name={arm!r}, lr={lr!r}, "
                "seed={seed}, wall_s=1.0, concurrent_runs=1, report=dict(val_loss=1.0), curve=[], began=began, "
                "ended=time.time()), open({path!r}, 'w'))").format(arm=run.arm, lr=run.lr, seed=run.seed, path=path)
        return [sys.executable, "-c", code]

    monkeypatch.setattr(comparison, "child_command", child)
    args = comparison.parse_args(["--model", "m.gguf", "--gsm8k", "g", "--out", str(tmp_path), "--jobs", "2",
                                  "--arms", "lora-r8,full", "--lr-points", "2", "--no-extend", "--seeds", "",
                                  "--shared-seeds", "", "--no-base"])
    planned = [(r.arm, r.lr) for r in plan.pending(str(tmp_path), [], comparison.settings_from(args))]
    assert [arm for arm, _ in planned] == ["lora-r8", "full", "lora-r8", "full"]
    comparison.run_all(args)
    records = sorted(plan.load_results(str(tmp_path)), key=lambda r: r["began"])
    assert [(r["name"], r["lr"]) for r in records] == planned
    for full in (r for r in records if r["name"] == "full"):
        assert all(r["ended"] <= full["began"] or r["began"] >= full["ended"] for r in records if r is not full)


def test_doc_examples_of_the_experiment_modules_run():
    import doctest

    from experiments import init_gradients, init_perturbation

    for module in (plan, init_perturbation, init_gradients):
        results = doctest.testmod(module)
        assert results.failed == 0 and results.attempted > 0


def test_init_perturbation_matches_the_authors_formula_in_float64():
    from experiments.init_perturbation import perturbation_ratio

    kernel = np.random.default_rng(1).normal(0, 0.2, (96, 48))
    rank, alpha = 16, 24.0
    delta = (alpha / rank) * kernel[:, :rank] @ kernel[:rank, :rank] @ kernel[:rank, :]
    expected = np.linalg.norm(delta) / np.linalg.norm(kernel)
    assert perturbation_ratio(kernel.astype(np.float32), rank, alpha) == pytest.approx(expected, rel=1e-5)


def test_receive_model_joins_chunks_one_call_at_a_time_and_checks_the_sha256(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                          "receive_model.sh")
    payload = os.urandom(5000)
    name = "m.gguf"

    def carry(chunks, sha):
        """One call's carried folder: chunk k and the manifest, as fetch_qwen.sh lays them out."""
        send = tmp_path / "send"
        shutil.rmtree(send, ignore_errors=True)
        for k, chunk in chunks:
            (send / f"{k:02d}").mkdir(parents=True)
            (send / f"{k:02d}" / f"{name}.part{k:02d}").write_bytes(chunk)
            (send / f"{k:02d}" / f"{name}.manifest").write_text(f"{name} 3 {sha}\n")
        return subprocess.run(["bash", script, str(send), str(tmp_path / "models")], capture_output=True, text=True)

    sha = hashlib.sha256(payload).hexdigest()
    pieces = [payload[:2000], payload[2000:4000], payload[4000:]]
    assert "1 of 3 chunks" in carry([(0, pieces[0])], sha).stdout
    assert "2 of 3 chunks" in carry([(1, pieces[1])], sha).stdout
    assert "ready" in carry([(2, pieces[2])], sha).stdout
    assert (tmp_path / "models" / name).read_bytes() == payload
    shutil.rmtree(tmp_path / "models")
    bad = carry([(0, pieces[0]), (1, pieces[2]), (2, pieces[1])], sha)  # out of order: wrong bytes
    assert bad.returncode == 1 and "sha256" in bad.stderr and not (tmp_path / "models" / name).exists()


def test_the_deadline_stops_runs_in_flight_and_leaves_no_json(tmp_path, monkeypatch):
    from experiments import gsm8k_comparison as comparison

    monkeypatch.setattr(comparison, "child_command", lambda run, args: [sys.executable, "-c", "import time; "
                                                                         "time.sleep(60)"])
    monkeypatch.setattr(comparison, "PRIOR_SECONDS", {False: 0.1, True: 0.1})  # predicted to fit: they start
    args = comparison.parse_args(["--model", "m.gguf", "--gsm8k", "g", "--out", str(tmp_path), "--jobs", "2",
                                  "--arms", "lora-r8", "--deadline-s", "2"])
    start = time.monotonic()
    comparison.run_all(args)
    assert time.monotonic() - start < 30
    assert plan.load_results(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path / "final")) == ["base_lr1e-30_s0.log", "lora-r8_lr0.0005_s0.log"]


@pytest.mark.parametrize("three_factors", [False, True])
def test_init_gradients_step_change_is_the_scaled_product_change_over_the_kernel_norm(three_factors):
    from experiments.init_gradients import effective_change

    rng = np.random.default_rng(2)
    layers, d_in, rank, d_out = 3, 12, 4, 10
    shapes = {"lora_a": (layers, d_in, rank), "lora_b": (layers, rank, d_out)}
    if three_factors:
        shapes["lora_m"] = (layers, rank, rank)
    before, after = ({n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()} for _ in range(2))
    kernels = rng.normal(size=(layers, d_in, d_out))
    scales = np.array([2.0, 0.5, 1.0])

    def product(f, i):
        core = f["lora_m"][i] if three_factors else np.eye(rank)
        return f["lora_a"][i].astype(np.float64) @ core @ f["lora_b"][i]

    expected = [scales[i] * np.linalg.norm(product(after, i) - product(before, i)) / np.linalg.norm(kernels[i])
                for i in range(layers)]
    nested = [{"layers": {"self_attn": {"q_proj": f}}} for f in (before, after)]
    norms = {"self_attn.q_proj": [float(np.linalg.norm(k)) for k in kernels]}
    got = effective_change(*nested, norms, {"self_attn.q_proj": scales})
    assert got["self_attn.q_proj"] == pytest.approx(expected, rel=1e-12)
