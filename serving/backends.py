"""Runtime backends for the exported student: ONNX Runtime, TensorRT, PyTorch (torch.export),
OpenVINO.

Each backend is a callable: normalized views (N, 3, T, H, W) float32 -> logits (N, C) float32,
for N up to its `max_views` (the caller splits larger inputs into chunks). `select_backend`
with "auto" loads every backend this machine can run from what the export manifest lists
(TensorRT: engine present + `tensorrt` importable + a GPU + CUDA torch for its buffers; ONNX
Runtime: CUDA provider where the onnxruntime build has it and the driver reports a GPU, CPU
otherwise; PyTorch ExportedProgram, channels-last, on CUDA where torch has it; OpenVINO on the
CPU at the fastest precision that passed the export's parity gate), times each on a request's
worth of views, keeps the fastest and releases the others.

Whether a GPU is there is asked of the CUDA driver (`serving.devices`), not of torch: the
serving image runs the model in ONNX Runtime or TensorRT and has a CPU-only torch. Every
backend's `name` says the runtime, the device and, where it is not fp32, the precision
(`onnxruntime-cuda`, `torch-cpu`, `tensorrt-cuda-fp16`, `openvino-cpu-bf16`); CUDA backends
run in true fp32 (TF32 off), the precision the export's parity gate held them to.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.devices import cuda_device_name, cuda_unavailable
from serving.manifest import sha256_of

log = logging.getLogger(__name__)

BACKEND_CHOICES = (
    "auto",
    "tensorrt",
    "onnxruntime",
    "torch",
    "openvino",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
)
DEFAULT_MAX_VIEWS = 30  # one 10x3 request per forward; bounds the activations of a chunk
# ties go to the earlier one; OpenVINO comes last, so it replaces the incumbents only when it is
# measurably faster (AUTO_MIN_GAIN). "openvino" stands for each precision the export offers and
# this CPU runs, timed on its own (`openvino_kinds`).
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch", "openvino")
# OpenVINO precisions, in the order of the manifest's "offered" list (fastest where measured: at
# full size on a 2-core AVX-512 CPU bf16 3.4x and fp32 1.7x ONNX Runtime fp32's speed; on an AMX
# CPU the NNCF int8 IR 1.6x bf16's), and the INFERENCE_PRECISION_HINT each is compiled with (int8:
# what stays unquantized runs in fp32). Each precision names its IR in the manifest (int8 its
# own quantized one). Which is fastest depends on the CPU (with the same CPU's AMX units switched
# off, bf16 ran slower than fp32), so the server times them rather than trusting this order.
OPENVINO_PRECISIONS = ("int8", "bf16", "fp32")
OPENVINO_HINTS = {"int8": "f32", "bf16": "bf16", "fp32": "f32"}
# "auto" keeps an earlier backend unless a later one is at least this much faster, so that
# timing noise between near-equal backends does not flip the choice from one start to the next
AUTO_MIN_GAIN = 0.10


class BackendError(Exception):
    """The requested backend cannot run this export here; the message says why."""


def verified_artifact(export_dir: Path, manifest: dict, name: str | None) -> Path:
    """Path of an artifact listed in the manifest, after checking its sha256: a server must not
    answer with a model other than the one its responses name."""
    if not name:
        raise BackendError("the manifest lists no such artifact")
    path = export_dir / name
    if not path.is_file():
        raise BackendError(f"{path} is missing")
    expected = manifest.get("sha256", {}).get(name)
    if expected is None:
        raise BackendError(f"the manifest has no sha256 for {name}")
    actual = sha256_of(path)
    if actual != expected:
        raise BackendError(f"{path} has sha256 {actual[:12]}..., the manifest says {expected[:12]}...")
    return path


def import_openvino():
    """`import openvino`, lazily (importing the serving package stays fast), with its usage
    telemetry off.

    openvino 2026 sends an event to Google Analytics on import and on every conversion unless the
    user opted out (~/intel/openvino_telemetry); an export or a server must not call out. OpenVINO
    falls back to a no-op stub where `openvino_telemetry` does not import, so that import is
    blocked for this process (a None entry in sys.modules makes `import` raise ImportError)."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def openvino_cpu_precisions() -> list[str]:
    """The OpenVINO precisions this CPU runs natively, fastest first. The CPU plugin lists "BF16"
    in OPTIMIZATION_CAPABILITIES only where the CPU has bf16 instructions (AVX512_BF16, AMX);
    elsewhere a bf16 hint would run in fp32. It lists "INT8" on every x86 CPU it runs on (fast
    with VNNI). Raises ImportError where openvino is missing."""
    capabilities = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return [p for p in OPENVINO_PRECISIONS if p.upper() in capabilities]


