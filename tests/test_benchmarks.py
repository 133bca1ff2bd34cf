"""The latency suite's own tests: every group runs at the smallest size (the smoke profile) on
an exported tiny run and writes well-formed results; the statistics, the machine record, the
profiles and the merging of results files are checked on known inputs.

No assertion here is about how fast anything is: the figures are checked for shape,
consistency (equal costs, counts, FLOP relations) and finiteness only.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.machine import describe_machine, library_versions, machine_slug
from benchmarks.measure import interleaved_rounds, latency_stats, ratio_stats
from benchmarks.profiles import get_profile
from benchmarks.run import GROUP_FILES, merge_previous
from benchmarks.run import main as bench_main
from serving.backends import openvino_cpu_precisions

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("## 1. No added inference cost", "## 2. Backends", "## 3. The serving path", "## 4. Training throughput")
# fp32, and bf16 where the CPU has bf16 instructions (the export's int8 IR is not in the latency suites yet)
OPENVINO_HERE = [p for p in openvino_cpu_precisions() if p != "int8"]
CPU_BACKENDS = ("onnxruntime-cpu", "torch-cpu", "openvino-cpu-fp32", "openvino-cpu-bf16", "openvino-cpu-int8")
# the backends group quantizes its subjects itself, wherever the CPU runs int8 and NNCF is installed
INT8_HERE = "int8" in openvino_cpu_precisions() and importlib.util.find_spec("nncf") is not None


# ----------------------------------------------------------------------------- helpers on known inputs
def test_latency_stats_of_a_known_series():
    stats = latency_stats([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["rounds"] == 100
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p95_ms"] == pytest.approx(95.05)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert (stats["min_ms"], stats["max_ms"]) == pytest.approx((1.0, 100.0))
    with pytest.raises(ValueError, match="no samples"):
        latency_stats([])


def test_ratio_stats_per_round():
    r = ratio_stats([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert r["median"] == pytest.approx(2.0) and r["p10"] == pytest.approx(2.0) and r["p90"] == pytest.approx(2.0)
    assert r["of_medians"] == pytest.approx(2.0) and r["rounds"] == 3
    with pytest.raises(ValueError, match="equal, non-zero length"):
        ratio_stats([1.0, 2.0], [1.0])


def test_interleaved_rounds_alternate_the_order(benchmark):
    profile = get_profile("smoke", "cpu")
    calls = []
    samples = interleaved_rounds(
        benchmark,
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        profile=profile,
        device=torch.device("cpu"),
        min_rounds=4,
    )
    warm = 2 * profile.warmup
    measured = calls[warm:]
    assert len(samples["a"]) == len(samples["b"]) == len(measured) // 2 >= 4
    # round 0: a then b, round 1: b then a, ... so that neither side always goes first
    assert measured[:8] == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(s >= 0 for s in samples["a"] + samples["b"])


def test_machine_slug_names_the_device():
    epyc = {"cpu": "AMD EPYC 7763 64-Core Processor", "cores": 2, "gpu": None}
    assert machine_slug(epyc, "cpu") == "amd-epyc-7763-64-core-2c"
    assert machine_slug({"cpu": "Intel(R) Xeon(R) CPU @ 2.20GHz", "cores": 16, "gpu": None}, "cpu") == "intel-xeon-16c"
    gpu_machine = {"cpu": "Intel(R) Xeon(R) Platinum 8480C", "cores": 16, "gpu": {"name": "NVIDIA H200"}}
    assert machine_slug(gpu_machine, "cuda") == "nvidia-h200"
    assert machine_slug(gpu_machine, "cpu") == "intel-xeon-platinum-8480c-16c"  # CPU figures on a GPU machine
    # under oneDNN's instruction-set cap the CPU is measured as another one (here: without AMX)
    capped = {
        "cpu": "Intel(R) Xeon(R) Processor",
        "cores": 2,
        "gpu": None,
        "env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    }
    assert machine_slug(capped, "cpu") == "intel-xeon-2c-max-isa-avx512-core-bf16"


def test_machine_record_and_versions():
    machine = describe_machine()
    assert machine["cores"] == len(os.sched_getaffinity(0))
    assert machine["cpu"] and machine["memory_gib"] > 0
    assert (machine["gpu"] is None) == (not torch.cuda.is_available())
    versions = library_versions()
    assert versions["torch"] == torch.__version__ and versions["python"] == sys.version.split()[0]


def test_profiles_by_name_and_device():
    cpu, smoke = get_profile("standard", "cpu"), get_profile("smoke", "cpu")
    assert cpu.sizes == ("run", "full") and cpu.views == (1, 3, 30) and cpu.cost_views == (1, 30)
    assert smoke.full_train_batch is None and "full" not in smoke.sizes
    assert get_profile("standard", "cuda").full_train_batch == (5, 5)
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        get_profile("huge", "cpu")
    with pytest.raises(ValueError, match="device must be cpu or cuda"):
        get_profile("standard", "tpu")


def test_merging_keeps_the_groups_a_partial_run_did_not_measure(tmp_path):
    old = {
        "profile": {"name": "standard"},
        "device": "cpu",
        "groups": {"training": [{"kind": "step"}], "backends": [{"old": True}]},
        "group_runs": {"training": {"measured_utc": "T1"}, "backends": {"measured_utc": "T1"}},
        "skipped": [{"test": "benchmarks/test_training.py::x", "reason": "r"}],
        "failed": [],
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    new = {
        "profile": {"name": "standard"},
        "device": "cpu",
        "groups": {"backends": [{"old": False}]},
        "group_runs": {"backends": {"measured_utc": "T2"}},
        "skipped": [],
        "failed": [],
    }
    merged = merge_previous(new, path)
    assert merged["groups"] == {"backends": [{"old": False}], "training": [{"kind": "step"}]}
    assert merged["group_runs"]["training"]["measured_utc"] == "T1" and merged["skipped"][0]["reason"] == "r"
    other = dict(new, device="cuda", groups={"backends": []}, group_runs={})
    assert "training" not in merge_previous(other, path)["groups"]  # another device: nothing to merge


def test_a_run_that_is_not_trained_is_named(tmp_path, capsys):
    code = bench_main(["--run", str(tmp_path / "nowhere"), "--no-prepare", "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "nowhere is not trained" in err and "make train" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- every group, smoke profile
SMOKE_TIMEOUT_S = 900
# a test that needs the smoke run waits for it: the run's own timeout must fire first, with its output
WAITS_FOR_SMOKE = pytest.mark.timeout(SMOKE_TIMEOUT_S + 300)


@pytest.fixture(scope="module")
def smoke(tiny_run, tmp_path_factory):
    """`python -m benchmarks.run --profile smoke` on an exported copy of the tiny run, all groups:
    (exit code, results dict, results folder, output)."""
    from export.build import export_run

    base = tmp_path_factory.mktemp("bench")
    run = base / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "serve", "logs"))
    export_run(run, tensorrt="off")
    out = base / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--run",
            str(run),
            "--profile",
            "smoke",
            "--device",
            "cpu",
            "--out",
            str(out),
            "--no-prepare",
            "--groups",
            *GROUP_FILES,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    files = sorted(out.glob("*.json"))
    results = json.loads(files[0].read_text()) if files else None
    return proc.returncode, results, out, proc.stdout + proc.stderr


def finite_positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in values)


@pytest.mark.slow
@WAITS_FOR_SMOKE
def test_smoke_run_writes_json_markdown_and_plot(smoke):
    code, results, out, output = smoke
    assert code == 0, output[-4000:]
    stem = f"{results['machine_slug']}-{results['created_utc'][:10]}-smoke"
    assert sorted(p.name for p in out.iterdir()) == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / f"{stem}.md").read_text()
    assert all(section in md for section in SECTIONS) and "speedup vs ONNX Runtime CPU fp32" in md
    assert f"![latency per backend and view count]({stem}.png)" in md
    assert results["failed"] == []
    assert set(results["groups"]) == set(GROUP_FILES)


@pytest.mark.slow
@WAITS_FOR_SMOKE
def test_results_record_machine_versions_and_the_run(smoke):
    _, results, _, _ = smoke
    assert results["machine"]["cores"] == len(os.sched_getaffinity(0)) and results["machine"]["cpu"]
    assert results["versions"]["torch"] == torch.__version__
    assert results["device"] == "cpu" and results["profile"]["name"] == "smoke"
    manifest = json.loads((Path(results["run"]["path"]) / "export" / "manifest.json").read_text())
    assert results["run"]["model_version"] == manifest["model_version"]
    assert results["run"]["flops_per_view"] == manifest["flops_per_view"]
    assert results["serving_default"]["backend"] in CPU_BACKENDS
    # fp32, and bf16 for OpenVINO bf16's MFU where the CPU runs it
    dtypes = ["float32"] + (["bfloat16"] if "bf16" in OPENVINO_HERE else [])
    assert [m["dtype"] for m in results["matmul"]] == dtypes
    for matmul in results["matmul"]:
        # the reference is the fastest of the implementations timed (BLAS matmul, oneDNN 1x1 conv)
        impls = matmul["implementations"]
        assert set(impls) == {"torch.matmul", "onednn-conv1x1"} and finite_positive(matmul["tflops"])
        assert matmul["tflops"] == max(v["tflops"] for v in impls.values())


@pytest.mark.slow
@WAITS_FOR_SMOKE
def test_no_added_cost_records(smoke):
    _, results, _, _ = smoke
    records = results["groups"]["no_added_cost"]
    engines = (
        "onnxruntime-cpu",
        "torch-export-cpu",
        *(f"openvino-cpu-{p}" for p in OPENVINO_HERE),
        *(["openvino-cpu-int8"] if INT8_HERE else []),
    )
    assert {(r["backend"], r["views"]) for r in records} == {(b, v) for b in engines for v in (1, 3)}
    for r in records:
        assert r["params"]["equal"] and r["params"]["student"] == r["params"]["plain"] == 131_871
        flops = r["flops_per_view"]
        assert flops["equal"] and flops["student"] == flops["plain"] == flops["student_onnx"] == flops["plain_onnx"]
        assert r["student"]["rounds"] == r["plain"]["rounds"] == r["ratio"]["rounds"] >= 3
        assert finite_positive(r["student"]["median_ms"], r["plain"]["median_ms"], r["ratio"]["median"])
        assert r["within_target"] == (0.97 <= r["ratio"]["median"] <= 1.03)


@pytest.mark.slow
@WAITS_FOR_SMOKE
def test_backends_records_and_skips(smoke):
    _, results, _, _ = smoke
    records = results["groups"]["backends"]
    measured = {(r["backend"], r["views"]) for r in records}
    backends = (
        "torch-eager-fp32",
        "torch-channels-last-3d",
        "onnxruntime-cpu",
        *(f"openvino-cpu-{p}" for p in OPENVINO_HERE),
        *(["openvino-cpu-int8"] if INT8_HERE else []),
    )
    assert measured == {(b, v) for b in backends for v in (1, 3)}
    for r in records:
        assert r["median_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["views_per_s"] == pytest.approx(r["views"] / (r["median_ms"] / 1e3))
        assert r["flops"] == r["views"] * r["config"]["flops_per_view"]
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["matmul_tflops"])
        # every CPU runtime against ONNX Runtime fp32, interleaved with it round by round
        speedup = r["speedup"]
        assert r["speedup_reference"] == "onnxruntime-cpu fp32" and speedup["rounds"] == r["rounds"]
        assert finite_positive(speedup["median"], speedup["p10"], speedup["p90"], r["reference_median_ms"])
        assert r["precision"] == next((p for p in ("bf16", "int8") if r["backend"].endswith(p)), "fp32")
        if r["backend"] == "onnxruntime-cpu":
            assert speedup["median"] == 1.0
    skipped = {s["test"].split("[")[-1].rstrip("]"): s["reason"] for s in results["skipped"]}
    assert "GPU" in skipped["run-onnxruntime-cuda-1view"] and "CUDA" in skipped["run-torch-bf16-channels-last-3d-1view"]
    assert "tensorrt" in skipped["run-tensorrt-fp16-1view"].lower()
    if "bf16" not in OPENVINO_HERE:
        assert "bf16 natively" in skipped["run-openvino-cpu-bf16-1view"]


@pytest.mark.slow
@WAITS_FOR_SMOKE
def test_serving_records(smoke):
    _, results, _, _ = smoke
    records = results["groups"]["serving"]
    decode = [r for r in records if r["kind"] == "decode"]
    assert len(decode) == 1
    d = decode[0]
    assert d["views"] == d["clips"] * d["crops"] == 6 and d["view_shape"] == [3, 4, 32, 32]
    assert d["frames_sampled"] == d["clips"] * 4 and d["frames_in_video"] > 0
    assert set(d["stages"]) == {"isolated", "in_process", "views", "previous", "scores+json"}
    assert finite_positive(d["before_model_ms"], d["before_model_ms_in_process"], d["before_model_ms_previous"])
    assert d["isolation_overhead_ms"] == pytest.approx(d["before_model_ms"] - d["before_model_ms_in_process"])
    http = [r for r in records if r["kind"] == "http"]
    if not http:  # TorchServe or Java missing here: the skip must say so
        assert any("TorchServe" in s["reason"] or "java" in s["reason"] for s in results["skipped"])
        return
    # the server's choice against the same export served by ONNX Runtime fp32, end to end
    speedup = next(r for r in records if r["kind"] == "http_speedup")
    assert speedup["backends"]["onnxruntime"] == "onnxruntime-cpu" and speedup["backends"]["auto"] in CPU_BACKENDS
    assert speedup["speedup"]["rounds"] == speedup["latency"]["auto"]["rounds"] >= 3
    assert finite_positive(speedup["speedup"]["median"], speedup["latency"]["onnxruntime"]["median_ms"])
    assert speedup["within_target"] == (speedup["speedup"]["median"] >= 3.0)
    h = http[0]
    assert [lv["concurrency"] for lv in h["levels"]] == [1, 2]
    assert h["levels"][0]["requests"] == h["http"]["rounds"] == h["model"]["rounds"] >= 3
    assert h["config"]["views"] == 6 and h["config"]["backend"] in CPU_BACKENDS
    assert set(h["server_timings_ms"]) >= {"decode", "preprocess", "inference", "total"}
    assert finite_positive(h["ratio_http_to_model"]["median"], h["levels"][1]["requests_per_s"])


@pytest.mark.slow
@WAITS_FOR_SMOKE
def test_training_records(smoke):
    _, results, _, _ = smoke
    records = results["groups"]["training"]
    step = next(r for r in records if r["kind"] == "step")
    assert step["size"] == "run" and step["config"]["batch_labeled"] == 2 and step["config"]["batch_unlabeled"] == 4
    # the teacher doubles the network work: the method's step counts more FLOPs than FixMatch's
    assert step["method"]["flops_per_step"] > 1.5 * step["fixmatch"]["flops_per_step"] > 0
    assert step["method"]["clips_per_s"] == pytest.approx(6 / (step["method"]["median_ms"] / 1e3))
    assert finite_positive(step["overhead"]["median"], step["method"]["mfu"], step["fixmatch"]["mfu"])
    data = next(r for r in records if r["kind"] == "data")
    assert data["config"]["torch_threads"] == 1 and data["frames_decoded_per_clip"] == 8
    assert data["clips_per_s_per_worker"] == pytest.approx(data["config"]["batch"] / (data["median_ms"] / 1e3))
