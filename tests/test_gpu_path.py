"""The GPU path's logic that runs without a GPU: TensorRT precision selection on the TensorRT 10
and 11 API surfaces, the fp16 graph a strongly typed engine is built from, build failures as
one-line errors, CUDA detection from the driver (not torch), the parity bounds of each
precision, the server's view of unchecked parity, and `make gpu-check` on a CPU-only machine.
Where `tensorrt` imports and a GPU is visible, real engines are built in every precision."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from benchmarks import gpu_check
from export import trt_engine
from export.build import ExportError, export_student, tensorrt_engine
from export.parity import (
    CUDA_FP32_BOUND,
    TENSORRT_FP16_BOUND,
    TENSORRT_FP32_BOUND,
    TENSORRT_TF32_BOUND,
    Comparison,
    ParityError,
    check_parity,
    tensorrt_bound,
)
from serving.backends import (
    BackendError,
    cuda_provider_options,
    load_backend,
    onnxruntime_cuda_unavailable,
    parity_unchecked,
    tensorrt_unavailable,
)
from serving.devices import cuda_device_count, cuda_device_name, cuda_unavailable
from serving.probes import worker_summary
from training.models import R3D18

CLIP = (3, 4, 32, 32)


def tensorrt_api(*, weak_fp16: bool, strongly_typed: bool = True, tf32: bool = True, version: str = "10.13.0"):
    """The attributes `build_plan` reads from a `tensorrt` module: its BuilderFlag and
    NetworkDefinitionCreationFlag members (TensorRT 10 has FP16 and TF32; 11 lost FP16)."""
    flags = {"FP16": 0} if weak_fp16 else {}
    flags.update({"TF32": 2} if tf32 else {})
    network = {"STRONGLY_TYPED": 1} if strongly_typed else {}
    return SimpleNamespace(
        __version__=version,
        BuilderFlag=SimpleNamespace(**flags),
        NetworkDefinitionCreationFlag=SimpleNamespace(**network),
    )


TENSORRT_10 = tensorrt_api(weak_fp16=True)
TENSORRT_11 = tensorrt_api(weak_fp16=False, version="11.4.0")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny R3D-18 exported as `make export` does (model.onnx + student.pt2)."""
    out = tmp_path_factory.mktemp("tiny-onnx")
    torch.manual_seed(0)
    export_student(R3D18(5, width=4).eval(), CLIP, out)
    return out / "model.onnx"


# ----------------------------------------------------------------------------- precision selection
def test_tensorrt_10_builds_fp16_with_its_weak_typing_flag():
    plan = trt_engine.build_plan(TENSORRT_10, "fp16")
    assert (plan.precision, plan.typing, plan.set_flags, plan.fp16_graph, plan.network_flags) == (
        "fp16",
        "weak",
        ("FP16",),
        False,
        0,
    )


def test_tensorrt_11_builds_fp16_from_an_fp16_graph_in_a_strongly_typed_network():
    plan = trt_engine.build_plan(TENSORRT_11, "fp16")
    assert (plan.precision, plan.typing, plan.set_flags, plan.fp16_graph) == ("fp16", "strong", (), True)
    assert plan.network_flags == 1 << 1  # the STRONGLY_TYPED bit (accepted, and implied, on 11)


@pytest.mark.parametrize("api", [TENSORRT_10, TENSORRT_11], ids=["tensorrt10", "tensorrt11"])
def test_fp32_clears_tf32_and_tf32_sets_it_on_both_versions(api):
    fp32, tf32 = trt_engine.build_plan(api, "fp32"), trt_engine.build_plan(api, "tf32")
    assert (fp32.precision, fp32.clear_flags, fp32.set_flags, fp32.fp16_graph) == ("fp32", ("TF32",), (), False)
    assert (tf32.precision, tf32.set_flags, tf32.clear_flags) == ("tf32", ("TF32",), ())


def test_a_precision_the_api_cannot_honour_is_refused_by_name():
    with pytest.raises(trt_engine.EngineBuildError, match="neither BuilderFlag.FP16 nor strongly typed"):
        trt_engine.build_plan(tensorrt_api(weak_fp16=False, strongly_typed=False), "fp16")
    with pytest.raises(trt_engine.EngineBuildError, match="no BuilderFlag.TF32"):
        trt_engine.build_plan(tensorrt_api(weak_fp16=False, tf32=False), "fp32")
    with pytest.raises(ValueError, match="precision must be one of fp16, tf32, fp32"):
        trt_engine.build_plan(TENSORRT_11, "int8")


