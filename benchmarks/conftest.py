"""Fixtures and hooks of the latency suites (`python -m benchmarks.run` runs them).

Options: --bench-run RUN (a trained and exported run; default runs/synthetic),
--bench-profile standard|smoke (benchmarks/profiles.py), --bench-device auto|cpu|cuda.
Each benchmark stores its figures with `measure.store` in `benchmark.extra_info`; the hooks
below add the machine, library versions, profile, matmul peaks and skipped cases to
pytest-benchmark's JSON, which `benchmarks.run` turns into the results files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.machine import describe_machine, library_versions
from benchmarks.measure import matmul_flops_per_s
from benchmarks.profiles import PROFILES, UCF_FRAMES, UCF_HEIGHT, UCF_WIDTH, Profile, profile_from_options
from benchmarks.subjects import Subject, full_subject, run_subject

# views the latency subjects' int8 IRs are calibrated on (the export uses 300 of the run's own
# training clips; at full size 300 views would hold 1.4 GB in memory for no change in speed)
INT8_LATENCY_CALIBRATION_VIEWS = 30
SKIPS = pytest.StashKey[list]()
FAILS = pytest.StashKey[list]()
PEAKS = pytest.StashKey[dict]()


def pytest_addoption(parser):
    group = parser.getgroup("tg-action benchmarks")
    group.addoption("--bench-run", default="runs/synthetic", help="trained and exported run folder (RUN/export)")
    group.addoption("--bench-profile", default="standard", choices=PROFILES, help="how much to measure")
    group.addoption("--bench-device", default="auto", choices=("auto", "cpu", "cuda"), help="where models run")


def pytest_configure(config):
    config.stash[SKIPS] = []
    config.stash[FAILS] = []
    config.stash[PEAKS] = {}


def pytest_report_teststatus(report, config):
    """Skipped cases (a backend that does not exist here) and failed ones go into the results
    with the reason."""
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        config.stash[SKIPS].append({"test": report.nodeid, "reason": reason.removeprefix("Skipped: ")})
    elif report.failed:
        lines = [line for line in report.longreprtext.splitlines() if line.startswith("E ")]
        config.stash[FAILS].append(
            {
                "test": report.nodeid,
                "phase": report.when,
                "error": " ".join(line[1:].strip() for line in lines[:3])[:500],
            }
        )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A group file that cannot even be imported here (a missing library) is a failure too."""
    report = yield
    if report.failed:
        lines = [line for line in report.longreprtext.splitlines() if line.strip()]
        collector.config.stash[FAILS].append(
            {"test": report.nodeid, "phase": "collect", "error": (lines[-1] if lines else "collection failed")[:500]}
        )
    return report