def onnxruntime_cuda_unavailable(available_providers: list[str], driver_reason: str | None) -> str | None:
    """None when ONNX Runtime should be asked for its CUDA provider, else why not.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU and then logs an
    error while falling back, so the driver must report a GPU as well (`driver_reason` None)."""
    if "CUDAExecutionProvider" not in available_providers:
        return "this onnxruntime build has no CUDA provider (the CPU package, not onnxruntime-gpu)"
    return driver_reason


def cuda_provider_options(gpu_id: int, *, tf32: bool = False) -> dict:
    """The CUDA provider's options: TF32 off unless asked for (ONNX Runtime turns it on by
    default, which would make "fp32" a label only); cuDNN's exhaustive algorithm search, whose
    cost is paid once per input shape (`InferenceCore.warm_up` pays it for the usual ones)."""
    return {"device_id": gpu_id, "use_tf32": int(tf32), "cudnn_conv_algo_search": "EXHAUSTIVE"}


def torch_tf32(enabled: bool) -> None:
    """TF32 for torch's fp32 convolutions and matmuls on CUDA, process-wide (a worker serves one
    model). cuDNN convolutions run in TF32 by default in torch; the server's "fp32" must be fp32."""
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9's precision API
        conv.fp32_precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if enabled else "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def device_label(gpu_id: int) -> str:
    """ "cuda:N (GPU name)" as the driver names it."""
    return f"cuda:{gpu_id} ({cuda_device_name(gpu_id) or 'unknown GPU'})"


class OnnxRuntimeBackend:
    """ONNX Runtime session on the CUDA provider where this onnxruntime build has it and the
    driver reports a GPU, else on the CPU; the backend's name comes from the provider the
    session actually uses. `tf32` only for measurements (`make gpu-check`): the server runs fp32."""

    def __init__(
        self,
        path: Path,
        *,
        input_name: str,
        output_name: str,
        threads: int = 0,
        max_views: int = DEFAULT_MAX_VIEWS,
        gpu_id: int = 0,
        tf32: bool = False,
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (one per core)
        options.inter_op_num_threads = 1
        providers: list = ["CPUExecutionProvider"]
        self.cuda_reason = onnxruntime_cuda_unavailable(ort.get_available_providers(), cuda_unavailable())
        if self.cuda_reason is None:
            providers.insert(0, ("CUDAExecutionProvider", cuda_provider_options(gpu_id, tf32=tf32)))
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        used = self.session.get_providers()[0]
        on_cuda = used == "CUDAExecutionProvider"
        if self.cuda_reason is None and not on_cuda:
            self.cuda_reason = "ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries missing?)"
            log.warning("onnxruntime: %s; running on the CPU", self.cuda_reason)
        self.name = ("onnxruntime-cuda" + ("-tf32" if tf32 else "")) if on_cuda else "onnxruntime-cpu"
        self.device = device_label(gpu_id) if on_cuda else "cpu"
        self.input_name, self.output_name = input_name, output_name
        self.max_views = max_views

    def __call__(self, views: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: views})[0]