def test_the_fp16_graph_keeps_fp32_input_and_output(tiny_onnx):
    model = trt_engine.fp16_graph(onnx.load(str(tiny_onnx)))
    onnx.checker.check_model(model)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [f32, f32]
    weights = [t for t in model.graph.initializer if len(t.dims) == 5]  # the conv3d kernels
    assert weights and all(t.data_type == f16 for t in weights)


def test_the_fp16_graph_computes_what_the_fp32_one_does(tiny_onnx, tmp_path):
    """Where ONNX Runtime's CPU provider has fp16 kernels for the graph, run it."""
    import onnxruntime as ort

    path = tmp_path / "fp16.onnx"
    onnx.save(trt_engine.fp16_graph(onnx.load(str(tiny_onnx))), str(path))
    try:
        half = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # NOT_IMPLEMENTED: no fp16 Conv on this CPU build
        pytest.skip(f"ONNX Runtime's CPU provider cannot run the fp16 graph here: {str(exc)[:120]}")
    full = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, *CLIP)).astype(np.float32)
    out, ref = half.run(None, {"clips": x})[0], full.run(None, {"clips": x})[0]
    assert out.dtype == np.float32
    cmp = Comparison()
    cmp.add(ref.astype(np.float64), out)
    check_parity("fp16 graph", cmp.report(TENSORRT_FP16_BOUND))


# ----------------------------------------------------------------------------- build failures
@pytest.mark.skipif(trt_engine.unavailable_reason() is None, reason="TensorRT builds here")
def test_build_engine_without_tensorrt_is_one_clear_error(tiny_onnx, tmp_path):
    with pytest.raises(trt_engine.EngineBuildError, match="tensorrt does not import"):
        trt_engine.build_engine(tiny_onnx, tmp_path / "model.plan")


@pytest.mark.skipif(trt_engine.unavailable_reason() is None, reason="TensorRT builds here")
def test_a_failed_engine_is_left_out_under_auto_and_fails_the_export_when_asked_for(tiny_onnx, tmp_path, caplog):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    record, runner = tensorrt_engine(out, precision="fp16", max_views=30, required=False)
    assert runner is None and record["file"] is None
    assert record["reason"].startswith("the fp16 engine could not be built here: tensorrt does not import")
    assert "TensorRT engine left out" in caplog.text and not (out / "model.plan").exists()
    with pytest.raises(ExportError, match="--tensorrt on: the tf32 engine could not be built here"):
        tensorrt_engine(out, precision="tf32", max_views=30, required=True)


# ----------------------------------------------------------------------------- bounds
def test_each_tensorrt_precision_has_its_bound():
    assert tensorrt_bound("fp32") == TENSORRT_FP32_BOUND == CUDA_FP32_BOUND
    assert tensorrt_bound("fp16") == TENSORRT_FP16_BOUND and tensorrt_bound("tf32") == TENSORRT_TF32_BOUND
    assert TENSORRT_FP32_BOUND.abs_tol < TENSORRT_TF32_BOUND.abs_tol <= TENSORRT_FP16_BOUND.abs_tol
    with pytest.raises(ValueError, match="no parity bound for a TensorRT 'int8' engine"):
        tensorrt_bound("int8")


def test_a_tf32_sized_error_passes_the_tf32_bound_and_breaks_the_fp32_one():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((30, 101)) * 5
    out = (ref * (1 + 2e-3 * rng.standard_normal(ref.shape))).astype(np.float32)  # ~TF32's relative error
    cmp = Comparison()
    cmp.add(ref, out)
    check_parity("tensorrt-tf32", cmp.report(tensorrt_bound("tf32")))
    with pytest.raises(ParityError, match="tensorrt-fp32: max |logit difference|"):
        check_parity("tensorrt-fp32", cmp.report(tensorrt_bound("fp32")))


# ----------------------------------------------------------------------------- device detection
def test_cuda_comes_from_the_driver_not_from_torch():
    reason = cuda_unavailable()
    assert (reason is None) == (cuda_device_count() > 0)
    if reason is not None:
        assert cuda_device_name() is None and ("driver" in reason or "device" in reason)


