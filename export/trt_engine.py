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


class EngineRunner:
    """Runs a serialized engine on float32 views (N, 3, T, H, W), `max_views` at a time, with
    torch CUDA tensors as the device buffers."""

    def __init__(self, plan_path: Path, *, max_views: int):
        import tensorrt as trt

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan_path}")
        self.context = self.engine.create_execution_context()
        self.max_views = max_views
        self.num_classes = int(self.engine.get_tensor_shape(OUTPUT_NAME)[-1])

    @torch.no_grad()
    def __call__(self, views: np.ndarray) -> np.ndarray:
        stream = torch.cuda.current_stream()
        outputs = []
        for start in range(0, len(views), self.max_views):
            x = torch.from_numpy(np.ascontiguousarray(views[start : start + self.max_views])).cuda()
            y = torch.empty((len(x), self.num_classes), dtype=torch.float32, device="cuda")
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            outputs.append(y.cpu().numpy())
        return np.concatenate(outputs)
