"""bench/compare_peers.sh's pieces on CPU: the report's per-shape table against hand-computed ratios, and the rows that
Liger (no CUDA, no liger-kernel) and tunix (not installed) leave instead of failing."""

import json
import sys

import pytest

from bench.report import peer_tables


def test_peer_table_ratios_against_the_fastest_pytorch_row():
    def row(file, framework, tokens_per_s, method="lora-r8", status="ok"):
        return dict(file=file, framework=framework, model="llama-3.1-8b", seq=2048, method=method, status=status,
                    tokens_per_s=tokens_per_s)

    rows = [row("peers_8b_r8_peft_compile.json", "pytorch+peft", 1500.0),
            row("peers_8b_r8_peft_compile_ckpt.json", "pytorch+peft", 1000.0),
            row("peers_8b_r8_liger.json", "pytorch+peft", None, status="needs_cuda"),
            row("peers_8b_r8_ours_none.json", "lowrank-jax", 2000.0),
            row("peers_8b_r8_tunix.json", "tunix", 900.0),
            row("peers_8b_r16_ours_none.json", "lowrank-jax", 1800.0, method="lora-r16"),
            row("peers_8b_r16_peft_bf16.json", "pytorch+peft", 1200.0, method="lora-r16"),
            row("headline_jax.json", "lowrank-jax", 5000.0)]  # not a compare_peers.sh file
    table, = peer_tables(rows).values()
    summary = [(r["method"], r["run"], r.get("vs_pytorch")) for r in table]
    assert summary == [("lora-r8", "ours_none", pytest.approx(2000 / 1500)),
                       ("lora-r8", "peft_compile", pytest.approx(1.0)),
                       ("lora-r8", "peft_compile_ckpt", pytest.approx(1000 / 1500)),
                       ("lora-r8", "tunix", pytest.approx(900 / 1500)),
                       ("lora-r8", "liger", None),
                       ("lora-r16", "ours_none", pytest.approx(1800 / 1200)),
                       ("lora-r16", "peft_bf16", pytest.approx(1.0))]


def test_our_other_rows_against_ours_none_at_the_same_rank_and_batch():
    """A lever or LoRA-Pro row reads as its tokens/s over ours_none's at its own rank and batch; a row whose batch
    shrank has no ours_none to compare with, and ours_none itself and the peers get no such ratio."""
    def row(file, framework, tokens_per_s, batch=4, method="lora-r8", status="ok"):
        return dict(file=file, framework=framework, model="llama-2-7b", seq=2048, method=method, status=status,
                    tokens_per_s=tokens_per_s, batch=batch)

    rows = [row("peers_7b_r8_ours_none.json", "lowrank-jax", 2000.0),
            row("peers_7b_r8_ours_lorapro.json", "lowrank-jax", 1800.0, method="lorapro_adamw-r8-fp32"),
            row("peers_7b_r8_ours_lorapro_bf16_fused.json", "lowrank-jax", 1500.0, batch=2,
                method="lorapro_adamw-r8-bf16-fused"),
            row("peers_7b_r8_ours_lorapro_fused.json", "lowrank-jax", None, method="lorapro_adamw-r8-fp32-fused",
                status="oom"),
            row("peers_7b_r16_ours_fused.json", "lowrank-jax", 1700.0, method="lora-r16"),
            row("peers_7b_r16_ours_none.json", "lowrank-jax", 1600.0, method="lora-r16"),
            row("peers_7b_r8_peft_bf16.json", "pytorch+peft", 1400.0)]
    ratios = {r["file"][len("peers_7b_"):-len(".json")]: r.get("vs_ours_none") for r in next(iter(
        peer_tables(rows).values()))}
    assert ratios == {"r8_ours_none": None,
                      "r8_ours_lorapro": pytest.approx(1800 / 2000),
                      "r8_ours_lorapro_bf16_fused": None, "r8_ours_lorapro_fused": None,
                      "r16_ours_fused": pytest.approx(1700 / 1600), "r16_ours_none": None, "r8_peft_bf16": None}


def test_liger_without_cuda_or_package_leaves_a_needs_cuda_row(tmp_path, monkeypatch):
    from bench import peft_step
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # as where liger-kernel is not installed
    out = tmp_path / "liger.json"
    peft_step.main(["--tiny", "--methods", "lora-r16", "--liger", "flce", "--out", str(out)])
    row, = json.loads(out.read_text())["rows"]
    assert (row["status"], row["liger"], row["method"]) == ("needs_cuda", "flce", "lora-r16")
    assert "pip install liger-kernel" in row["error"]


def test_tunix_missing_is_a_row_naming_the_install(tmp_path, monkeypatch):
    from bench import tunix_step
    monkeypatch.setitem(sys.modules, "tunix", None)
    out = tmp_path / "tunix.json"
    tunix_step.main(["--tiny", "--methods", "lora-r8,lora-r16", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["status"]) for r in rows] == [("lora-r8", "error"), ("lora-r16", "error")]
    assert "bench/peers_requirements.txt" in rows[0]["error"]
    with pytest.raises(ValueError, match="tunix's"):
        tunix_step.TunixSpec("tiny", "lora-r8", 64, 4, remat="full").check()
