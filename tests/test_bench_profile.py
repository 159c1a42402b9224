"""bench/profile_step.py: kernel categories, merged busy time and GPU-row selection on a hand-written trace; the --tiny
run end to end (CPU)."""

import json
import os
import subprocess
import sys

import pytest

from bench.profile_step import busy_time, device_kernels, kernel_category, kernel_summary


@pytest.mark.parametrize("name, category", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNT", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_bf16_64x64_32x6_tn_align8>(Params)", "matmul"),
    ("gemm_fusion_dot_3", "matmul"),
    ("dot.5", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128", "attention"),
    ("void cudnn::fusion::compute_dot_do_o_specialized<true, 128>(void const*, void const*, void*)", "attention"),
    ("loop_add_fusion", "fusion"),
    ("input_reduce_fusion_2", "fusion"),
    ("loop_dynamic_update_slice_fusion", "fusion"),
    ("MemcpyD2D", "memcpy"),
    ("Memset", "memcpy"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "collective"),
    ("all-reduce-start.1", "collective"),
    ("rng_bit_generator", "other"),
])
def test_kernel_category(name, category):
    assert kernel_category(name) == category


def test_busy_time_merges_overlaps():
    assert busy_time([]) == 0.0
    assert busy_time([(20, 25), (0, 10), (5, 15), (21, 22)]) == 20.0  # [0, 15] and [20, 25]


def fake_gpu_trace() -> list[dict]:
    """Two streams of GPU 0, its CUPTI overhead row and a host thread; times in µs."""
    def meta(kind, pid, name, tid=None):
        return {"ph": "M", "name": kind, "pid": pid, "args": {"name": name}, **({} if tid is None else {"tid": tid})}

    def event(pid, tid, name, ts, dur, **args):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": args}

    return [meta("process_name", 1, "/host:CPU"), meta("thread_name", 1, "python", tid=5),
            meta("process_name", 7, "/device:GPU:0"), meta("thread_name", 7, "Stream #13(Kernel,Memset)", tid=13),
            meta("thread_name", 7, "Stream #20(Kernel)", tid=20), meta("thread_name", 7, "CUPTI overhead", tid=99),
            event(1, 5, "fusion.1", 0, 500, hlo_op="fusion.1"),
            event(7, 13, "sm90_xmma_gemm_bf16", 0, 10, hlo_op="custom-call.1"),
            event(7, 13, "loop_add_fusion", 12, 4),
            event(7, 13, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop", 20, 6),
            event(7, 13, "Memset", 30, 2),
            event(7, 20, "ncclDevKernel_AllReduce_Sum_bf16_RING_LL", 5, 9),
            event(7, 99, "CUPTI overhead", 0, 100)]


def test_device_kernels_take_the_gpu_streams():
    kernels, rows = device_kernels(fake_gpu_trace())
    assert len(kernels) == 5
    assert rows == ["/device:GPU:0 / Stream #13(Kernel,Memset)", "/device:GPU:0 / Stream #20(Kernel)"]


def test_device_kernels_fall_back_to_xla_ops_without_gpu_rows():
    host_only = [e for e in fake_gpu_trace() if e["pid"] == 1]
    kernels, rows = device_kernels(host_only)
    assert [k["name"] for k in kernels] == ["fusion.1"] and rows == ["/host:CPU / python"]


def test_kernel_summary_against_hand_computed_times():
    kernels, _ = device_kernels(fake_gpu_trace())
    summary = kernel_summary(kernels, steps=2, step_s=20e-6, top=2)  # two steps of 20 µs: 40 µs of wall time
    # busy: [0, 16] (gemm, all-reduce, fusion) + [20, 26] + [30, 32] = 24 µs, 12 µs per step
    assert summary["busy_ms_per_step"] == pytest.approx(0.012)
    assert summary["idle_fraction"] == pytest.approx(0.4)
    categories = {c["category"]: c for c in summary["categories"]}
    assert {c: categories[c]["ms_per_step"] * 2e3 for c in categories} == pytest.approx(
        {"collective": 9, "memcpy": 2, "attention": 6, "matmul": 10, "fusion": 4, "other": 0})
    assert categories["matmul"]["share_of_step"] == pytest.approx(0.25)
    assert categories["matmul"]["kernels_per_step"] == 0.5
    assert [(k["kernel"], k["category"]) for k in summary["top_kernels"]] == [
        ("sm90_xmma_gemm_bf16", "matmul"), ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "collective")]


def test_tiny_run_writes_the_profile(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "profile.json"
    process = subprocess.run([sys.executable, "-m", "bench.profile_step", "--tiny", "--steps", "2", "--warmup", "1",
                              "--out", str(out)], cwd=repo, capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "| category |" in process.stdout
    row, = json.loads(out.read_text())["rows"]
    assert row["status"] == "ok" and row["trace_rows"] and row["busy_ms_per_step"] > 0
    assert {c["category"] for c in row["categories"]} == {"collective", "memcpy", "attention", "matmul", "fusion",
                                                          "other"}
    assert {"step_s", "traced_step_s", "mfu", "idle_fraction", "top_kernels", "matmul_model_tflops"} <= set(row)
