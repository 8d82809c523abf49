"""The benchmarks run and write well-formed records (no timed assertions: speed is measured by
the scripts, not by tests), and the FLOPs claim of Table 1c holds."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
sys.path.insert(0, BENCH)

import common  # noqa: E402

ENV_KEYS = {"date", "unix_time", "cpu", "torch", "device", "load_avg", "bench", "quick"}


def records(folder, name):
    with open(os.path.join(folder, f"{name}.json")) as f:
        recs = json.load(f)
    assert isinstance(recs, list) and recs
    for r in recs:
        assert ENV_KEYS <= r.keys() and r["bench"] == name and r["quick"] is True
    return recs


def test_gpu_check_script_runs_its_stages_on_the_cpu(tmp_path):
    """bench/gpu_check.sh with DEVICE=cpu QUICK=1: every stage of the GPU check, tiny, in seconds."""
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "QUICK": "1", "OUT": str(out), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join(BENCH, "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all stages passed" in proc.stdout

    (mm,) = records(out, "matmul")
    assert mm["precision"] == "bf16" and mm["tflops"] > 0

    (fl,) = records(out, "flops")
    assert fl["gflops_encoder"] > fl["gflops_decoder_only"] > 0 and fl["ratio"] > 1

    steps = records(out, "pretrain_step")
    (st,) = [r for r in steps if "preset" not in r]
    # the tiers' stage: a tier's baseline model (cifar_vitt: ViT-Ti/4 at 32 px, 64-wide decoder) runs
    (tier,) = [r for r in steps if "preset" in r]
    assert tier["preset"] == "cifar_vitt" and tier["arch"] == "vit_ti_patch4" and tier["img_size"] == 32
    assert tier["decoder"] == "8x64" and tier["images_per_s"] > 0 and "error" not in tier
    assert "error" not in st, st
    assert st["precision"] == "bf16" and st["images_per_s"] > 0 and st["ms_per_step"] > 0
    assert st["efficiency"] == pytest.approx(st["achieved_tflops"] / st["matmul_peak_tflops"], rel=5e-3)
    assert st["achieved_tflops"] == pytest.approx(
        st["train_gflops_per_image"] * st["batch"] / st["ms_per_step"], rel=5e-3)  # GFLOP/ms = TFLOP/s
    # the same attention path as the training loop: plain attention in bf16 on a CPU
    assert len(st["times_ms"]) == st["steps"] and st["fused_attn"] is False
    assert len(st["cpu_times_ms"]) == st["steps"] and st["efficiency_cpu_time"] > 0

    wc = records(out, "wallclock")
    assert [r["variant"] for r in wc] == ["encoder@8", "decoder_only@8", "decoder_only@1"]
    base = wc[0]["ms_per_step"]
    for r in wc:
        assert {"model", "variant", "ms_per_step", "speedup", "device", "precision", "batch"} <= r.keys()
        assert r["device"] == "cpu" and r["ms_per_step"] > 0 and r["error"] is None
        assert r["speedup"] == pytest.approx(base / r["ms_per_step"], rel=5e-3)
    assert wc[0]["speedup"] == 1.0

    summary = (out / "summary.md").read_text()
    assert "Table 2" in summary and "| tiny | encoder@8 | bf16 |" in summary


def test_records_are_appended_and_a_damaged_file_is_never_overwritten(tmp_path):
    common.append_records(str(tmp_path), "x", [{"a": 1.23456789}])
    common.append_records(str(tmp_path), "x", [{"a": 2}])
    with open(tmp_path / "x.json") as f:
        assert json.load(f) == [{"a": 1.235}, {"a": 2}]  # four significant figures: small files
    (tmp_path / "y.json").write_text("[{broken")
    with pytest.raises(common.UserError, match="y.json is unreadable"):
        common.append_records(str(tmp_path), "y", [{"a": 1}])
    assert (tmp_path / "y.json").read_text() == "[{broken"


def test_bad_model_name_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "pretrain_step.py"), "--models", "vit_nope",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "unknown model 'vit_nope'" in proc.stderr and not os.listdir(tmp_path)


def test_table_1c_flops_ratio_and_decoder_share_match_the_paper():
    """ViT-L/16 with the 8 x 512 decoder: mask tokens in the encoder cost 3.3x (Table 1c) and the
    decoder costs 9% of the encoder per token (section 4.1), counted on the meta device."""
    import flops
    r = flops.count("vit_large_patch16")
    assert r["decoder"] == "8x512" and r["encoder_tokens"] == 50 and r["decoder_tokens"] == 197
    assert r["ratio"] == pytest.approx(3.3, abs=0.1)
    assert r["decoder_share_per_token"] == pytest.approx(0.09, abs=0.01)
    assert r["train_gflops_decoder_only"] == pytest.approx(3 * r["gflops_decoder_only"], rel=0.01)