class TensorRTBackend:
    """A serialized TensorRT 10 or 11 engine, run with torch CUDA tensors as its device buffers;
    `precision` is the one the manifest records it was built in.

    Inputs above the engine profile's `max_views` must be split by the caller."""

    def __init__(
        self, path: Path, *, input_name: str, output_name: str, max_views: int, gpu_id: int = 0, precision: str = "fp16"
    ):
        import tensorrt as trt  # optional: GPU machines only
        import torch

        torch.cuda.set_device(gpu_id)  # the engine's context and the buffers live on this GPU
        self.torch = torch
        self.path = Path(path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT could not deserialize {path} (built for another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = input_name, output_name
        self.num_classes = int(self.engine.get_tensor_shape(output_name)[-1])
        self.stream = torch.cuda.Stream()  # TensorRT synchronizes extra on the default stream
        self.max_views = max_views
        self.name = f"tensorrt-cuda-{precision}"
        self.device = device_label(gpu_id)

    def __call__(self, views: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(views)).cuda()
            y = torch.empty((len(x), self.num_classes), dtype=torch.float32, device=x.device)
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, y.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            out = y.cpu().numpy()  # copies on self.stream, after the engine
        self.stream.synchronize()
        return out


class TorchExportBackend:
    """The student as a torch.export ExportedProgram, weights and input in channels-last 3D
    memory (oneDNN's and cuDNN's fast layout for 3D convolutions: 1.3-1.4x fewer ms than the
    default layout for 30 full-size views on the CPU, benchmarks/results). Uses CUDA when torch
    has it (torch is the runtime here, so its own answer is the one that counts), in fp32 with
    TF32 off unless `tf32` (measurements only)."""

    def __init__(
        self, path: Path, *, threads: int = 0, max_views: int = DEFAULT_MAX_VIEWS, gpu_id: int = 0, tf32: bool = False
    ):
        import torch

        self.torch = torch
        if threads > 0:
            torch.set_num_threads(threads)
        self.path = Path(path)
        on_cuda = torch.cuda.is_available()
        self.torch_device = torch.device(f"cuda:{gpu_id}" if on_cuda else "cpu")
        if on_cuda:
            torch_tf32(tf32)
        module = torch.export.load(str(path)).module().to(self.torch_device)
        # Module.to takes memory_format at run time; torch's stubs do not list it
        self.module = module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.max_views = max_views
        self.name = f"torch-{self.torch_device.type}" + ("-tf32" if on_cuda and tf32 else "")
        self.device = device_label(gpu_id) if on_cuda else "cpu"

    def __call__(self, views: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(views).to(self.torch_device).contiguous(memory_format=torch.channels_last_3d)
            return self.module(x).float().cpu().numpy()


class OpenVinoBackend:
    """An OpenVINO IR compiled for the CPU at one inference precision ("fp32", "bf16", or "int8":
    the quantized IR, its unquantized operations in fp32).

    PERFORMANCE_HINT LATENCY: one stream, every thread on the one call (a request's views are one
    batch). The precision hint is always set: the CPU plugin's default is bf16 wherever the CPU has
    it, so an IR compiled without a hint would not run in fp32 there."""

    def __init__(
        self, graph: Path, weights: Path, *, precision: str, threads: int = 0, max_views: int = DEFAULT_MAX_VIEWS
    ):
        ov = import_openvino()
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision]}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads  # otherwise OpenVINO's default: one per core
        self.compiled = core.compile_model(core.read_model(str(graph), str(weights)), "CPU", config)
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if used != OPENVINO_HINTS[precision]:
            raise BackendError(f"OpenVINO compiled {graph.name} for {used} instead of {precision} on this CPU")
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)
        self.path = Path(weights)  # answers name the sha256 of the weights: model.xml is the graph alone
        self.max_views = max_views
        self.name = f"openvino-cpu-{precision}"
        self.device = "cpu"

    def __call__(self, views: np.ndarray) -> np.ndarray:
        # share_inputs: the views are read in place (infer is synchronous), not copied first; the
        # logits are copied out of the request's buffer, which the next call overwrites
        return self.request.infer(np.ascontiguousarray(views, dtype=np.float32), share_inputs=True)[self.output]


