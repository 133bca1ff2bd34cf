"""Temporal gradient and the strong (RandAugment) view, batched on the training device.

The weak view (resize, random resized crop, flip) is applied in the loader processes to a
clip's frames and their successors together (`training.data.weak_geometric`); crop, flip
and bilinear resize are linear, so the TG taken here afterwards equals TG taken before them
up to rounding (METHOD.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.color as KC
import kornia.enhance as KE
import kornia.geometry.transform as KG
import torch

from training.views import InputSpec, normalize


def temporal_gradient(frames: torch.Tensor, successors: torch.Tensor) -> torch.Tensor:
    """TG_t = (x_t - x_{t+s} + 255) / 2 on 0-255 frames (fast TG for s = 1): values stay in 0-255
    so TG is normalized with the RGB mean/std, as the authors' code does."""
    return (frames.float() - successors.float() + 255.0) / 2.0


def split_modalities(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Loader output (B, K, 3, T, H, W) uint8 -> RGB and TG clips (B, 3, T, H, W), float 0-255.

    K = 2: the clip's frames and the frames after them (TG between the two); K = 3: the clip's
    frames, then the two frames of each TG frame (slow TG spread over the clip)."""
    rgb = frames[:, 0].float()
    if frames.shape[1] == 3:
        return rgb, temporal_gradient(frames[:, 1], frames[:, 2])
    return rgb, temporal_gradient(rgb, frames[:, 1])


# ----------------------------------------------------------------------------- RandAugment
# Kornia's RandAugment draws its operations once per call and a random sign per image; the
# method needs one draw per clip, identical on all of its frames, so the op table is written
# here over Kornia's functional ops.
@dataclass(frozen=True)
class OpStrengths:
    """How strong each RandAugment op is at one magnitude (images in [0, 1])."""

    shear: float  # shear factor: x' = x + shear * y (about the centre)
    translate: float  # fraction of the image side
    rotate: float  # degrees
    posterize_bits: int  # bits kept per channel
    solarize_threshold: float  # values at or above it are inverted
    enhance: tuple[float, ...]  # colour/contrast/brightness/sharpness factor, or factors to pick from
    cutout: float  # side of the square, fraction of the shorter image side
    cutout_fill: float
    affine_fill: float  # value outside a sheared, translated or rotated image


def op_strengths(preset: str = "mmaction", magnitude: float = 9.0) -> OpStrengths:
    """The strengths of `preset` at `magnitude` (of 10).

    mmaction: MMAction2's `Imgaug.default_transforms` (the authors' strong view, imgaug
    augmenters; their magnitude is 9): shear 17.19 degrees x level (imgaug's ShearX/Y turn an
    angle into the factor tanh(angle)), translate 0.2 x level of the side, rotate 30 x level
    degrees, posterize to max(1, int(4 x level)) bits, solarize at 256 x level (of 255), colour/
    contrast/brightness/sharpness factor 1.8 x level + 0.1 (always above 1), cutout a square of
    0.2 x level of the side filled with 128, affine fill 0 (imgaug's defaults).
    fixmatch: the FixMatch-style table this project used first, harsher at its magnitude 10:
    shear 0.3, translate 0.3, rotate 30, posterize 4 bits, solarize at 128, factors 1 +- 0.9,
    cutout half the side, grey fill."""
    level = magnitude / 10.0
    if preset == "mmaction":
        return OpStrengths(
            shear=math.tanh(math.radians(17.19 * level)),
            translate=0.2 * level,
            rotate=30.0 * level,
            posterize_bits=max(1, int(4 * level)),
            solarize_threshold=256.0 * level / 255.0,
            enhance=(1.8 * level + 0.1,),
            cutout=0.2 * level,
            cutout_fill=128.0 / 255.0,
            affine_fill=0.0,
        )
    if preset == "fixmatch":
        return OpStrengths(
            shear=0.3 * level,
            translate=0.3 * level,
            rotate=30.0 * level,
            posterize_bits=8 - int(round(4 * level)),
            solarize_threshold=1.0 - 0.5 * level,
            enhance=(1.0 - 0.9 * level, 1.0 + 0.9 * level),
            cutout=0.5 * level,
            cutout_fill=0.5,
            affine_fill=0.5,
        )
    raise ValueError(f"unknown RandAugment preset {preset!r}: mmaction or fixmatch")


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    # PIL ImageEnhance semantics: factor 0 gives `degenerate`, 1 the image, >1 extrapolates
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)


def _cutout(x: torch.Tensor, size: float, fill: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    side = max(1, int(size * min(h, w)))
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))  # centre anywhere: may overhang
    y0, y1, x0, x1 = (
        max(0, cy - side // 2),
        min(h, cy + side // 2 + 1),
        max(0, cx - side // 2),
        min(w, cx + side // 2 + 1),
    )
    x = x.clone()
    x[..., y0:y1, x0:x1] = fill
    return x


def _affine(x: torch.Tensor, matrix: torch.Tensor, fill: float) -> torch.Tensor:
    """Same 2x3 affine (about the image centre) on every frame; `fill` outside."""
    n, _, h, w = x.shape
    centre = torch.tensor([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=x.dtype, device=x.device)
    back = torch.tensor([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], dtype=x.dtype, device=x.device)
    full = torch.eye(3, dtype=x.dtype, device=x.device)
    full[:2] = matrix
    m = (back @ full @ centre)[:2].expand(n, 2, 3)
    return KG.warp_affine(x - fill, m, (h, w), mode="bilinear", padding_mode="zeros") + fill


def _random_sign() -> float:
    return 1.0 if torch.rand(()) < 0.5 else -1.0


def _op(name: str, x: torch.Tensor, s: OpStrengths, sign: float | None = None) -> torch.Tensor:
    """Apply one RandAugment op to a clip's frames (T, 3, H, W) in [0, 1]. `sign` (+1 or -1) is the
    direction of a shear, translation or rotation and, where `s.enhance` has two factors, picks
    one (+1: the larger); None draws it (only for the ops that use it)."""
    h, w = x.shape[-2:]
    if sign is None and (
        name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
        or (name in ("color", "contrast", "brightness", "sharpness") and len(s.enhance) > 1)
    ):
        sign = _random_sign()
    factor = s.enhance[-1] if sign is None or sign > 0 else s.enhance[0]
    direction = 1.0 if sign is None else sign  # drawn above for every op that has a direction
    if name == "shear_x":
        return _affine(x, torch.tensor([[1, direction * s.shear, 0], [0, 1, 0]], dtype=x.dtype), s.affine_fill)
    if name == "shear_y":
        return _affine(x, torch.tensor([[1, 0, 0], [direction * s.shear, 1, 0]], dtype=x.dtype), s.affine_fill)
    if name == "translate_x":
        return _affine(x, torch.tensor([[1, 0, direction * s.translate * w], [0, 1, 0]], dtype=x.dtype), s.affine_fill)
    if name == "translate_y":
        return _affine(x, torch.tensor([[1, 0, 0], [0, 1, direction * s.translate * h]], dtype=x.dtype), s.affine_fill)
    if name == "rotate":
        a = math.radians(direction * s.rotate)
        rot = torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]], dtype=x.dtype)
        return _affine(x, rot, s.affine_fill)
    if name == "posterize":
        return KE.posterize(x, s.posterize_bits)
    if name == "solarize":
        return KE.solarize(x, thresholds=s.solarize_threshold)
    if name == "color":
        return _blend(x, KE.adjust_saturation(x, 0.0), factor)
    if name == "contrast":
        mean = KC.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True) if x.shape[-3] == 3 else x.mean()
        return _blend(x, mean.expand_as(x), factor)
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if name == "sharpness":
        return KE.sharpness(x, factor).clamp(0, 1)
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return KE.equalize(x)
    if name == "invert":
        return 1.0 - x
    if name == "cutout":
        return _cutout(x, s.cutout, s.cutout_fill)
    raise ValueError(f"unknown RandAugment op {name!r}")


RANDAUGMENT_OPS = (
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "posterize",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "autocontrast",
    "equalize",
    "invert",
    "cutout",
)


def strong_augment(
    clips: torch.Tensor, *, num_ops: int = 2, magnitude: float = 9.0, preset: str = "mmaction"
) -> torch.Tensor:
    """RandAugment with one draw per clip: (B, 3, T, H, W) 0-255 -> same shape, 0-255.

    Each clip gets `num_ops` distinct ops of `preset` at `magnitude` (of 10), the same on all of
    its frames, each with its own random direction (the authors' code draws those once, when the
    pipeline is built); draws come from torch's global generator (seeded per epoch by the loop)."""
    strengths = op_strengths(preset, magnitude)
    out = torch.empty_like(clips, dtype=torch.float32)
    for b in range(clips.shape[0]):
        x = clips[b].float().div(255.0).permute(1, 0, 2, 3)  # (T, 3, H, W) in [0, 1]
        for i in torch.randperm(len(RANDAUGMENT_OPS))[:num_ops].tolist():
            x = _op(RANDAUGMENT_OPS[i], x, strengths)
        out[b] = x.clamp(0, 1).permute(1, 0, 2, 3) * 255.0
    return out


def make_views(
    frames: torch.Tensor,
    spec: InputSpec,
    *,
    strong: bool,
    num_ops: int = 2,
    magnitude: float = 9.0,
    preset: str = "mmaction",
):
    """Loader clips (B, K, 3, T, H, W) uint8 -> normalized weak RGB and TG, and, if `strong`,
    strong RGB and TG drawn independently for each modality."""
    rgb, tg = split_modalities(frames)
    out = {"rgb": normalize(rgb, spec), "tg": normalize(tg, spec)}
    if strong:
        out["rgb_strong"] = normalize(strong_augment(rgb, num_ops=num_ops, magnitude=magnitude, preset=preset), spec)
        out["tg_strong"] = normalize(strong_augment(tg, num_ops=num_ops, magnitude=magnitude, preset=preset), spec)
    return out
