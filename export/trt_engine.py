"""TensorRT engine from the exported ONNX file, and a runner for the export's parity check.

TensorRT is optional (a GPU-only extra; it cannot be installed on the CPU machines), so it is
imported lazily and `unavailable_reason` says in one line why an engine cannot be built here.

Written against the TensorRT 10 and 11 Python APIs (named I/O tensors, `execute_async_v3`).
They differ in how reduced precision is asked for, and `build_plan` chooses by what the
installed module offers rather than by its version string:
- TensorRT 10 has weak typing: `BuilderFlag.FP16` lets the builder pick fp16 kernels per layer.
- TensorRT 11 removed it (and `Builder.platform_has_fast_fp16`): every network is strongly
  typed, so an fp16 engine is built from a graph whose own types are fp16. The ONNX file is
  converted before parsing (ONNX Runtime's float16 converter, inputs and outputs kept fp32, so
  the engine takes and returns what every other backend does).
- TF32 (`BuilderFlag.TF32`, on by default in both) rounds the operands of fp32 convolutions
  and matmuls to 10 mantissa bits. A "tf32" engine keeps it on; an "fp32" engine clears it, so
  that the label and the parity bound it is held to are true.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "clips", "logits"
PRECISIONS = ("fp16", "tf32", "fp32")


class EngineBuildError(RuntimeError):
    """TensorRT could not build (or load) an engine here; the message says why in one line."""


@dataclass(frozen=True)
class BuildPlan:
    """How to ask the installed TensorRT for an engine of one precision."""

    precision: str  # what the engine computes in: fp16, tf32 or fp32 (the manifest's label)
    typing: str  # "weak" (builder flags choose kernel precisions) or "strong" (the graph's types do)
    network_flags: int  # for Builder.create_network
    set_flags: tuple[str, ...]  # BuilderFlag names to set
    clear_flags: tuple[str, ...]  # BuilderFlag names to clear
    fp16_graph: bool  # convert the ONNX graph to fp16 (inputs/outputs kept fp32) before parsing


def build_plan(trt, precision: str) -> BuildPlan:
    """The build settings for `precision` on the TensorRT module `trt`, chosen by the API it
    exposes (weak typing flags present or not); EngineBuildError when it cannot be honoured."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    flags = trt.BuilderFlag
    weak_fp16 = hasattr(flags, "FP16")  # TensorRT 10 and older; gone in 11
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    typing = "weak" if weak_fp16 else "strong"
    # on TensorRT 11 every network is strongly typed and the flag is accepted but ignored;
    # on 10 it is set only where the graph carries the precision (fp16 without the weak flag)
    strong_flags = 0 if strongly_typed is None else 1 << int(strongly_typed)
    if precision == "fp16":
        if weak_fp16:
            return BuildPlan("fp16", "weak", 0, ("FP16",), (), fp16_graph=False)
        if strongly_typed is None:
            raise EngineBuildError(
                f"TensorRT {getattr(trt, '__version__', '?')} offers neither BuilderFlag.FP16 nor "
                "strongly typed networks: cannot build an fp16 engine"
            )
        return BuildPlan("fp16", "strong", strong_flags, (), (), fp16_graph=True)
    if not hasattr(flags, "TF32"):
        raise EngineBuildError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no BuilderFlag.TF32: cannot say "
            f"whether a {precision} engine would run in TF32"
        )
    if precision == "tf32":
        return BuildPlan("tf32", typing, 0, ("TF32",), (), fp16_graph=False)
    return BuildPlan("fp32", typing, 0, (), ("TF32",), fp16_graph=False)


def fp16_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its weights and activations in fp16 and its input and output kept fp32
    (Cast nodes at both ends), for a strongly typed fp16 engine."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True)
    # the converter appends the input's Cast node after the nodes that read it; ONNX requires
    # (and TensorRT's parser walks) the nodes in topological order
    sort_nodes(converted.graph)
    return converted


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Reorder the graph's nodes topologically, in place, keeping their order where it is one."""
    ready = {""} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise EngineBuildError(f"the fp16 graph has a cycle or an undefined input at node {waiting[0].name!r}")
        pending = waiting
    copies = [onnx.NodeProto.FromString(node.SerializeToString()) for node in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def unavailable_reason() -> str | None:
    """None when an engine can be built and run here, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    except Exception as exc:  # a broken install raises OSError/RuntimeError while loading its libraries
        return f"tensorrt does not load ({str(exc).splitlines()[0][:160]})"
    if not torch.cuda.is_available():
        # the parity check runs the engine with torch CUDA tensors as its buffers
        return "no CUDA GPU is visible to torch"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    precision: str = "fp16",
    min_views: int = 1,
    opt_views: int = 30,
    max_views: int = 30,
    workspace_gib: float = 4.0,
) -> dict:
    """Parse the ONNX file, build an engine of `precision` (fp16, tf32 or fp32) whose
    optimization profile covers `min_views` to `max_views` views (tuned for `opt_views`), and
    write it to `plan_path`. Returns the manifest's "tensorrt" record; raises EngineBuildError
    (never another exception of TensorRT's) when no engine can be built."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        raise EngineBuildError(f"tensorrt does not import ({_first_line(exc)})") from exc
    try:
        return _build(
            trt,
            onnx_path,
            plan_path,
            build_plan(trt, precision),
            min_views=min_views,
            opt_views=opt_views,
            max_views=max_views,
            workspace_gib=workspace_gib,
        )
    except EngineBuildError:
        raise
    except Exception as exc:  # an API this TensorRT lacks, a CUDA error, an out-of-memory: one line, no traceback
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build a {precision} engine "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _build(
    trt,
    onnx_path: Path,
    plan_path: Path,
    plan: BuildPlan,
    *,
    min_views: int,
    opt_views: int,
    max_views: int,
    workspace_gib: float,
) -> dict:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(plan.network_flags)  # explicit batch is the only mode since 10
    parser = trt.OnnxParser(network, logger)
    model = onnx.load(str(onnx_path))
    if plan.fp16_graph:
        model = fp16_graph(model)
    if not parser.parse(model.SerializeToString()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))

    clip_shape = tuple(network.get_input(0).shape)[1:]  # (3, T, H, W); dim 0 is dynamic (-1)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_views, *clip_shape), (opt_views, *clip_shape), (max_views, *clip_shape))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT failed to build the engine (see its log above)")
    with open(plan_path, "wb") as f:
        f.write(serialized)
    log.info(
        "TensorRT %s: %s engine, %s typing%s",
        trt.__version__,
        plan.precision,
        plan.typing,
        ", graph converted to fp16" if plan.fp16_graph else "",
    )
    return {
        "file": plan_path.name,
        "precision": plan.precision,
        "typing": plan.typing,
        "tf32": plan.precision == "tf32",
        "min_views": min_views,
        "opt_views": opt_views,
        "max_views": max_views,
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
    }


def engine_runner(plan_path: Path, *, max_views: int, precision: str = "fp16"):
    """A callable on float32 views (N, 3, T, H, W) of any N -> logits, running the engine with
    the server's own TensorRT backend (serving.backends), `max_views` views at a time: the parity
    check exercises the code that serves."""
    from serving.backends import BackendError, TensorRTBackend

    try:
        backend = TensorRTBackend(
            Path(plan_path), input_name=INPUT_NAME, output_name=OUTPUT_NAME, max_views=max_views, precision=precision
        )
    except BackendError as exc:
        raise EngineBuildError(str(exc)) from exc

    def run(views: np.ndarray) -> np.ndarray:
        return np.concatenate([backend(views[i : i + max_views]) for i in range(0, len(views), max_views)])

    return run