def openvino_precision(manifest: dict, requested: str | None) -> str:
    """The precision to serve the export's OpenVINO IR at: `requested`, or with None the fastest
    one offered. It must have passed the export's parity gate and run natively on this CPU;
    otherwise BackendError says why."""
    record = manifest.get("openvino") or {}
    if not record.get("offered"):
        raise BackendError(f"the export has no OpenVINO IR ({record.get('reason') or 'none was written'})")
    try:
        here = openvino_cpu_precisions()
    except ImportError as exc:
        raise BackendError("openvino is not installed") from exc
    except Exception as exc:  # a broken install fails while loading its native libraries
        raise BackendError(f"openvino does not load ({(str(exc).splitlines() or [''])[0][:160]})") from exc
    if requested is not None:
        if requested not in record["offered"]:
            entry = (record.get("precisions") or {}).get(requested) or {"status": "not measured"}
            why = f" ({entry['reason']})" if entry.get("reason") else ""
            raise BackendError(f"the export does not offer OpenVINO {requested}: {entry['status']} at export{why}")
        if requested not in here:
            raise BackendError(f"this CPU does not run OpenVINO {requested} natively")
        return requested
    usable = [p for p in OPENVINO_PRECISIONS if p in record["offered"] and p in here]
    if not usable:
        raise BackendError(
            f"this CPU runs none of the OpenVINO precisions the export offers ({', '.join(record['offered'])})"
        )
    return usable[0]


def openvino_kinds(manifest: dict) -> list[str]:
    """The backend kinds of the OpenVINO precisions to time against each other: each one the
    export offers and this CPU runs natively, least reduced first (fp32, bf16, int8), so that a
    lower precision replaces a higher one only when it is measurably faster. Where none can run,
    ["openvino"], whose loading then says why."""
    record = manifest.get("openvino") or {}
    try:
        here = openvino_cpu_precisions()
    except Exception:  # not installed or broken: load_backend("openvino") gives the reason
        return ["openvino"]
    usable = [
        f"openvino-{p}" for p in reversed(OPENVINO_PRECISIONS) if p in (record.get("offered") or []) and p in here
    ]
    return usable or ["openvino"]


def tensorrt_unavailable(manifest: dict) -> str | None:
    """None when the export's TensorRT engine can run here, else why not (one line)."""
    record = manifest.get("tensorrt") or {}
    if not record.get("file"):
        return f"the export has no TensorRT engine ({record.get('reason', 'none was built')})"
    if not (manifest.get("parity") or {}).get("tensorrt"):
        return "the manifest has no parity report for its TensorRT engine: it was never compared with PyTorch"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    except Exception as exc:  # a broken install fails while loading its native libraries
        return f"tensorrt does not load ({str(exc).splitlines()[0][:160]})"
    reason = cuda_unavailable()
    if reason:
        return reason
    import torch

    if not torch.cuda.is_available():
        return (
            "the TensorRT backend uses torch CUDA tensors as its buffers and this torch is CPU-only (the "
            'default serving image: its SERVE_* build arguments add CUDA torch and TensorRT, README "Docker")'
        )
    return None


# manifest["parity"] keys of the reports that cover each backend name
PARITY_KEYS = {
    "onnxruntime-cpu": "onnxruntime",
    "onnxruntime-cuda": "onnxruntime-cuda",
    "torch-cpu": "exported_program",
    "torch-cuda": "exported_program-cuda",
}


def parity_unchecked(manifest: dict, name: str) -> str | None:
    """None when the export's parity gate compared this backend (runtime and device) with
    PyTorch, else a sentence saying it did not. TensorRT engines and OpenVINO precisions are
    gated where they are loaded; this covers the ONNX Runtime and PyTorch backends."""
    key = PARITY_KEYS.get(name)
    if key is None:
        return None
    parity = manifest.get("parity") or {}
    if parity.get(key):
        return None
    gpu = (parity.get("machine") or {}).get("gpu")
    where = f"on {gpu}, where {name} did not run" if gpu else "on a machine without a GPU"
    return f"{name}: the export's parity gate ran {where}; this backend's results were never compared with PyTorch"


