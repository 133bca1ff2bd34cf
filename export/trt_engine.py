"""TensorRT engine from the exported ONNX file, and a runner for the export's parity check.

TensorRT is optional (a GPU-only extra; it cannot be installed on the CPU machines), so it is
imported lazily and `unavailable_reason` says in one line why an engine cannot be built here.
Written against the TensorRT 10 Python API (named I/O tensors, `execute_async_v3`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "clips", "logits"


def unavailable_reason() -> str | None:
    """None when an engine can be built and run here, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed"
    except Exception as exc:  # a broken install raises OSError/RuntimeError while loading its libraries
        return f"tensorrt does not load ({str(exc).splitlines()[0][:160]})"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    return None


def build_engine(onnx_path: Path, plan_path: Path, *, precision: str = "fp16", min_views: int = 1,
                 opt_views: int = 30, max_views: int = 30, workspace_gib: float = 4.0) -> dict:
    """Parse the ONNX file, build an engine whose optimization profile covers `min_views` to
    `max_views` views (tuned for `opt_views`), and write it to `plan_path`.

    fp16 is used only where the GPU has fast fp16; otherwise the engine is fp32 and the returned
    record says so. Returns the manifest's "tensorrt" record."""
    import tensorrt as trt

    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision must be fp16 or fp32, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    used = "fp32"
    if precision == "fp16" and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)  # I/O stays fp32: the ONNX input/output types are kept
        used = "fp16"
    elif precision == "fp16":
        log.info("this GPU has no fast fp16: building an fp32 engine")

    clip_shape = tuple(network.get_input(0).shape)[1:]  # (3, T, H, W); dim 0 is dynamic (-1)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_views, *clip_shape), (opt_views, *clip_shape), (max_views, *clip_shape))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    with open(plan_path, "wb") as f:
        f.write(serialized)
    return {"file": plan_path.name, "precision": used, "min_views": min_views, "opt_views": opt_views,
            "max_views": max_views, "tensorrt_version": trt.__version__,
            "gpu": torch.cuda.get_device_name(0)}


def engine_runner(plan_path: Path, *, max_views: int):
    """A callable on float32 views (N, 3, T, H, W) of any N -> logits, running the engine with
    the server's own TensorRT backend (serving.backends), `max_views` views at a time: the parity
    check exercises the code that serves."""
    from serving.backends import BackendError, TensorRTBackend

    try:
        backend = TensorRTBackend(Path(plan_path), input_name=INPUT_NAME, output_name=OUTPUT_NAME, max_views=max_views)
    except BackendError as exc:
        raise RuntimeError(str(exc)) from exc

    def run(views: np.ndarray) -> np.ndarray:
        return np.concatenate([backend(views[i : i + max_views]) for i in range(0, len(views), max_views)])

    return run
