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
import torch.nn.functional as F

from training.video import open_video, read_frames, successor_indices, uniform_clip_indices

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
    """0-255 float clips (N, 3, T, H, W) -> ImageNet-normalized float32."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return (x.float() - mean) / std


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) -> short side `size`, aspect ratio kept (bilinear, antialiased).

    uint8 frames stay uint8: torch's uint8 path (fastest on channels-last memory, which frames
    decoded as (N, H, W, 3) already have) is ~10x quicker than resizing floats on the CPU and
    differs from the rounded float result by at most 1 grey level."""
    h, w = frames.shape[-2:]
    if min(h, w) == size:
        return frames
    scale = size / min(h, w)
    new_hw = (max(size, round(h * scale)), max(size, round(w * scale)))
    return F.interpolate(frames, size=new_hw, mode="bilinear", align_corners=False, antialias=True)


def crop_offsets(length: int, crop: int, num_crops: int) -> list[int]:
    """Start positions of `num_crops` crops along one axis: 1 = centre, 3 = start/centre/end."""
    if num_crops == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (num_crops - 1)) for i in range(num_crops)]


def spatial_crops(frames: torch.Tensor, crop: int, num_crops: int) -> torch.Tensor:
    """(N, 3, H, W) with short side >= crop -> (num_crops, N, 3, crop, crop) along the long side."""
    h, w = frames.shape[-2:]
    if min(h, w) < crop:
        raise ValueError(f"frame {h}x{w} is smaller than the crop {crop}")
    out = []
    if w >= h:
        top = (h - crop) // 2
        for left in crop_offsets(w, crop, num_crops):
            out.append(frames[..., top : top + crop, left : left + crop])
    else:
        left = (w - crop) // 2
        for top in crop_offsets(h, crop, num_crops):
            out.append(frames[..., top : top + crop, left : left + crop])
    return torch.stack(out)


def frames_to_views(
    frames: np.ndarray | torch.Tensor, *, clips: int, crops: int, short_side: int, crop: int,
    spec: InputSpec | None = None,
) -> torch.Tensor:
    """(clips*T, H, W, 3) uint8 frames, clip-major -> (clips*crops, 3, T, crop, crop) float with
    whole values in 0-255, or with `spec` the normalized model input (contiguous float32).

    Views are ordered clip-major: view = clip * crops + crop_index. Normalizing here, on the
    resized frames before the (overlapping) crops are cut, gives exactly `normalize(views)`
    element for element; measured, it halves the view time for 1x3 views of a 320x240 video and
    is on par for 10x3 (benchmarks/results).
    """
    x = torch.as_tensor(frames).permute(0, 3, 1, 2)  # (clips*T, 3, H, W), channels-last memory
    x = resize_short_side(x, short_side)
    if spec is not None:
        x = normalize(x.unsqueeze(2), spec).squeeze(2)  # (clips*T, 3, H, W) float32
    x = spatial_crops(x, crop, crops)  # (crops, clips*T, 3, S, S)
    x = x.reshape(crops, clips, -1, 3, crop, crop)  # (crops, clips, T, 3, S, S)
    x = x.permute(1, 0, 3, 2, 4, 5)  # (clips, crops, 3, T, S, S)
    # whole 0-255 values: the loaders ship views as uint8 and the server uses them as floats,
    # and both must see the same pixels
    return x.reshape(clips * crops, 3, x.shape[3], crop, crop).float()


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
    quick: bool = False,
    normalized: bool = False,
    num_threads: int = 1,
    name: str | None = None,
    timings: dict | None = None,
) -> DecodedViews:
    """Decode a video (path or bytes) into its test views.

    `quick=True` gives the 1-clip centre-crop validation view at `crop_size`; otherwise
    `clips` x `crops` views at `test_crop` (defaults: the spec's 10 x 3). With `tg_stride`
    the successor frames are decoded too, so a temporal-gradient model can be evaluated.
    `normalized=True` returns the model's input (`normalize` applied, the same values) instead
    of 0-255 views, computed the cheaper way (see `frames_to_views`); not with `tg_stride`,
    whose temporal gradient is taken on 0-255 values. A `timings` dict receives the seconds
    spent decoding ("decode") and making the views ("views").
    """
    if normalized and tg_stride is not None:
        raise ValueError("normalized views have no temporal gradient: take TG on 0-255 views, then normalize")
    t0 = time.perf_counter()
    reader = open_video(source, num_threads=num_threads, name=name)
    num_frames = len(reader)
    if quick:
        clips, crops, short, crop = 1, 1, spec.short_side, spec.crop_size
    else:
        clips = spec.test_clips if clips is None else clips
        crops = spec.test_crops if crops is None else crops
        short, crop = spec.test_short_side, spec.test_crop
    idx = uniform_clip_indices(num_frames, clip_len=spec.clip_len, interval=spec.interval, num_clips=clips).reshape(-1)
    wanted = idx if tg_stride is None else np.concatenate([idx, successor_indices(idx, stride=tg_stride, num_frames=num_frames)])
    frames = read_frames(reader, wanted, name=name or "<upload>")
    del reader  # free the decoder before the tensor work
    t1 = time.perf_counter()
    n = len(idx)
    views = frames_to_views(frames[:n], clips=clips, crops=crops, short_side=short, crop=crop,
                            spec=spec if normalized else None)
    successors = None
    if tg_stride is not None:
        successors = frames_to_views(frames[n:], clips=clips, crops=crops, short_side=short, crop=crop)
    if timings is not None:
        timings.update(decode=t1 - t0, views=time.perf_counter() - t1)
    return DecodedViews(views=views, successors=successors, num_frames=num_frames)


def average_view_scores(logits: torch.Tensor) -> torch.Tensor:
    """(V, C) view logits -> (C,) video scores: the mean of the views' softmax probabilities."""
    return logits.float().softmax(dim=-1).mean(dim=0)
