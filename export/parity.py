"""Parity of the exported model with the PyTorch student on real decoded validation clips.

Every view of each video comes from `training.views` (the one test-view implementation the
server also uses), goes through the PyTorch student once as the reference and through each
exported backend, and the differences are accumulated over all views.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from training.data import VideoItem
from training.video import VideoDecodeError
from training.views import InputSpec, average_view_scores, decode_test_views, normalize

log = logging.getLogger(__name__)

Backend = Callable[[np.ndarray], np.ndarray]  # (V, 3, T, H, W) float32 normalized -> (V, C) logits


def chunked(backend, max_views: int) -> Backend:
    """A backend that takes any number of views, `max_views` at a time (as the server sends them)."""
    return lambda views: np.concatenate([backend(views[i : i + max_views]) for i in range(0, len(views), max_views)])


@dataclass(frozen=True)
class Bound:
    """When a backend counts as equal to the reference: max |logit difference| at most
    `abs_tol` x max(1, max |reference logit|), and at least `min_top1` of the views with the same
    top-1 class (a view whose top two logits nearly tie may flip under any rounding). With
    `max_top1_drop`, also the video-level Top-1 accuracy (views averaged as the server does) at
    most that many points below the reference's on the same videos."""

    abs_tol: float
    min_top1: float
    max_top1_drop: float | None = None


# fp32 ONNX Runtime differs from PyTorch only by summation order and BatchNorm folding (~1e-6
# relative); fp16 TensorRT keeps 10-11 mantissa bits, so its logits move by ~1e-2 relative.
ONNXRUNTIME_BOUND = Bound(abs_tol=1e-3, min_top1=0.99)
TENSORRT_FP16_BOUND = Bound(abs_tol=5e-2, min_top1=0.95)
TENSORRT_FP32_BOUND = Bound(abs_tol=1e-3, min_top1=0.99)
# TF32 rounds the operands of each convolution to fp16's 10 mantissa bits but keeps fp32's range
# and fp32 activations between layers, so it moves the logits by at most what fp16 does; held
# to fp16's bound until a GPU measurement narrows it (`make gpu-check` prints it).
TENSORRT_TF32_BOUND = Bound(abs_tol=5e-2, min_top1=0.95)
TENSORRT_BOUNDS = {"fp16": TENSORRT_FP16_BOUND, "tf32": TENSORRT_TF32_BOUND, "fp32": TENSORRT_FP32_BOUND}
# The CUDA backends the server runs in fp32 (ONNX Runtime's CUDA provider, the ExportedProgram on
# CUDA; both with TF32 off) differ from the CPU only by kernel choice and summation order.
CUDA_FP32_BOUND = ONNXRUNTIME_BOUND
# OpenVINO fp32 is as close as ONNX Runtime (measured: 2e-8 on the tiny run, 5e-7 at full size).
# bf16 keeps 8 mantissa bits of every weight and activation (accumulating in fp32): measured
# 3e-3 (full size) to 9e-3 (the tests' tiny run) x max(1, max |logit|), so 5e-2 leaves a margin
# of five or more; a reduced precision is served only if it also costs at most half a point of
# Top-1 on the videos checked.
OPENVINO_BOUNDS = {
    "fp32": Bound(abs_tol=1e-3, min_top1=0.99),
    "bf16": Bound(abs_tol=5e-2, min_top1=0.95, max_top1_drop=0.5),
    "int8": Bound(abs_tol=0.15, min_top1=0.9, max_top1_drop=0.5),
}


class ParityError(Exception):
    """A backend's logits differ from the PyTorch student's beyond its bound."""


