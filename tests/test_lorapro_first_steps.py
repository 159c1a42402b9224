"""experiments/lorapro_first_steps.py: Algorithm 2's first updates from B = 0, against the facts docs/experiments.md
reads from it."""

import optax
import pytest

from experiments import lorapro_first_steps as fs


def run(monkeypatch, peak: float, optimizer: str) -> list[dict]:
    monkeypatch.setattr(fs, "SHAPE", (256, 192))
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, 2, 200, 0.0)
    return fs.first_steps(fs.optimizers(schedule, fs.ALPHA / fs.RANK, 1e-8)[optimizer], schedule)


def test_the_pulled_back_step_of_a_is_independent_of_the_peak_lr(monkeypatch):
    low, high = (run(monkeypatch, peak, "lorapro_adamw") for peak in (2.5e-4, 1e-3))
    lora = run(monkeypatch, 1e-3, "adamw (LoRA)")
    assert low[1]["a_change"] == 0 and high[1]["a_change"] == 0          # b = 0 before update 2: u_a = s U bᵀ = 0
    assert low[2]["a_change"] == pytest.approx(high[2]["a_change"], rel=0.02)   # b ∝ lr_2, Δa ∝ lr_3 / lr_2
    assert high[2]["a_change"] > 10 * lora[2]["a_change"]


def test_the_first_kernel_step_is_a_projection_of_full_fine_tunings(monkeypatch):
    # At update 2 (b = 0) the kernel moves by lr·P(U) with P the projection onto rows of aᵀ, and |U| ≤ 1 entrywise,
    # so ‖ΔK‖ ≤ lr·√(in·out); LoRA's AdamW moves only b, by about lr per entry: ‖ΔK‖ ≈ lr·s·‖a‖·√out.
    ratios = {name: run(monkeypatch, 5e-4, name)[1]["kernel_change_vs_full_adamw"]
              for name in ("lorapro_adamw", "adamw (LoRA)")}
    assert 0.5 < ratios["lorapro_adamw"] <= 1.0
    assert ratios["adamw (LoRA)"] < ratios["lorapro_adamw"] / 4
