"""Group 2, backends: the exported student's latency on each runtime at 1, 3 and 30 views
(median, p90, p99, views/s), its achieved FLOP/s as a fraction of what a large matmul achieves
on the same device in this run (MFU; target >= 50 % for the 30-view forward), and, for every
runtime computing on the CPU, its speedup over ONNX Runtime fp32 on the CPU (what `auto` served
on CPUs before OpenVINO), interleaved round by round with it.

A runtime that does not exist here (ONNX Runtime's CUDA provider without a GPU, TensorRT where
it is not installed, bf16 autocast on a CPU, OpenVINO bf16 on a CPU without bf16 instructions)
is skipped, and the results list why. OpenVINO int8 runs the subject's IR quantized by the
export's NNCF step (its MFU is counted against the fp32 matmul).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.measure import interleaved_rounds, latency_stats, ratio_stats, store
from benchmarks.profiles import profile_from_options
from benchmarks.subjects import ONNX_FILE, onnxruntime_runner, openvino_runner, openvino_unavailable, torch_runner
from export.openvino_ir import nncf_unavailable

pytestmark = pytest.mark.benchmark(group="backends")
# "-resident": input and logits stay on the GPU, the model's compute alone (its MFU); every
# other case goes from host input to host logits, as a server's model call does
BACKENDS = (
    "torch-eager-fp32",
    "torch-channels-last-3d",
    "torch-bf16-channels-last-3d",
    "torch-bf16-channels-last-3d-resident",
    "onnxruntime-cpu",
    "onnxruntime-cuda",
    "tensorrt-fp16",
    "openvino-cpu-fp32",
    "openvino-cpu-bf16",
    "openvino-cpu-int8",
)
MFU_TARGET = 0.5
SPEEDUP_REFERENCE = "onnxruntime-cpu"  # fp32
PRECISIONS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# the dtype whose matmul peak an OpenVINO precision's MFU is measured against: int8 has no torch
# matmul to compare with, so its MFU is against fp32 (the speedup is the figure to read)
ARITHMETIC = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        profile = profile_from_options(metafunc.config)
        cases = [(size, backend, views) for size in profile.sizes for backend in BACKENDS for views in profile.views]
        metafunc.parametrize("case", cases, ids=[f"{s}-{b}-{v}view" for s, b, v in cases])


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


def tensorrt_plan(s, manifest: dict, engine_dir: Path) -> Path:
    """The run's exported engine, or one built here from the subject's ONNX file."""
    from export import trt_engine

    if s.size == "run" and (manifest.get("tensorrt") or {}).get("file"):
        return s.student_dir / manifest["tensorrt"]["file"]
    plan = engine_dir / f"{s.size}.plan"
    if not plan.is_file():
        trt_engine.build_engine(s.student_dir / ONNX_FILE, plan, precision="fp16", opt_views=30, max_views=30)
    return plan


def make_runner(backend: str, s, x, device: torch.device, manifest: dict, engine_dir, openvino_ir):
    """(runner, the device it computes on, the dtype of its arithmetic) or pytest.skip."""
    gpu = device.type == "cuda"
    if backend == "torch-eager-fp32":
        return torch_runner(s.student, x, device), device, torch.float32
    if backend == "torch-channels-last-3d":
        return torch_runner(s.student, x, device, channels_last=True), device, torch.float32
    if backend in ("torch-bf16-channels-last-3d", "torch-bf16-channels-last-3d-resident"):
        if not gpu:
            pytest.skip("bf16 autocast is measured on CUDA GPUs only")
        runner = torch_runner(
            s.student, x, device, channels_last=True, dtype=torch.bfloat16, resident=backend.endswith("resident")
        )
        return runner, device, torch.bfloat16
    if backend.startswith(("onnxruntime", "tensorrt", "openvino")) and not (s.student_dir / ONNX_FILE).is_file():
        pytest.skip(s.onnx_missing or f"no {ONNX_FILE} in {s.student_dir}")
    if backend == "onnxruntime-cpu":
        runner, _ = onnxruntime_runner(s.student_dir / ONNX_FILE, x, gpu=False)
        return runner, torch.device("cpu"), torch.float32
    if backend == "onnxruntime-cuda":
        if not gpu:
            pytest.skip("ONNX Runtime's CUDA provider needs a GPU; none is used in this run")
        runner, used = onnxruntime_runner(s.student_dir / ONNX_FILE, x, gpu=True)
        if used != "onnxruntime-cuda":
            pytest.skip("this onnxruntime build has no usable CUDA provider")
        return runner, device, torch.float32
    if backend == "tensorrt-fp16":
        from export import trt_engine
        from serving.backends import TensorRTBackend

        reason = trt_engine.unavailable_reason()
        if reason:
            pytest.skip(f"TensorRT: {reason}")
        engine = TensorRTBackend(
            tensorrt_plan(s, manifest, engine_dir), input_name="clips", output_name="logits", max_views=30
        )
        return (lambda: engine(x)), device, torch.float16
    if backend in ("openvino-cpu-fp32", "openvino-cpu-bf16", "openvino-cpu-int8"):
        precision = backend.rsplit("-", 1)[1]
        reason = openvino_unavailable(precision) or (nncf_unavailable() if precision == "int8" else None)
        if reason:
            pytest.skip(f"OpenVINO {precision}: {reason}")
        ir = openvino_ir(s.student_dir / ONNX_FILE, int8=precision == "int8")
        runner, _ = openvino_runner(ir, x, precision=precision)
        return runner, torch.device("cpu"), ARITHMETIC[precision]
    raise ValueError(f"unknown backend {backend}")


def speedup_contenders(backend: str, runner, s, x, compute_device: torch.device) -> dict:
    """The backend, and ONNX Runtime fp32 on the CPU beside it where the backend computes on the
    CPU (a GPU runtime's speedup over a CPU one says nothing about the engine)."""
    contenders = {backend: runner}
    if compute_device.type == "cpu" and backend != SPEEDUP_REFERENCE and (s.student_dir / ONNX_FILE).is_file():
        contenders[SPEEDUP_REFERENCE], _ = onnxruntime_runner(s.student_dir / ONNX_FILE, x, gpu=False)
    return contenders


def test_backend_latency(benchmark, case, subject, profile, device, manifest, matmul_peak, engine_dir, openvino_ir):
    size, backend, views = case
    s = subject(size)
    x = s.input(views)
    runner, compute_device, dtype = make_runner(backend, s, x, device, manifest, engine_dir, openvino_ir)
    rounds = interleaved_rounds(
        benchmark, speedup_contenders(backend, runner, s, x, compute_device), profile=profile, device=device
    )
    samples, reference = rounds[backend], rounds.get(SPEEDUP_REFERENCE)
    stats = latency_stats(samples)
    seconds = stats["median_ms"] / 1e3
    flops = s.cost["student_flops_per_view"] * views
    achieved = flops / seconds / 1e12
    peak = matmul_peak(dtype, compute_device)
    store(
        benchmark,
        "backends",
        {
            "size": size,
            "backend": backend,
            "precision": "int8" if backend.endswith("int8") else PRECISIONS[dtype],
            "views": views,
            "config": s.config(),
            **stats,
            "views_per_s": views / seconds,
            "flops": flops,
            "achieved_tflops": achieved,
            "matmul_tflops": peak,
            "matmul_dtype": str(dtype).removeprefix("torch."),
            "compute_device": compute_device.type,
            "mfu": achieved / peak,
            "mfu_target": MFU_TARGET,
            # ONNX Runtime fp32's time over this backend's, per round (the reference itself: 1.0)
            "speedup": None if reference is None else ratio_stats(reference, samples),
            "speedup_reference": f"{SPEEDUP_REFERENCE} fp32",
            "reference_median_ms": None if reference is None else latency_stats(reference)["median_ms"],
        },
    )
