"""Group 1, no added cost: the exported student against a plain R3D-18 of the same config.

Both are exported by the export stage's own code and run on the same backend (ONNX Runtime, the
ExportedProgram, OpenVINO at fp32 and bf16: each model's own IR, converted alike; OpenVINO int8:
each model's IR quantized alike by the export's NNCF step) with the same
input, interleaved round by round in this process. Target: latency ratio 1.00 +- 0.03, and
equal parameter counts and FLOPs (counted on the modules and on the ONNX graphs).
"""

from __future__ import annotations

import pytest

from benchmarks.measure import interleaved_rounds, latency_stats, ratio_stats, store
from benchmarks.profiles import profile_from_options
from benchmarks.subjects import (
    ONNX_FILE,
    PROGRAM_FILE,
    onnxruntime_runner,
    openvino_runner,
    openvino_unavailable,
    program_runner,
)
from export.openvino_ir import nncf_unavailable

pytestmark = pytest.mark.benchmark(group="no_added_cost")
TARGET = (0.97, 1.03)


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        profile = profile_from_options(metafunc.config)
        cases = [
            (size, backend, views)
            for size in profile.sizes
            for backend in profile.cost_backends.get(size, ())
            for views in profile.cost_views
        ]
        metafunc.parametrize("case", cases, ids=[f"{s}-{b}-{v}view" for s, b, v in cases])


def equal_cost(cost: dict) -> tuple[bool, bool]:
    """(parameters equal, FLOPs equal) between the student and the plain R3D-18; FLOPs counted
    on the modules and on the ONNX graphs (where they could be written)."""
    params = cost["student_params"] == cost["plain_params"]
    flops = cost["student_flops_per_view"] == cost["plain_flops_per_view"]
    if cost["student_onnx_flops_per_view"] is not None:
        flops = (
            flops
            and cost["student_flops_per_view"]
            == cost["student_onnx_flops_per_view"]
            == cost["plain_onnx_flops_per_view"]
        )
    return params, flops


def test_no_added_cost(benchmark, case, subject, profile, device, openvino_ir):
    size, backend, views = case
    s = subject(size)
    x = s.input(views)
    if backend.startswith(("onnxruntime", "openvino")) and s.onnx_missing:
        pytest.skip(s.onnx_missing)
    if backend == "onnxruntime":
        run_student, runtime = onnxruntime_runner(s.student_dir / ONNX_FILE, x, gpu=device.type == "cuda")
        run_plain, _ = onnxruntime_runner(s.plain_dir / ONNX_FILE, x, gpu=device.type == "cuda")
    elif backend in ("openvino-fp32", "openvino-bf16", "openvino-int8"):
        precision = backend.split("-")[1]
        reason = openvino_unavailable(precision) or (precision == "int8" and nncf_unavailable())
        if reason:
            pytest.skip(f"OpenVINO {precision}: {reason}")
        int8 = precision == "int8"
        run_student, runtime = openvino_runner(
            openvino_ir(s.student_dir / ONNX_FILE, int8=int8), x, precision=precision
        )
        run_plain, _ = openvino_runner(openvino_ir(s.plain_dir / ONNX_FILE, int8=int8), x, precision=precision)
    else:
        run_student = program_runner(s.student_dir / PROGRAM_FILE, x, device)
        run_plain = program_runner(s.plain_dir / PROGRAM_FILE, x, device)
        runtime = f"torch-export-{device.type}"

    samples = interleaved_rounds(
        benchmark,
        {"student": run_student, "plain": run_plain},
        profile=profile,
        device=device,
        min_rounds=profile.ratio_min_rounds,
    )
    ratio = ratio_stats(samples["student"], samples["plain"])
    params_equal, flops_equal = equal_cost(s.cost)
    store(
        benchmark,
        "no_added_cost",
        {
            "size": size,
            "backend": runtime,
            "views": views,
            "config": s.config(),
            "params": {"student": s.cost["student_params"], "plain": s.cost["plain_params"], "equal": params_equal},
            "flops_per_view": {
                "student": s.cost["student_flops_per_view"],
                "plain": s.cost["plain_flops_per_view"],
                "student_onnx": s.cost["student_onnx_flops_per_view"],
                "plain_onnx": s.cost["plain_onnx_flops_per_view"],
                "equal": flops_equal,
            },
            "student": latency_stats(samples["student"]),
            "plain": latency_stats(samples["plain"]),
            "ratio": ratio,
            "target": list(TARGET),
            "within_target": TARGET[0] <= ratio["median"] <= TARGET[1],
        },
    )
    assert params_equal, f"parameter counts differ: {s.cost}"
    assert flops_equal, f"FLOPs per view differ: {s.cost}"
