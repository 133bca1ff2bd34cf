"""The models the inference benchmarks measure, and the runtimes that run them.

A `Subject` pairs the exported student with a plain R3D-18 of the same architecture, each
exported by the export stage's own `export_student` (ONNX + ExportedProgram), so "no added
cost" compares like with like. Two sizes:
- "run": the exported run under test (RUN/export, trained weights); the plain twin is built
  from the manifest's architecture record, given the student's weights and exported beside it.
- "full": R3D-18 at the paper's size. The student is `TwoStreamNet(...).student` at its
  initial weights (no full-size run is trained on a CPU); the cost of a dense network does not
  depend on its weight values.

Runners take the host-side input and return host-side logits, as a server does, so
host/device copies are part of a GPU figure (except the "resident" variant). OpenVINO runs the
IR the export stage's code converts from a subject's ONNX file (the `openvino_ir` fixture).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from benchmarks.profiles import FULL_ARCHITECTURE, FULL_CLIP_SHAPE
from export.build import build_r3d18, export_student, load_run
from export.flops import onnx_flops, torch_flops
from training.models import count_parameters, r3d18_from_architecture

ONNX_FILE, PROGRAM_FILE = "model.onnx", "student.pt2"  # the names export_student writes


@dataclass
class Subject:
    size: str  # "run" or "full"
    description: str
    architecture: dict
    clip_shape: tuple[int, ...]  # one view: (3, T, H, W)
    weights: str  # where the student's weights come from
    student: nn.Module  # eval mode, CPU
    plain: nn.Module
    student_dir: Path  # model.onnx + student.pt2 of the student
    plain_dir: Path  # the same for the plain R3D-18
    cost: dict = field(default_factory=dict)
    onnx_missing: str | None = None  # why a model.onnx could not be written here, if so

    def config(self) -> dict:
        """What a figure of this subject was measured on (goes into every record)."""
        return {
            "size": self.size,
            "description": self.description,
            "architecture": self.architecture,
            "clip_shape": list(self.clip_shape),
            "weights": self.weights,
            "flops_per_view": self.cost.get("student_flops_per_view"),
        }

    def input(self, views: int) -> np.ndarray:
        """A fixed normalized-scale input (seeded N(0, 1)) of `views` views, float32."""
        gen = np.random.default_rng(views)
        return gen.standard_normal((views, *self.clip_shape), dtype=np.float32)


def count_cost(
    student: nn.Module, plain: nn.Module, student_dir: Path, plain_dir: Path, clip_shape: tuple[int, ...]
) -> dict:
    """Parameters and FLOPs per view of both models, counted on the modules (torch's counter)
    and on their ONNX graphs (export.flops, where both exist), so each count checks the other."""
    view = (1, *clip_shape)
    cost = {
        "student_params": count_parameters(student),
        "plain_params": count_parameters(plain),
        "student_flops_per_view": torch_flops(student, view),
        "plain_flops_per_view": torch_flops(plain, view),
        "student_onnx_flops_per_view": None,
        "plain_onnx_flops_per_view": None,
    }
    if (student_dir / ONNX_FILE).is_file() and (plain_dir / ONNX_FILE).is_file():
        cost["student_onnx_flops_per_view"] = onnx_flops(onnx.load(str(student_dir / ONNX_FILE)), views=1)
        cost["plain_onnx_flops_per_view"] = onnx_flops(onnx.load(str(plain_dir / ONNX_FILE)), views=1)
    return cost


def export_into(module: nn.Module, clip_shape: tuple[int, ...], out_dir: Path) -> str | None:
    """`export_student` into `out_dir`. Where the ONNX exporter cannot run (an environment
    without onnxscript, as some GPU images), student.pt2 is still written (it comes first) and
    the reason is returned; None when both files were written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        export_student(module, clip_shape, out_dir)
    except ImportError as exc:
        if not (out_dir / PROGRAM_FILE).is_file():
            raise
        return f"the ONNX exporter cannot run here ({exc})"
    return None


def plain_twin(
    architecture: dict, clip_shape: tuple[int, ...], out_dir: Path, student: nn.Module
) -> tuple[nn.Module, str | None]:
    """A freshly built plain R3D-18 of `architecture` holding the student's weights, exported
    into `out_dir` like the student. The strict load checks that the two have the same
    parameters and buffers by name and shape; with the same values too, a latency difference can
    come only from the exported graphs (not, say, from denormal activations of other weights)."""
    plain = build_r3d18(architecture).eval()
    plain.load_state_dict(student.state_dict(), strict=True)
    return plain, export_into(plain, clip_shape, out_dir)


def run_subject(run: Path, work: Path) -> Subject:
    """The exported student of `run` (RUN/export) and its plain twin."""
    export_dir = run / "export"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    loaded = load_run(run)
    spec = loaded.cfg.input
    clip_shape = (3, spec.clip_len, spec.test_crop, spec.test_crop)
    plain, missing = plain_twin(manifest["architecture"], clip_shape, work / "plain-run", loaded.student)
    subject = Subject(
        size="run",
        description=f"exported run {manifest['model_version']}",
        architecture=manifest["architecture"],
        clip_shape=clip_shape,
        weights=f"trained ({run})",
        student=loaded.student,
        plain=plain,
        student_dir=export_dir,
        plain_dir=work / "plain-run",
        onnx_missing=missing,
    )
    subject.cost = count_cost(subject.student, plain, export_dir, subject.plain_dir, clip_shape)
    return subject


def full_subject(work: Path) -> Subject:
    """The method's student at the paper's size, exported by the export stage, and its twin."""
    arch = FULL_ARCHITECTURE
    torch.manual_seed(0)
    # the weights TwoStreamNet(...).student starts from under this seed: the student is built
    # first (tests/test_models.py checks it)
    student = r3d18_from_architecture(arch).eval()
    student_dir = work / "student-full"
    missing = export_into(student, FULL_CLIP_SHAPE, student_dir)
    plain, _ = plain_twin(arch, FULL_CLIP_SHAPE, work / "plain-full", student)
    subject = Subject(
        size="full",
        description="R3D-18 at the paper's size (UCF-101 head)",
        architecture=arch,
        clip_shape=FULL_CLIP_SHAPE,
        weights="initial (TwoStreamNet.student, seed 0)",
        student=student,
        plain=plain,
        student_dir=student_dir,
        plain_dir=work / "plain-full",
        onnx_missing=missing,
    )
    subject.cost = count_cost(student, plain, student_dir, subject.plain_dir, FULL_CLIP_SHAPE)
    return subject


# ----------------------------------------------------------------------------- runtimes
Runner = Callable[[], object]


def torch_runner(
    module: nn.Module,
    x: np.ndarray,
    device: torch.device,
    *,
    channels_last: bool = False,
    dtype: torch.dtype | None = None,
    resident: bool = False,
) -> Runner:
    """Eager PyTorch: host input -> device (channels_last_3d if asked) -> logits on the host.
    `dtype` runs the forward under autocast (bf16/fp16 on CUDA); `resident` keeps the input on
    the device beforehand and the logits there (the forward's compute alone)."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    # Module.to takes memory_format at run time; torch's stubs do not list it
    model = copy.deepcopy(module).eval().to(device=device, memory_format=fmt)  # type: ignore[call-overload]
    host = torch.from_numpy(x)
    placed = host.to(device).contiguous(memory_format=fmt) if resident else None

    @torch.inference_mode()
    def run():
        inp = placed if resident else host.to(device).contiguous(memory_format=fmt)
        with torch.autocast(device_type=device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            out = model(inp)
        return out if resident else out.float().cpu()

    return run


def program_runner(path: Path, x: np.ndarray, device: torch.device) -> Runner:
    """A saved ExportedProgram (what serving's PyTorch fallback loads)."""
    module = torch.export.load(str(path)).module().to(device)
    host = torch.from_numpy(x)

    @torch.inference_mode()
    def run():
        return module(host.to(device)).float().cpu()

    return run


def openvino_unavailable(precision: str) -> str | None:
    """None when OpenVINO runs `precision` natively here, else why not (one line)."""
    from export.openvino_ir import unavailable_reason
    from serving.backends import openvino_cpu_precisions

    reason = unavailable_reason()
    if reason is None and precision not in openvino_cpu_precisions():
        reason = f"this CPU does not run {precision} natively (OpenVINO's OPTIMIZATION_CAPABILITIES)"
    return reason


def openvino_runner(ir: tuple[Path, Path], x: np.ndarray, *, precision: str, threads: int = 0) -> tuple[Runner, str]:
    """An OpenVINO IR (model.xml, model.bin) compiled by the serving backend at `precision`
    ("fp32", "bf16") -> (runner, "openvino-cpu-<precision>")."""
    from serving.backends import OpenVinoBackend

    backend = OpenVinoBackend(*ir, precision=precision, threads=threads, max_views=len(x))
    return (lambda: backend(x)), backend.name


def onnxruntime_runner(path: Path, x: np.ndarray, *, gpu: bool, threads: int = 0) -> tuple[Runner, str]:
    """An ONNX Runtime session on `path` with the serving backend's options (intra-op threads =
    one per core by default, one inter-op thread), on the CUDA provider when `gpu` and this
    build has it, else the CPU provider -> (runner, "onnxruntime-cuda" | "onnxruntime-cpu")."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers: list[str | tuple[str, dict]] = ["CPUExecutionProvider"]
    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        from serving.backends import cuda_provider_options

        # as the server runs it: fp32 with TF32 off
        providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(0)))
    session = ort.InferenceSession(str(path), options, providers=providers)
    used = "onnxruntime-cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "onnxruntime-cpu"
    name = session.get_inputs()[0].name
    return (lambda: session.run(None, {name: x})[0]), used