def load_backend(
    kind: str,
    export_dir: Path,
    manifest: dict,
    *,
    threads: int = 0,
    max_views: int = DEFAULT_MAX_VIEWS,
    gpu_id: int = 0,
):
    """Build one backend by kind ("tensorrt", "onnxruntime", "torch", "openvino" at its fastest
    offered precision, "openvino-fp32", "openvino-bf16", "openvino-int8"); raise BackendError if it
    cannot run here. `gpu_id` is the GPU to use where one is visible (TorchServe gives each worker one)."""
    if kind == "tensorrt":
        return load_tensorrt(export_dir, manifest, max_views=max_views, gpu_id=gpu_id)
    if kind == "onnxruntime":
        return load_onnxruntime(export_dir, manifest, threads=threads, max_views=max_views, gpu_id=gpu_id)
    if kind == "torch":
        record = manifest.get("torch") or {}
        path = verified_artifact(export_dir, manifest, record.get("file"))
        return warn_unchecked(manifest, TorchExportBackend(path, threads=threads, max_views=max_views, gpu_id=gpu_id))
    if kind in ("openvino", "openvino-fp32", "openvino-bf16", "openvino-int8"):
        return load_openvino(kind, export_dir, manifest, threads=threads, max_views=max_views)
    raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_CHOICES)}")


def load_tensorrt(export_dir: Path, manifest: dict, *, max_views: int, gpu_id: int) -> TensorRTBackend:
    reason = tensorrt_unavailable(manifest)
    if reason:
        raise BackendError(reason)
    record = manifest["tensorrt"]
    path = verified_artifact(export_dir, manifest, record["file"])
    backend = TensorRTBackend(
        path,
        input_name=manifest["onnx"]["input"],
        output_name=manifest["onnx"]["output"],
        max_views=min(max_views, int(record["max_views"])),
        gpu_id=gpu_id,
        precision=record.get("precision", "fp16"),
    )
    built_on, here = record.get("gpu"), cuda_device_name(gpu_id)
    if built_on and here and built_on != here:  # an engine is tuned for (and usually tied to) its GPU model
        log.warning("the TensorRT engine was built and parity-checked on %s; this worker runs it on %s", built_on, here)
    return backend


def load_onnxruntime(
    export_dir: Path, manifest: dict, *, threads: int, max_views: int, gpu_id: int
) -> OnnxRuntimeBackend:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BackendError("onnxruntime is not installed") from exc
    record = manifest.get("onnx") or {}
    path = verified_artifact(export_dir, manifest, record.get("file"))
    return warn_unchecked(
        manifest,
        OnnxRuntimeBackend(
            path,
            input_name=record["input"],
            output_name=record["output"],
            threads=threads,
            max_views=max_views,
            gpu_id=gpu_id,
        ),
    )


def load_openvino(kind: str, export_dir: Path, manifest: dict, *, threads: int, max_views: int) -> OpenVinoBackend:
    """`kind` is "openvino" (the fastest precision the export offers here) or "openvino-<precision>"."""
    try:
        precision = openvino_precision(manifest, kind.partition("-")[2] or None)
        record = manifest["openvino"]["precisions"][precision]
        graph = verified_artifact(export_dir, manifest, record["graph"])
        weights = verified_artifact(export_dir, manifest, record["weights"])
        return OpenVinoBackend(graph, weights, precision=precision, threads=threads, max_views=max_views)
    except BackendError:
        raise
    except Exception as exc:  # a broken install or a compile failure: a reason, not a dead worker
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BackendError(f"OpenVINO cannot run this export here ({first})") from exc


def warn_unchecked(manifest: dict, backend):
    """The backend, its parity status kept on it (`parity_checked`) and logged when the export
    never compared it: an export made on a CPU machine still serves on a GPU, but says so."""
    reason = parity_unchecked(manifest, backend.name)
    backend.parity_checked = reason is None
    if reason:
        log.warning("%s", reason)
    return backend


def kind_of(name: str) -> str:
    """The `load_backend` kind that builds a backend of this name again ("onnxruntime-cpu" ->
    "onnxruntime", "openvino-cpu-bf16" -> "openvino-bf16")."""
    engine = name.split("-")[0]
    kind = f"{engine}-{name.rsplit('-', 1)[-1]}" if engine == "openvino" else engine
    if kind not in BACKEND_CHOICES or kind == "auto":
        raise ValueError(f"no backend kind for {name!r}")
    return kind


def time_backend(backend, views: np.ndarray, *, repeats: int = 2) -> float:
    """Best-of-`repeats` seconds of one call on `views`, after one warm-up call."""
    backend(views)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend(views)
        best = min(best, time.perf_counter() - t0)
    return best