def pytest_benchmark_update_json(config, benchmarks, output_json):
    profile = profile_from_options(config)
    output_json["tg_action"] = {
        "profile": dataclasses.asdict(profile),
        "device": profile.device,
        "run": config.getoption("--bench-run"),
        "machine": describe_machine(),
        "versions": library_versions(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark if profile.device == "cuda" else None,
        "matmul": list(config.stash[PEAKS].values()),
        "skipped": config.stash[SKIPS],
        "failed": config.stash[FAILS],
    }


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def profile(pytestconfig) -> Profile:
    return profile_from_options(pytestconfig)


@pytest.fixture(scope="session")
def device(profile) -> torch.device:
    if profile.device == "cuda":
        if not torch.cuda.is_available():
            pytest.fail("--bench-device cuda: torch sees no CUDA GPU", pytrace=False)
        torch.backends.cudnn.benchmark = True  # fixed shapes per case: let cuDNN pick its fastest kernels
    return torch.device(profile.device)


@pytest.fixture(scope="session")
def bench_run(pytestconfig) -> Path:
    """The run under test; it must be trained and exported (benchmarks.run sees to that)."""
    run = Path(pytestconfig.getoption("--bench-run"))
    manifest = run / "export" / "manifest.json"
    if not manifest.is_file():
        pytest.fail(
            f"{manifest} is missing: train and export the run first (make train && make export, "
            f"or python -m benchmarks.run, which does both)",
            pytrace=False,
        )
    return run


@pytest.fixture(scope="session")
def manifest(bench_run) -> dict:
    return json.loads((bench_run / "export" / "manifest.json").read_text())


@pytest.fixture(scope="session")
def subject_run(bench_run, tmp_path_factory) -> Subject:
    return run_subject(bench_run, tmp_path_factory.mktemp("subject-run"))


@pytest.fixture(scope="session")
def subject_full(tmp_path_factory) -> Subject:
    return full_subject(tmp_path_factory.mktemp("subject-full"))


@pytest.fixture
def subject(request):
    """`subject(size)` -> the Subject of that size, built once per session when first asked."""
    return lambda size: request.getfixturevalue(f"subject_{size}")


@pytest.fixture(scope="session")
def matmul_peak(pytestconfig, profile, device):
    """`matmul_peak(dtype, on=device)` -> TFLOP/s of a large square matmul, measured once per
    (device, dtype) in this session and recorded in the results."""
    peaks = pytestconfig.stash[PEAKS]

    def peak(dtype: torch.dtype, on: torch.device = device) -> float:
        key = f"{on.type}-{dtype}"
        if key not in peaks:
            if on.type == "cuda":
                # fp32 convolutions run on TF32 tensor cores by default (cudnn.allow_tf32), so the
                # fp32 reference matmul may use them too
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
            n = profile.matmul_n if on.type == profile.device else min(profile.matmul_n, 4096)
            peaks[key] = matmul_flops_per_s(on, dtype, n=n, rounds=10 if on.type == "cuda" else 5)
            if on.type == "cuda" and dtype == torch.float32:
                peaks[key]["tf32"] = torch.backends.cuda.matmul.allow_tf32
        return peaks[key]["tflops"]

    return peak


@pytest.fixture(scope="session")
def openvino_ir(tmp_path_factory):
    """`openvino_ir(onnx_path, int8=False)` -> (graph, weights) converted from that ONNX file by
    the export stage's code, once per file in this session (never into the run's own export);
    with `int8`, that IR quantized by the export's NNCF step, calibrated on seeded N(0, 1) views
    of the ONNX file's input shape (a latency subject: the cost of the int8 graph does not
    depend on the activation ranges it was calibrated on)."""
    converted: dict[tuple[Path, bool], tuple[Path, Path]] = {}

    def convert(onnx_path: Path, int8: bool = False) -> tuple[Path, Path]:
        import onnx

        from export.openvino_ir import INT8_GRAPH_FILE, INT8_WEIGHTS_FILE, convert_to_ir, quantize_int8

        if (onnx_path, False) not in converted:
            converted[onnx_path, False] = convert_to_ir(onnx_path, tmp_path_factory.mktemp("openvino"))
        if int8 and (onnx_path, True) not in converted:
            folder = converted[onnx_path, False][0].parent
            shape = [d.dim_value for d in onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim][1:]
            views = np.random.default_rng(0).standard_normal((INT8_LATENCY_CALIBRATION_VIEWS, *shape), dtype=np.float32)
            quantize_int8(folder, {"files": [], "precisions": {"int8": {"status": "calibrating"}}}, views)
            converted[onnx_path, True] = folder / INT8_GRAPH_FILE, folder / INT8_WEIGHTS_FILE
        return converted[onnx_path, int8]

    return convert


@pytest.fixture(scope="session")
def ucf_size_videos(tmp_path_factory):
    """`ucf_size_videos()` -> 4 synthetic mp4 videos at UCF-101's frame size and length, written
    on first use (real files: the data pipeline and the decode benchmarks decode them)."""
    from training.synthetic import MOTIONS, render_video, video_rng, write_mp4

    paths: list[Path] = []

    def make() -> list[Path]:
        if not paths:
            folder = tmp_path_factory.mktemp("ucf-size")
            for i, motion in enumerate(MOTIONS[:4]):
                video = render_video(
                    motion, video_rng(0, "train", motion, i), frames=UCF_FRAMES, width=UCF_WIDTH, height=UCF_HEIGHT
                )
                write_mp4(folder / f"{motion}.mp4", video)
                paths.append(folder / f"{motion}.mp4")
        return paths

    return make