def test_onnxruntime_asks_for_cuda_only_with_the_provider_and_a_gpu():
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_cuda_unavailable(gpu_build, None) is None
    assert (
        onnxruntime_cuda_unavailable(gpu_build, "no CUDA driver (libcuda.so.1 not found)")
        == "no CUDA driver (libcuda.so.1 not found)"
    )
    assert "no CUDA provider" in onnxruntime_cuda_unavailable(["CPUExecutionProvider"], None)
    assert cuda_provider_options(1) == {"device_id": 1, "use_tf32": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}
    assert cuda_provider_options(0, tf32=True)["use_tf32"] == 1


@pytest.mark.skipif(cuda_device_count() > 0, reason="a GPU is visible here")
def test_without_a_gpu_the_onnxruntime_backend_says_it_runs_on_the_cpu(tiny_onnx):
    from serving.backends import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(tiny_onnx, input_name="clips", output_name="logits")
    assert (backend.name, backend.device) == ("onnxruntime-cpu", "cpu") and backend.cuda_reason


# ----------------------------------------------------------------------------- parity as the server sees it
def test_the_server_names_cuda_backends_the_export_never_compared():
    cpu_export = {
        "parity": {
            "machine": {"gpu": None, "cuda_backends": []},
            "onnxruntime": {"views": 6},
            "exported_program": {"views": 6},
        }
    }
    assert parity_unchecked(cpu_export, "onnxruntime-cpu") is None and parity_unchecked(cpu_export, "torch-cpu") is None
    for name in ("onnxruntime-cuda", "torch-cuda"):
        assert parity_unchecked(cpu_export, name) == (
            f"{name}: the export's parity gate ran on a machine without a "
            "GPU; this backend's results were never compared with PyTorch"
        )
    gpu_export = {
        "parity": {**cpu_export["parity"], "machine": {"gpu": "NVIDIA H200"}, "onnxruntime-cuda": {"views": 6}}
    }
    assert parity_unchecked(gpu_export, "onnxruntime-cuda") is None
    assert "ran on NVIDIA H200, where torch-cuda did not run" in parity_unchecked(gpu_export, "torch-cuda")


def test_an_engine_without_a_parity_report_is_refused(tmp_path):
    manifest = {"tensorrt": {"file": "model.plan", "precision": "fp16", "max_views": 30}, "parity": {"tensorrt": None}}
    assert "no parity report for its TensorRT engine" in tensorrt_unavailable(manifest)
    with pytest.raises(BackendError, match="never compared with PyTorch"):
        load_backend("tensorrt", tmp_path, manifest)


def test_health_names_each_live_workers_backend_and_device(tmp_path):
    status = {"backend": "onnxruntime-cuda", "device": "cuda:0 (NVIDIA H200)", "parity_checked": False}
    (tmp_path / "worker-1.json").write_text(json.dumps({**status, "pid": os.getpid()}))
    (tmp_path / "worker-2.json").write_text(json.dumps({**status, "backend": "torch-cpu", "pid": 2**22 + 7}))  # gone
    assert worker_summary(tmp_path) == (
        "1 worker: onnxruntime-cuda on cuda:0 (NVIDIA H200) (parity not checked at export)"
    )
    assert worker_summary(tmp_path / "none") == ""


# ----------------------------------------------------------------------------- make gpu-check
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: make gpu-check runs for real")
def test_gpu_check_without_a_gpu_says_what_it_skipped_and_writes_nothing(tmp_path, capsys):
    assert gpu_check.main(["--results-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert '"environment"' in printed and "[skipped] training step bf16 vs fp32 (full size)" in printed
    assert "no results file written" in printed and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- real engines
@pytest.mark.gpu
@pytest.mark.parametrize("precision", trt_engine.PRECISIONS)
def test_real_engines_build_in_each_precision_and_match_onnxruntime(tiny_onnx, tmp_path, precision):
    reason = trt_engine.unavailable_reason()
    if reason:
        pytest.skip(f"TensorRT engines not built: {reason}")
    import onnxruntime as ort
    import tensorrt as trt

    record = trt_engine.build_engine(tiny_onnx, tmp_path / "model.plan", precision=precision, opt_views=4, max_views=8)
    expected = trt_engine.build_plan(trt, precision)
    assert (record["precision"], record["typing"], record["tf32"]) == (precision, expected.typing, precision == "tf32")
    runner = trt_engine.engine_runner(tmp_path / "model.plan", max_views=8, precision=precision)
    x = np.random.default_rng(0).standard_normal((11, *CLIP)).astype(np.float32)
    ref = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"clips": x})[0]
    cmp = Comparison()
    cmp.add(ref.astype(np.float64), runner(x))
    check_parity(f"tensorrt-{precision}", cmp.report(tensorrt_bound(precision)))
