"""Test-time views and evaluation preprocessing: the one implementation that offline
evaluation, export's parity check and the server all import (no train/serve skew).

The 30-view test (METHOD.md): 10 clips spread uniformly over the video x 3 crops of
`test_crop` along the long side after resizing the short side to `test_short_side`; the
quick validation uses 1 clip and a centre crop of `crop_size`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from training.view_decode import DecodeLimits, VideoRejected, ViewGeometry, read_view_crops

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # on 0-255 values, RGB order
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class InputSpec:
    """How a clip is sampled and preprocessed; saved in every checkpoint and export manifest."""

    clip_len: int = 8
    interval: int = 8
    short_side: int = 256  # training: resize short side, then random resized crop
    crop_size: int = 224
    crop_area: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    flip: bool = True
    test_clips: int = 10
    test_crops: int = 3
    test_short_side: int = 256
    test_crop: int = 256
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def to_dict(self) -> dict:
        return asdict(self)


def normalize(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """0-255 clips (N, 3, T, H, W), any dtype -> ImageNet-normalized float32 (a new tensor).

    One float copy normalized in place: the same values as (x - mean) / std with one 4-byte
    pass fewer and no temporaries (measured: half the time for 30 views of 8 x 256^2)."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return x.to(torch.float32, copy=True).sub_(mean).div_(std)


def geometry(
    spec: InputSpec,
    *,
    clips: int | None = None,
    crops: int | None = None,
    quick: bool = False,
    tg_stride: int | None = None,
    tg_spread: bool = False,
) -> ViewGeometry:
    """The frames and crops of a set of views: `quick` = the 1-clip centre-crop validation view
    at `crop_size`; otherwise `clips` x `crops` views at `test_crop` (default: the spec's 10 x 3)."""
    if quick:
        return ViewGeometry(
            clips=1,
            crops=1,
            clip_len=spec.clip_len,
            interval=spec.interval,
            short_side=spec.short_side,
            crop=spec.crop_size,
            tg_stride=tg_stride,
            tg_spread=tg_spread,
        )
    return ViewGeometry(
        clips=spec.test_clips if clips is None else clips,
        crops=spec.test_crops if crops is None else crops,
        clip_len=spec.clip_len,
        interval=spec.interval,
        short_side=spec.test_short_side,
        crop=spec.test_crop,
        tg_stride=tg_stride,
        tg_spread=tg_spread,
    )


def crops_to_views(crops: np.ndarray, g: ViewGeometry, spec: InputSpec | None = None) -> torch.Tensor:
    """(clips*T, crops, S, S, 3) uint8 crops -> (clips*crops, 3, T, S, S) float views with whole
    0-255 values, or with `spec` the normalized model input (contiguous float32).

    Views are ordered clip-major: view = clip * crops + crop_index. The crops are cut before
    any float work, so a very wide frame costs no more than a square one."""
    x = torch.as_tensor(crops).reshape(g.clips, g.clip_len, g.crops, g.crop, g.crop, 3)
    # the reshape copies the permuted uint8 crops into contiguous memory: a quarter of the bytes a
    # float copy would move
    x = x.permute(0, 2, 5, 1, 3, 4).reshape(g.clips * g.crops, 3, g.clip_len, g.crop, g.crop)
    return normalize(x, spec) if spec is not None else x.float()


@dataclass
class DecodedViews:
    views: torch.Tensor  # (V, 3, T, S, S) float 0-255, or normalized when asked for
    successors: torch.Tensor | None  # same shape: frames `tg_stride` later, for temporal gradient
    num_frames: int  # frames in the video


def decode_test_views(
    source: str | bytes,
    spec: InputSpec,
    *,
    clips: int | None = None,
    crops: int | None = None,
    tg_stride: int | None = None,
    tg_spread: bool = False,
    quick: bool = False,
    normalized: bool = False,
    num_threads: int = 1,
    formats: tuple[str, ...] | None = None,
    limits: DecodeLimits = DecodeLimits(),
    timings: dict | None = None,
) -> DecodedViews:
    """Decode a video (path or bytes) into its test views, with the decoder and crops the
    server uses (`training.view_decode`).

    With `tg_stride` the successor frames are decoded too, so a temporal-gradient model can be
    evaluated (with `tg_spread`, slow TG's frame pairs spread over each clip: `views` are then
    the first frame of each pair). `normalized=True` returns the model's input (`normalize` applied) instead of
    0-255 views; not with `tg_stride`, whose temporal gradient is taken on 0-255 values.
    `formats`: the accepted container demuxers (None: any; the server passes its allow-list).
    A `timings` dict receives the seconds spent decoding ("decode") and making the views ("views").
    """
    if normalized and tg_stride is not None:
        raise ValueError("normalized views have no temporal gradient: take TG on 0-255 views, then normalize")
    g = geometry(spec, clips=clips, crops=crops, quick=quick, tg_stride=tg_stride, tg_spread=tg_spread)
    t0 = time.perf_counter()
    try:
        decoded = read_view_crops(source, g, limits=limits, formats=formats, threads=num_threads)
    except VideoRejected as exc:
        if isinstance(source, (bytes, bytearray, memoryview)):
            raise
        raise VideoRejected(exc.status, exc.code, f"{source}: {exc.detail}") from None  # name the file
    t1 = time.perf_counter()
    views = crops_to_views(decoded.crops, g, spec if normalized else None)
    successors = None if decoded.successors is None else crops_to_views(decoded.successors, g)
    if timings is not None:
        timings.update(decode=t1 - t0, views=time.perf_counter() - t1)
    return DecodedViews(views=views, successors=successors, num_frames=decoded.info.num_frames)


def average_view_scores(logits: torch.Tensor, rule: str = "prob") -> torch.Tensor:
    """(V, C) view logits -> (C,) video scores. `prob`: the mean of the views' softmax
    probabilities (what the server answers with); `score`: the mean of the raw logits, MMAction2's
    average_clips='score', the rule behind the paper's numbers."""
    if rule == "prob":
        return logits.float().softmax(dim=-1).mean(dim=0)
    if rule == "score":
        return logits.float().mean(dim=0)
    raise ValueError(f"unknown view-averaging rule {rule!r}: prob or score")
