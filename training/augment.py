"""Temporal gradient and the strong (RandAugment) view, batched on the training device.

The weak view (resize, random resized crop, flip) is applied in the loader processes to a
clip's frames and their successors together (`training.data.weak_geometric`); crop, flip
and bilinear resize are linear, so the TG taken here afterwards equals TG taken before them
up to rounding (METHOD.md).
"""
from __future__ import annotations

import math

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
    """Loader output (B, 2, 3, T, H, W) uint8 -> RGB and TG clips (B, 3, T, H, W), float 0-255."""
    rgb = frames[:, 0].float()
    return rgb, temporal_gradient(rgb, frames[:, 1])


# ----------------------------------------------------------------------------- RandAugment
# Kornia's RandAugment draws its operations once per call and a random sign per image; the
# method needs one draw per clip, identical on all of its frames, so the op table is written
# here over Kornia's functional ops. Maximum strengths follow the FixMatch/RandAugment pool.
def _signed(level: float) -> float:
    return level if torch.rand(()) < 0.5 else -level


def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    # PIL ImageEnhance semantics: factor 0 gives `degenerate`, 1 the image, >1 extrapolates
    return (degenerate + factor * (x - degenerate)).clamp(0, 1)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)


def _cutout(x: torch.Tensor, level: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    side = max(1, int(0.5 * level * min(h, w)))
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    y0, y1, x0, x1 = max(0, cy - side // 2), min(h, cy + side // 2 + 1), max(0, cx - side // 2), min(w, cx + side // 2 + 1)
    x = x.clone()
    x[..., y0:y1, x0:x1] = 0.5
    return x


def _affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Same 2x3 affine (about the image centre) on every frame; grey fill outside."""
    n, _, h, w = x.shape
    centre = torch.tensor([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=x.dtype, device=x.device)
    back = torch.tensor([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], dtype=x.dtype, device=x.device)
    full = torch.eye(3, dtype=x.dtype, device=x.device)
    full[:2] = matrix
    m = (back @ full @ centre)[:2].expand(n, 2, 3)
    return KG.warp_affine(x - 0.5, m, (h, w), mode="bilinear", padding_mode="zeros") + 0.5


def _op(name: str, x: torch.Tensor, level: float) -> torch.Tensor:
    """Apply one RandAugment op at `level` in [0, 1] to a clip's frames (T, 3, H, W) in [0, 1]."""
    h, w = x.shape[-2:]
    if name == "shear_x":
        return _affine(x, torch.tensor([[1, _signed(0.3 * level), 0], [0, 1, 0]], dtype=x.dtype))
    if name == "shear_y":
        return _affine(x, torch.tensor([[1, 0, 0], [_signed(0.3 * level), 1, 0]], dtype=x.dtype))
    if name == "translate_x":
        return _affine(x, torch.tensor([[1, 0, _signed(0.3 * level) * w], [0, 1, 0]], dtype=x.dtype))
    if name == "translate_y":
        return _affine(x, torch.tensor([[1, 0, 0], [0, 1, _signed(0.3 * level) * h]], dtype=x.dtype))
    if name == "rotate":
        a = math.radians(_signed(30.0 * level))
        return _affine(x, torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]], dtype=x.dtype))
    if name == "posterize":
        return KE.posterize(x, 8 - int(round(4 * level)))
    if name == "solarize":
        return KE.solarize(x, thresholds=1.0 - 0.5 * level)
    if name == "color":
        return _blend(x, KE.adjust_saturation(x, 0.0), 1 + _signed(0.9 * level))
    if name == "contrast":
        mean = KC.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True) if x.shape[-3] == 3 else x.mean()
        return _blend(x, mean.expand_as(x), 1 + _signed(0.9 * level))
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), 1 + _signed(0.9 * level))
    if name == "sharpness":
        return KE.sharpness(x, 1 + _signed(0.9 * level)).clamp(0, 1)
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return KE.equalize(x)
    if name == "invert":
        return 1.0 - x
    if name == "cutout":
        return _cutout(x, level)
    raise ValueError(f"unknown RandAugment op {name!r}")


RANDAUGMENT_OPS = (
    "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "posterize", "solarize",
    "color", "contrast", "brightness", "sharpness", "autocontrast", "equalize", "invert", "cutout",
)


def strong_augment(clips: torch.Tensor, *, num_ops: int = 2, magnitude: float = 10.0) -> torch.Tensor:
    """RandAugment with one draw per clip: (B, 3, T, H, W) 0-255 -> same shape, 0-255.

    Each clip gets `num_ops` distinct ops at `magnitude`/10 of their strength, the same on all
    of its frames; draws come from torch's global generator (seeded per epoch by the loop)."""
    level = magnitude / 10.0
    out = torch.empty_like(clips, dtype=torch.float32)
    for b in range(clips.shape[0]):
        x = clips[b].float().div(255.0).permute(1, 0, 2, 3)  # (T, 3, H, W) in [0, 1]
        for i in torch.randperm(len(RANDAUGMENT_OPS))[:num_ops].tolist():
            x = _op(RANDAUGMENT_OPS[i], x, level)
        out[b] = x.clamp(0, 1).permute(1, 0, 2, 3) * 255.0
    return out


def make_views(frames: torch.Tensor, spec: InputSpec, *, strong: bool, num_ops: int = 2, magnitude: float = 10.0):
    """Loader clips (B, 2, 3, T, H, W) uint8 -> normalized weak RGB and TG, and, if `strong`,
    strong RGB and TG drawn independently for each modality."""
    rgb, tg = split_modalities(frames)
    out = {"rgb": normalize(rgb, spec), "tg": normalize(tg, spec)}
    if strong:
        out["rgb_strong"] = normalize(strong_augment(rgb, num_ops=num_ops, magnitude=magnitude), spec)
        out["tg_strong"] = normalize(strong_augment(tg, num_ops=num_ops, magnitude=magnitude), spec)
    return out
