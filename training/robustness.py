"""Accuracy under colour corruptions of the test input (the paper's Table 5).

The paper's claim: a student distilled from temporal gradient relies less on colour, so it
loses less accuracy than the FixMatch RGB baseline when contrast, brightness or colour change
at test time. Its corruptions are imgaug's `pillike.EnhanceContrast` and
`pillike.EnhanceBrightness` (identical to PIL's `ImageEnhance`, default factor range
[0.5, 1.5)) and conversion to grayscale. Here they act on the decoded 30 test views (whole
0-255 values, shape (V, 3, T, H, W)) before normalization, with every frame of every view
treated as one PIL image:

- contrast: factor f ~ U[0.5, 1.5); each frame is blended with a uniform grey at its mean
  luma, out = m + f (x - m), m = round(mean of L over the frame) (PIL `ImageEnhance.Contrast`).
- brightness: f ~ U[0.5, 1.5); out = f x (PIL `ImageEnhance.Brightness`, a blend with black).
- grayscale: every channel replaced by the luma L (PIL's `convert("L")`); no randomness.

L = 0.299 R + 0.587 G + 0.114 B rounded to a whole value (ITU-R 601-2, PIL's "L" mode).
Blends are clipped to 0-255 and truncated to whole values, as PIL's `Image.blend` does.

One factor per video, shared by all of its views and frames (MMAction2's Imgaug transform
applies one deterministic draw to a clip's whole frame list). The factor comes from numpy's
generator seeded with (seed, corruption, video index), so every model evaluated with the same
seed sees exactly the same corrupted videos.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from training.data import VideoItem
from training.scoring import accuracy_metrics, score_videos
from training.views import InputSpec

CORRUPTIONS = ("contrast", "brightness", "grayscale")
FACTOR_RANGE = (0.5, 1.5)  # imgaug pillike.EnhanceContrast / EnhanceBrightness defaults
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def _check_views(views: torch.Tensor) -> None:
    if views.dim() != 5 or views.shape[1] != 3:
        raise ValueError(f"expected views (V, 3, T, H, W), got shape {tuple(views.shape)}")


def luma(views: torch.Tensor) -> torch.Tensor:
    """(V, 3, T, H, W) 0-255 -> (V, 1, T, H, W) whole-valued luma L."""
    _check_views(views)
    w = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=views.device).view(1, 3, 1, 1, 1)
    return (views.float() * w).sum(dim=1, keepdim=True).round()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: float) -> torch.Tensor:
    # PIL Image.blend(degenerate, image, factor): clip to 0-255, truncate to a whole value
    return (degenerate + factor * (x.float() - degenerate)).clamp(0, 255).floor()


def adjust_contrast(views: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ImageEnhance.Contrast on every frame: blend with grey at the frame's mean luma."""
    mean = luma(views).mean(dim=(-2, -1), keepdim=True)  # (V, 1, T, 1, 1): one grey per frame
    return _blend(torch.floor(mean + 0.5), views, factor)


def adjust_brightness(views: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL ImageEnhance.Brightness: blend with black, i.e. scale by `factor`."""
    _check_views(views)
    return _blend(torch.zeros((), device=views.device), views, factor)


def to_grayscale(views: torch.Tensor) -> torch.Tensor:
    """Three equal channels holding the luma L."""
    return luma(views).expand(-1, 3, -1, -1, -1).contiguous()


def corruption_factor(kind: str, *, seed: int, index: int) -> float | None:
    """The enhancement factor of video `index` (None for grayscale, which has none)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")
    if kind == "grayscale":
        return None
    rng = np.random.default_rng([seed, CORRUPTIONS.index(kind), index])
    return float(rng.uniform(*FACTOR_RANGE))


def corrupt(views: torch.Tensor, kind: str, *, factor: float | None = None) -> torch.Tensor:
    """Apply one corruption to a video's views (V, 3, T, H, W), 0-255 -> 0-255."""
    if kind in ("contrast", "brightness"):
        assert factor is not None, f"the {kind} corruption needs a factor"
        return (adjust_contrast if kind == "contrast" else adjust_brightness)(views, factor)
    if kind == "grayscale":
        return to_grayscale(views)
    raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(CORRUPTIONS)}")


def corruption(kind: str, *, seed: int = 0) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """A `perturb(views, video_index)` for `score_videos`: `kind` with the video's own factor."""
    corruption_factor(kind, seed=seed, index=0)  # fails early on an unknown kind

    def apply(views: torch.Tensor, index: int) -> torch.Tensor:
        return corrupt(views, kind, factor=corruption_factor(kind, seed=seed, index=index))

    return apply


def evaluate_robustness(
    model: nn.Module,
    items: list[VideoItem],
    root: Path,
    spec: InputSpec,
    *,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    kinds: tuple[str, ...] = CORRUPTIONS,
    batch_views: int = 30,
    num_workers: int = 0,
) -> dict[str, dict]:
    """The RGB model's 30-view test under each corruption -> {kind: accuracy metrics}."""
    report: dict[str, Any] = {}
    for kind in kinds:
        scores, labels, skipped = score_videos(
            model,
            items,
            root,
            spec,
            modality="rgb",
            tg_stride=1,
            device=device,
            batch_views=batch_views,
            num_workers=num_workers,
            perturb=corruption(kind, seed=seed),
        )
        report[kind] = accuracy_metrics(scores, labels, num_classes)
        report[kind]["skipped_videos"] = len(skipped)
    report["seed"] = seed
    return report