def fastest(timings: dict[str, float], *, min_gain: float = AUTO_MIN_GAIN) -> str:
    """The kind to serve with, from {kind: seconds} in preference order: a later kind replaces
    the current choice only when it takes at most (1 - min_gain) of its time."""
    choice = None
    for kind, seconds in timings.items():
        if choice is None or seconds <= (1 - min_gain) * timings[choice]:
            choice = kind
    if choice is None:
        raise ValueError("no timings to choose from")
    return choice


def candidate_kinds(prefer: str, manifest: dict) -> list[str]:
    """The kinds `select_backend` loads and times for `prefer`: every runtime in AUTO_ORDER for
    "auto", the export's OpenVINO precisions for "openvino", else the one named."""
    if prefer == "auto":
        return [k for kind in AUTO_ORDER for k in (openvino_kinds(manifest) if kind == "openvino" else [kind])]
    if prefer == "openvino":
        return openvino_kinds(manifest)
    return [prefer]


def select_backend(
    export_dir: Path,
    manifest: dict,
    *,
    prefer: str = "auto",
    threads: int = 0,
    max_views: int = DEFAULT_MAX_VIEWS,
    gpu_id: int = 0,
    probe_views: int | None = None,
):
    """The backend named by `prefer`, or with "auto" the fastest of those that run here.

    "auto" loads TensorRT, ONNX Runtime, PyTorch and each OpenVINO precision the export offers in
    turn (each one that cannot run is logged with the reason), times each on a zero batch of
    `probe_views` views (default: the manifest's clips x crops, one default request; at most
    `max_views`) and keeps the fastest (`fastest`); "openvino" does the same among the OpenVINO
    precisions. The measured seconds are kept on the backend as `.timings` and logged.
    `probe_views=0` times nothing and returns the first that loads (a check that one can run)."""
    kinds = candidate_kinds(prefer, manifest)
    if len(kinds) == 1:
        backend = load_backend(kinds[0], export_dir, manifest, threads=threads, max_views=max_views, gpu_id=gpu_id)
        backend.timings = {}
        return backend
    reasons, loaded = [], {}
    for kind in kinds:
        try:
            loaded[kind] = load_backend(kind, export_dir, manifest, threads=threads, max_views=max_views, gpu_id=gpu_id)
        except BackendError as exc:
            log.info("backend %s not used: %s", kind, exc)
            reasons.append(f"{kind}: {exc}")
    if not loaded:
        raise BackendError("no runtime backend can run this export: " + "; ".join(reasons))
    spec = manifest["input"]
    if probe_views is None:
        probe_views = int(spec.get("test_clips", 10)) * int(spec.get("test_crops", 3))
    n = max(1, min(probe_views, *(b.max_views for b in loaded.values())))
    views = np.zeros((n, 3, spec["clip_len"], spec["test_crop"], spec["test_crop"]), dtype=np.float32)
    timings = {kind: time_backend(b, views) for kind, b in loaded.items()} if len(loaded) > 1 and probe_views else {}
    chosen = loaded[fastest(timings)] if timings else next(iter(loaded.values()))
    chosen.timings = {loaded[k].name: round(v * 1e3, 3) for k, v in timings.items()}
    log.info(
        "backend %s on %s chosen (ms per %d views: %s)",
        chosen.name,
        chosen.device,
        n,
        ", ".join(f"{k} {v:.1f}" for k, v in chosen.timings.items()) or "the only one that runs here",
    )
    release_others(loaded, chosen)
    return chosen


def release_others(loaded: dict, chosen) -> None:
    """Drop every loaded backend but `chosen`, and hand the CUDA memory torch cached for them
    back to the driver: a losing torch backend would otherwise keep its weights' and
    activations' blocks reserved in every worker."""
    losers = [b for b in loaded.values() if b is not chosen]
    on_cuda = any(str(getattr(b, "device", "")).startswith("cuda") for b in losers)
    loaded.clear()
    del losers
    if not on_cuda:
        return
    gc.collect()  # the losers' modules and sessions hold the memory until they are collected
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        log.info(
            "CUDA memory reserved by torch after releasing the other backends: %.0f MiB",
            torch.cuda.memory_reserved() / 2**20,
        )