@dataclass
class Comparison:
    """Running comparison of one backend against the reference, view by view."""

    videos: int = 0
    views: int = 0
    max_abs_diff: float = 0.0
    max_abs_ref: float = 0.0
    top1_agree: int = 0
    finite: bool = True
    labeled: int = 0  # videos with a known label, and how many of them each side gets right
    correct: int = 0
    reference_correct: int = 0

    def add(self, ref: np.ndarray, out: np.ndarray, label: int | None = None) -> None:
        """One video's views: reference and backend logits (V, C), and its label where known."""
        if out.shape != ref.shape:
            raise ParityError(f"output shape {out.shape} differs from the reference {ref.shape}")
        self.finite &= bool(np.isfinite(out).all())
        self.videos += 1
        self.views += len(ref)
        self.max_abs_diff = max(self.max_abs_diff, float(np.abs(out.astype(np.float64) - ref).max()))
        self.max_abs_ref = max(self.max_abs_ref, float(np.abs(ref).max()))
        self.top1_agree += int((out.argmax(1) == ref.argmax(1)).sum())
        if label is not None and label >= 0:
            self.labeled += 1
            self.correct += int(video_top1(out) == label)
            self.reference_correct += int(video_top1(ref) == label)

    def report(self, bound: Bound) -> dict:
        abs_bound = bound.abs_tol * max(1.0, self.max_abs_ref)
        accuracy = 100.0 * self.correct / self.labeled if self.labeled else None
        reference = 100.0 * self.reference_correct / self.labeled if self.labeled else None
        return {
            "videos": self.videos,
            "views": self.views,
            "max_abs_diff": self.max_abs_diff if self.finite else float("inf"),
            "max_rel_err": (self.max_abs_diff / self.max_abs_ref if self.max_abs_ref else 0.0)
            if self.finite
            else float("inf"),
            "top1_agreement": self.top1_agree / self.views if self.views else 0.0,
            "bound": abs_bound,
            "top1_bound": bound.min_top1,
            "labeled_videos": self.labeled,
            "top1_accuracy": accuracy,
            "reference_top1_accuracy": reference,
            "top1_accuracy_diff": None if accuracy is None or reference is None else accuracy - reference,
            "top1_drop_bound": bound.max_top1_drop,
        }


def video_top1(logits: np.ndarray) -> int:
    """The class a video gets from its views' logits (V, C): their softmax scores averaged, as
    offline evaluation and the server score it."""
    return int(average_view_scores(torch.from_numpy(np.asarray(logits, dtype=np.float32))).argmax())


def check_parity(name: str, report: dict) -> None:
    """Raise ParityError naming the backend and the broken bound."""
    if not report["views"]:
        raise ParityError(f"{name}: no views were compared")
    if not report["max_abs_diff"] <= report["bound"]:  # also catches inf/NaN
        raise ParityError(
            f"{name}: max |logit difference| {report['max_abs_diff']:.3g} over {report['views']} views "
            f"exceeds the bound {report['bound']:.3g}"
        )
    if report["top1_agreement"] < report["top1_bound"]:
        raise ParityError(
            f"{name}: top-1 agreement {report['top1_agreement']:.4f} with PyTorch is below {report['top1_bound']}"
        )
    drop_bound, diff = report.get("top1_drop_bound"), report.get("top1_accuracy_diff")
    if drop_bound is not None and diff is not None and -diff > drop_bound:
        raise ParityError(
            f"{name}: Top-1 accuracy {report['top1_accuracy']:.2f} % on {report['labeled_videos']} "
            f"videos is {-diff:.2f} points below PyTorch's {report['reference_top1_accuracy']:.2f} % "
            f"(at most {drop_bound} allowed)"
        )


def tensorrt_bound(precision: str) -> Bound:
    """The parity bound of a TensorRT engine of `precision` (fp16, tf32 or fp32)."""
    try:
        return TENSORRT_BOUNDS[precision]
    except KeyError:
        raise ValueError(
            f"no parity bound for a TensorRT {precision!r} engine; expected one of {', '.join(TENSORRT_BOUNDS)}"
        ) from None


def onnx_session(path: Path, *, threads: int = 0) -> ort.InferenceSession:
    """ONNX Runtime on its CPU provider (present in onnxruntime-gpu too, and on every machine)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_backend(session: ort.InferenceSession) -> Backend:
    name = session.get_inputs()[0].name
    return lambda views: session.run(None, {name: views})[0]


def torch_backend(module: nn.Module) -> Backend:
    """A module already in eval mode (an ExportedProgram's module cannot be switched)."""

    @torch.inference_mode()
    def run(views: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(views)).float().numpy()

    return run


def decoded_views(
    items: list[VideoItem],
    root: Path,
    spec: InputSpec,
    *,
    limit: int | None = None,
    clips: int | None = None,
    crops: int | None = None,
) -> Iterator[tuple[VideoItem, np.ndarray]]:
    """(video, its normalized test views (V, 3, T, H, W) float32) for up to `limit` readable
    videos; unreadable ones are logged and skipped (the caller counts what it got)."""
    taken = 0
    for item in items:
        if limit is not None and taken >= limit:
            break
        try:
            decoded = decode_test_views(str(root / item.path), spec, clips=clips, crops=crops)
        except VideoDecodeError as exc:
            log.warning("skipped unreadable validation video: %s", exc)
            continue
        taken += 1
        yield item, normalize(decoded.views, spec).numpy()
