"""The embedded default dataset: synthetic videos whose classes differ only by motion.

Each class is one motion of a main object. Everything else is drawn at random per video and
independently of the class: the object's shape, size, orientation, position, colours and
texture, the background colour and texture, 1-3 distractors that drift and wander, camera
jitter and pixel noise. A single frame therefore says nothing about the class; only how frames
change does, which is the regime where temporal gradient helps.

The motions come in families (`FAMILIES`) of 4 classes that a dataset can be made of:
    directions    move right / left / up / down
    turns         rotate clockwise / counter-clockwise, zoom in / out
    paths         circle clockwise / counter-clockwise, a straight diagonal, a zigzag
    speeds        one direction (right) at four speed bands
    periodic      horizontal oscillation, vertical bounce, pulsating size, swinging angle
    accelerating  translation speeding up / slowing down, spin speeding up / slowing down
    combined      moving right while rotating cw / ccw or zooming in / out
Without a family a dataset takes the first `num_classes` of `MOTIONS` (the first 10 are the
original classes: directions, turns, oscillation and bounce). Families whose classes are
mirror images of each other (directions, turns, paths, combined) need horizontal flips off.

Motion is visible in any window of the video: translation wraps around the frame (the world
is a torus), and the other motions are periodic, so the object never simply leaves the frame.

Layout written under ROOT (see `generate`):
    classes.txt, synthetic.json
    labeled/<class>/<class>_NNN.mp4     the first `labeled_per_class` training videos
    unlabeled/<class>_NNN.mp4           the other training videos
    val/<class>/<class>_NNN.mp4
    lists/train.txt, lists/labeled.txt, lists/val.txt
    lists/unlabeled.txt                 every training video (labeled ones too) with its true
                                        label, for monitoring pseudo-label accuracy only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

# Order matters only for picking the first `num_classes`; labels follow the sorted names so
# that list files and the sorted folder layout agree.
MOTIONS = (
    "move_right",
    "move_left",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "zoom_in",
    "zoom_out",
    "oscillate_horizontal",
    "bounce_vertical",
    # Appended, never inserted: a video's generator is seeded with its motion's index here.
    "circle_cw",
    "circle_ccw",
    "move_down_left",
    "zigzag_right",
    "move_right_speed1",
    "move_right_speed2",
    "move_right_speed3",
    "move_right_speed4",
    "pulsate",
    "swing",
    "accelerate_right",
    "decelerate_right",
    "spin_up_cw",
    "spin_down_cw",
    "move_right_rotate_cw",
    "move_right_rotate_ccw",
    "move_right_zoom_in",
    "move_right_zoom_out",
)
# Datasets of one kind of motion: within a family the classes differ only by motion, and the
# static draws (appearance, start position, orientation, size) are the same for all of them.
FAMILIES: dict[str, tuple[str, ...]] = {
    "directions": ("move_right", "move_left", "move_up", "move_down"),  # what the default recipe was tuned on
    "turns": ("rotate_cw", "rotate_ccw", "zoom_in", "zoom_out"),
    "paths": ("circle_cw", "circle_ccw", "move_down_left", "zigzag_right"),
    "speeds": ("move_right_speed1", "move_right_speed2", "move_right_speed3", "move_right_speed4"),
    "periodic": ("oscillate_horizontal", "bounce_vertical", "pulsate", "swing"),
    "accelerating": ("accelerate_right", "decelerate_right", "spin_up_cw", "spin_down_cw"),
    "combined": ("move_right_rotate_cw", "move_right_rotate_ccw", "move_right_zoom_in", "move_right_zoom_out"),
}
SHAPES = ("square", "disc", "triangle", "cross")
FPS = 25
SPLIT_IDS = {"train": 0, "val": 1}
# Bump when rendering or encoding changes, so an old dataset is not mistaken for a new one.
GENERATOR_VERSION = 2

# Motion strength: speeds, turn rates and zoom rates are drawn in ranges multiplied by this,
# chosen so a small 3D CNN picks the motion up within the CPU default run's few hundred steps.
MOTION_SCALE = 1.6

# Size range of the main object (both the static size and the zoom sweep), as a scale factor.
SCALE_MIN, SCALE_MAX = 0.6, 1.5


def class_names(num_classes: int, family: str = "") -> list[str]:
    """The class names of a dataset, sorted (label = position).

    family "": the first `num_classes` motions of MOTIONS. A family name: that family's
    motions, all of them when num_classes is 0, else its first `num_classes`.
    """
    if not family:
        if not 1 <= num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes must be in 1..{len(MOTIONS)}, got {num_classes}")
        return sorted(MOTIONS[:num_classes])
    if family not in FAMILIES:
        raise ValueError(f"unknown motion family {family!r}; known: {', '.join(FAMILIES)}")
    motions = FAMILIES[family]
    if not 0 <= num_classes <= len(motions):
        raise ValueError(
            f"family {family!r} has {len(motions)} motions ({', '.join(motions)}): num_classes must be "
            f"0 (all of them) or 1..{len(motions)} (its first N), got {num_classes}"
        )
    return sorted(motions[: num_classes or len(motions)])


def video_rng(seed: int, split: str, motion: str, index: int) -> np.random.Generator:
    """The generator of one video, so its content depends on nothing else (not on workers)."""
    return np.random.default_rng([seed, SPLIT_IDS[split], MOTIONS.index(motion), index])


# ----------------------------------------------------------------------------- rendering
def _contrasting_colour(rng: np.random.Generator, others: list[np.ndarray], min_dist: float) -> np.ndarray:
    best, best_dist = np.zeros(3, np.float32), -1.0  # replaced on the first draw (any distance > -1)
    for _ in range(64):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        dist = min((float(np.linalg.norm(colour - o)) for o in others), default=np.inf)
        if dist >= min_dist:
            return colour
        if dist > best_dist:
            best, best_dist = colour, dist
    return best


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled coarse Gaussian noise in [-1, 1]-ish, shape (height, width)."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    gy = np.linspace(0, cells, height, dtype=np.float32)[:, None]
    gx = np.linspace(0, cells, width, dtype=np.float32)[None, :]
    y0 = np.minimum(gy.astype(int), cells - 1)
    x0 = np.minimum(gx.astype(int), cells - 1)
    fy, fx = gy - y0, gx - x0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return np.clip((top * (1 - fy) + bottom * fy) / 1.5, -1, 1)


def _background(rng: np.random.Generator, colour: np.ndarray, height: int, width: int, size: float) -> np.ndarray:
    """A static textured background, shape (height, width, 3), float32 0-255."""
    kind = rng.choice(("flat", "stripes", "checker", "noise"))
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    if kind == "flat":
        pattern = np.zeros((height, width), np.float32)
    elif kind == "stripes":
        theta, cycles = rng.uniform(0, np.pi), rng.uniform(1.5, 4.0)
        pattern = np.sin(
            2 * np.pi * cycles * (xs * np.cos(theta) + ys * np.sin(theta)) / size + rng.uniform(0, 2 * np.pi)
        )
    elif kind == "checker":
        cell = rng.uniform(0.15, 0.35) * size
        pattern = ((np.floor(xs / cell) + np.floor(ys / cell)) % 2) * 2 - 1
    else:
        pattern = _smooth_noise(rng, height, width, int(rng.integers(3, 9)))
    amplitude = rng.uniform(5, 30) * rng.uniform(0.5, 1.0, 3).astype(np.float32)
    return colour + pattern[..., None].astype(np.float32) * amplitude


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field of a unit-radius shape: > 0 inside, in units of the radius."""
    if shape == "disc":
        return 1 - np.sqrt(u * u + v * v)
    if shape == "square":
        return 0.85 - np.maximum(np.abs(u), np.abs(v))
    if shape == "triangle":
        # Equilateral, edges at distance 0.55 from the centre along three normals 120° apart.
        d: np.ndarray | None = None
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            edge = 0.55 - (u * np.cos(angle) + v * np.sin(angle))
            d = edge if d is None else np.minimum(d, edge)
        assert d is not None
        return d
    if shape == "cross":
        arm = 0.35
        horizontal = np.minimum(1 - np.abs(u), arm - np.abs(v))
        vertical = np.minimum(arm - np.abs(u), 1 - np.abs(v))
        return np.maximum(horizontal, vertical)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A two-tone pattern (0/1) attached to the object, so rotation and zoom show inside it."""
    kind = rng.choice(("stripes", "checker", "noise"))
    if kind == "stripes":
        theta, cycles = rng.uniform(0, np.pi), rng.uniform(1.0, 2.0)
        return np.sin(np.pi * 2 * cycles * (u * np.cos(theta) + v * np.sin(theta)) + rng.uniform(0, 2 * np.pi)) > 0
    if kind == "checker":
        cells = rng.uniform(1.5, 3.0)
        return (np.floor(cells * u) + np.floor(cells * v)) % 2 > 0
    cells = 6
    bits = rng.random((cells, cells)) < 0.5
    iu = np.clip(((u + 1) * (cells / 2)).astype(np.int64), 0, cells - 1)
    iv = np.clip(((v + 1) * (cells / 2)).astype(np.int64), 0, cells - 1)
    return bits[iv, iu]


def _trajectory(motion: str, rng: np.random.Generator, t: np.ndarray, width: int, height: int, size: float):
    """Per-frame centre x, y (pixels), angle (radians) and scale of the main object, each (T,).

    Start position, orientation and static size are drawn from the same distributions for
    every class, so the first frame carries no class information.
    """
    cx = np.full_like(t, rng.uniform(0, width))
    cy = np.full_like(t, rng.uniform(0, height))
    angle = np.full_like(t, rng.uniform(0, 2 * np.pi))
    log_scale = np.full_like(t, rng.uniform(np.log(SCALE_MIN), np.log(SCALE_MAX)))
    if motion in ("move_right", "move_left", "move_up", "move_down"):
        speed = MOTION_SCALE * rng.uniform(0.015, 0.035) * size  # pixels per frame; the frame wraps around
        sign = 1 if motion in ("move_right", "move_down") else -1
        if motion in ("move_right", "move_left"):
            cx = cx + sign * speed * t
        else:
            cy = cy + sign * speed * t
    elif motion in ("rotate_cw", "rotate_ccw"):
        # ≤ 10°/frame keeps 4 frames under 45°, so the 90°-symmetric shapes don't alias.
        omega = MOTION_SCALE * np.deg2rad(rng.uniform(4.0, 10.0))
        # With y pointing down, a growing angle turns the object clockwise on screen.
        angle = angle + (omega if motion == "rotate_cw" else -omega) * t
    elif motion in ("zoom_in", "zoom_out"):
        # A sawtooth in log-scale: steady growth (or shrinking) that restarts every period.
        rate = MOTION_SCALE * rng.uniform(0.035, 0.06)
        span = np.log(SCALE_MAX / SCALE_MIN)
        period = span / rate
        ramp = rate * np.remainder(t + rng.uniform(0, period), period)
        log_scale = np.log(SCALE_MIN) + ramp if motion == "zoom_in" else np.log(SCALE_MAX) - ramp
    elif motion == "oscillate_horizontal":
        amplitude, period = rng.uniform(0.15, 0.3) * size, rng.uniform(20, 36)
        cx = cx + amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    elif motion == "bounce_vertical":
        amplitude, period = rng.uniform(0.25, 0.4) * size, rng.uniform(20, 36)
        cy = cy - amplitude * np.abs(np.sin(np.pi * t / period + rng.uniform(0, np.pi)))
    elif motion in MOTIONS:
        # The later motions take one draw here and their parameters from a child generator, so
        # one `rng` gives all of them the same object, background and first frame.
        dx, dy, turn, log_scale = _later_motion(motion, np.random.default_rng(rng.integers(2**63)), t, size, log_scale)
        cx, cy, angle = cx + dx, cy + dy, angle + turn
    else:
        raise ValueError(f"unknown motion {motion!r}; known: {', '.join(MOTIONS)}")
    return cx, cy, angle, np.exp(log_scale)


def _since_start(values: np.ndarray) -> np.ndarray:
    """Change since frame 0, exactly 0 there: the first frame stays the static draw."""
    return values - values[0]


def _integrate(rate: np.ndarray) -> np.ndarray:
    """Displacement since frame 0 of a per-frame rate (the rate of frame t moves t to t+1)."""
    return np.concatenate([np.zeros(1, rate.dtype), np.cumsum(rate[:-1])])


def _ramped_rate(rng: np.random.Generator, t: np.ndarray, low: float, high: float, rising: bool) -> np.ndarray:
    """A per-frame rate that grows (or shrinks) steadily in log space between `low` and
    `high`, then starts over; random phase. 4-5.5 % a frame doubles (halves) it within a
    15-frame clip; a sweep of 4-5x lasts 25-40 frames, so a clip holds at most one restart,
    a jump the other way that is nothing like the steady change."""
    span = np.log(high / low)
    ramp = np.remainder(rng.uniform(0, span) + rng.uniform(0.04, 0.055) * t, span)
    return np.exp(np.log(low) + ramp) if rising else np.exp(np.log(high) - ramp)


def _triangle(s: np.ndarray, half: float) -> np.ndarray:
    """A triangle wave of slope ±1 that turns every `half` frames."""
    return np.abs(np.remainder(s, 2 * half) - half)


def _reflect_log_scale(log_scale: np.ndarray) -> np.ndarray:
    """Fold a log-size back into the size range at its ends (values inside are kept exactly)."""
    lo, hi = np.log(SCALE_MIN), np.log(SCALE_MAX)
    y = np.remainder(log_scale - lo, 2 * (hi - lo))
    folded = lo + np.where(y > hi - lo, 2 * (hi - lo) - y, y)
    return np.where((log_scale >= lo) & (log_scale <= hi), log_scale, folded).astype(log_scale.dtype)


def _wrapped_zoom(log_scale: np.ndarray, change: np.ndarray, grow: bool) -> np.ndarray:
    """Steady zoom from the static size by `change` (>= 0, log units) that restarts at the other
    end of the size range; exact at frame 0, where change is 0."""
    lo, hi = np.log(SCALE_MIN), np.log(SCALE_MAX)
    span = hi - lo
    if grow:
        value = log_scale + change
        return value - span * np.maximum(0, np.floor((value - hi) / span) + 1)
    value = log_scale - change
    return value + span * np.maximum(0, np.floor((lo - value) / span) + 1)


def _later_motion(motion: str, rng: np.random.Generator, t: np.ndarray, size: float, log_scale: np.ndarray):
    """Offsets of x, y and angle since frame 0 and the log-size per frame of a motion after the
    original ten. Every offset is 0 at frame 0, so the first frame is the static draw of
    `_trajectory` whatever the motion. Rates stay in the original motions' ranges: speeds up to
    0.056 x size px/frame, turns up to 16°/frame (under 45° between frames sampled 2 apart,
    where 90°-symmetric shapes would alias)."""
    zero = np.zeros_like(t)
    dx, dy, turn = zero, zero, zero
    if motion in ("circle_cw", "circle_ccw"):
        radius, period, phase = rng.uniform(0.12, 0.2) * size, rng.uniform(24, 36), rng.uniform(0, 2 * np.pi)
        # With y pointing down, a growing angle goes clockwise on screen; a 15-frame clip
        # covers 40-60 % of a turn, so its curvature (hence its sense) always shows.
        theta = phase + (1 if motion == "circle_cw" else -1) * 2 * np.pi * t / period
        dx, dy = radius * _since_start(np.cos(theta)), radius * _since_start(np.sin(theta))
    elif motion == "move_down_left":
        step = rng.uniform(0.024, 0.048) * size / np.sqrt(2)  # along each axis
        dx, dy = -step * t, step * t
    elif motion == "zigzag_right":
        vx, vy = rng.uniform(0.015, 0.025) * size, rng.uniform(0.025, 0.035) * size
        half = rng.uniform(5, 7)  # frames per leg: any 15-frame clip turns at least twice
        dx, dy = vx * t, vy * _since_start(_triangle(t + rng.uniform(0, 2 * half), half))
    elif motion.startswith("move_right_speed"):
        # Bands e^0.5 apart and 1.2 wide, so neighbours never overlap (1.37x between them);
        # band 4 is as fast as the fastest move_right.
        band = int(motion.removeprefix("move_right_speed")) - 1
        dx = rng.uniform(0.009, 0.0108) * np.exp(0.5 * band) * size * t
    elif motion == "pulsate":
        # Sizes change at 0.07 log units per frame on average (zoom: 0.056-0.096); the peak to
        # peak of 0.6-0.9 spans most of the size range, folded back at its ends.
        amplitude, period, phase = rng.uniform(0.3, 0.45), rng.uniform(18, 28), rng.uniform(0, 2 * np.pi)
        log_scale = _reflect_log_scale(log_scale + amplitude * _since_start(np.sin(2 * np.pi * t / period + phase)))
    elif motion == "swing":
        amplitude, period, phase = np.deg2rad(rng.uniform(30, 50)), rng.uniform(20, 32), rng.uniform(0, 2 * np.pi)
        turn = amplitude * _since_start(np.sin(2 * np.pi * t / period + phase))
    elif motion in ("accelerate_right", "decelerate_right"):
        dx = _integrate(_ramped_rate(rng, t, 0.012 * size, 0.056 * size, motion == "accelerate_right"))
    elif motion in ("spin_up_cw", "spin_down_cw"):
        turn = _integrate(_ramped_rate(rng, t, np.deg2rad(4), np.deg2rad(16), motion == "spin_up_cw"))
    elif motion in ("move_right_rotate_cw", "move_right_rotate_ccw"):
        dx = rng.uniform(0.02, 0.035) * size * t
        omega = MOTION_SCALE * np.deg2rad(rng.uniform(4.0, 10.0))  # as rotate_cw / rotate_ccw
        turn = (omega if motion == "move_right_rotate_cw" else -omega) * t
    elif motion in ("move_right_zoom_in", "move_right_zoom_out"):
        dx = rng.uniform(0.02, 0.035) * size * t
        rate = MOTION_SCALE * rng.uniform(0.035, 0.06)  # as zoom_in / zoom_out
        log_scale = _wrapped_zoom(log_scale, rate * t, grow=motion == "move_right_zoom_in")
    else:
        raise ValueError(f"no trajectory for motion {motion!r}")
    return (dx.astype(np.float32), dy.astype(np.float32), turn.astype(np.float32), log_scale.astype(np.float32))


def _jitter(rng: np.random.Generator, frames: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer camera offsets per frame: a bounded random walk in [-limit, limit]."""
    steps = rng.integers(-1, 2, (frames, 2))
    offsets = np.zeros((frames, 2), np.int64)
    for i in range(1, frames):
        offsets[i] = np.clip(offsets[i - 1] + steps[i], -limit, limit)
    return offsets[:, 0], offsets[:, 1]


def _object_coords(xs, ys, cx, cy, angle, radius, width: int, height: int):
    """Object-local coordinates (units of the radius) of every pixel, each (T, H, W).

    Offsets are taken modulo the frame size, so the object is drawn at its nearest copy on
    the torus: that is what makes translation wrap around.
    """
    dx = np.remainder(xs - cx[:, None, None] + width / 2, width) - width / 2
    dy = np.remainder(ys - cy[:, None, None] + height / 2, height) - height / 2
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    return (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r


def _coverage(distance: np.ndarray, radius: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The pixels an object touches and their opacity (N, 1); edges antialiased over ~1 pixel.

    Objects cover a small part of the video, so blending only these pixels is much cheaper.
    """
    alpha = np.clip(distance * radius[:, None, None] + 0.5, 0, 1)
    where = np.nonzero(alpha)
    return where, alpha[where][:, None]


def _camera_view(
    rng: np.random.Generator, bg_colour: np.ndarray, *, frames: int, width: int, height: int, clutter: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The background as the camera sees it, (T, H, W, 3) float32, and the camera's x and y
    offsets per frame (float32)."""
    size = float(min(width, height))
    # The camera jitters by cropping a moving window out of a slightly larger background.
    margin = max(1, round(0.03 * size)) if clutter else 0
    jx, jy = _jitter(rng, frames, margin) if clutter else (np.zeros(frames, np.int64),) * 2
    background = _background(rng, bg_colour, height + 2 * margin, width + 2 * margin, size)
    video = np.stack(
        [
            background[margin + jy[i] : margin + jy[i] + height, margin + jx[i] : margin + jx[i] + width]
            for i in range(frames)
        ]
    )  # (T, H, W, 3) float32
    return video, jx.astype(np.float32), jy.astype(np.float32)


def render_video(
    motion: str, rng: np.random.Generator, *, frames: int = 48, width: int = 96, height: int = 72, clutter: bool = True
) -> np.ndarray:
    """Render one video of `motion`, (T, H, W, 3) uint8 RGB.

    clutter=False drops the distractors, camera jitter and pixel noise (for tests that need a
    clean signal); the object, background and motion stay random.
    """
    size = float(min(width, height))  # every length is relative to the short side
    t = np.arange(frames, dtype=np.float32)
    xs = np.arange(width, dtype=np.float32)[None, None, :]
    ys = np.arange(height, dtype=np.float32)[None, :, None]

    object_colour = rng.uniform(0, 255, 3).astype(np.float32)
    stripe_colour = _contrasting_colour(rng, [object_colour], 70)
    bg_colour = _contrasting_colour(rng, [object_colour, stripe_colour], 60)

    video, jxf, jyf = _camera_view(rng, bg_colour, frames=frames, width=width, height=height, clutter=clutter)

    if clutter:
        for _ in range(int(rng.integers(1, 4))):
            radius = np.full_like(t, rng.uniform(0.035, 0.07) * size)
            shape = ("disc", "square")[int(rng.integers(2))]
            colour = _contrasting_colour(rng, [bg_colour], 50)
            start = rng.uniform(0, 1, 2) * (width, height)
            drift = rng.normal(0, 0.006 * size, 2)
            walk = np.cumsum(rng.normal(0, 0.012 * size, (frames, 2)), axis=0)
            path = start + drift * t[:, None] + walk
            u, v = _object_coords(
                xs,
                ys,
                (path[:, 0] - jxf).astype(np.float32),
                (path[:, 1] - jyf).astype(np.float32),
                np.zeros_like(t),
                radius,
                width,
                height,
            )
            where, alpha = _coverage(_shape_distance(shape, u, v), radius)
            video[where] = video[where] * (1 - alpha) + alpha * colour

    cx, cy, angle, scale = _trajectory(motion, rng, t, width, height, size)
    radius = (rng.uniform(0.16, 0.24) * size * scale).astype(np.float32)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    u, v = _object_coords(xs, ys, cx - jxf, cy - jyf, angle, radius, width, height)
    where, alpha = _coverage(_shape_distance(shape, u, v), radius)
    colour = np.where(_texture(rng, u[where], v[where])[:, None], stripe_colour, object_colour)  # (N, 3)
    video[where] = video[where] * (1 - alpha) + alpha * colour

    if clutter:
        video += rng.standard_normal(video.shape, dtype=np.float32) * np.float32(rng.uniform(2, 6))
    return np.rint(np.clip(video, 0, 255)).astype(np.uint8)


def write_mp4(path: str | os.PathLike, video: np.ndarray, fps: int = FPS) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264/yuv420p mp4, reproducibly."""
    import av  # imported here: only generation needs PyAV

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.thread_count = 1
        # mbtree=0: x264's macroblock-tree rate control made different bitstreams from identical
        # frames in this build even with threads=1 (measured); without it output is repeatable.
        stream.options = {"crf": "18", "preset": "superfast", "threads": "1", "x264-params": "mbtree=0"}
        for i, frame in enumerate(video):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def _write_video(task: tuple) -> None:
    path, motion, split, index, seed, frames, width, height, clutter = task
    video = render_video(
        motion, video_rng(seed, split, motion, index), frames=frames, width=width, height=height, clutter=clutter
    )
    write_mp4(path, video)


# ----------------------------------------------------------------------------- the dataset
def _plan(classes: list[str], train_per_class: int, labeled_per_class: int, val_per_class: int):
    """Every video as (relative path, label, split, motion, index), in list-file order."""
    videos = []
    for label, name in enumerate(classes):
        for i in range(train_per_class):
            folder = f"labeled/{name}/" if i < labeled_per_class else "unlabeled/"
            videos.append((f"{folder}{name}_{i:03d}.mp4", label, "train", name, i))
    for label, name in enumerate(classes):
        for i in range(val_per_class):
            videos.append((f"val/{name}/{name}_{i:03d}.mp4", label, "val", name, i))
    return videos


def _list_text(rows) -> str:
    return "".join(f"{path} {label}\n" for path, label, *_ in rows)


def _expected_files(videos) -> list[str]:
    lists = ["classes.txt", "synthetic.json"] + [f"lists/{n}.txt" for n in ("train", "labeled", "unlabeled", "val")]
    return lists + [path for path, *_ in videos]


def _is_complete(root: Path, arguments: dict, videos) -> bool:
    """True if `root` holds this exact dataset; ValueError if it holds a different one."""
    meta = root / "synthetic.json"
    stored = json.loads(meta.read_text())
    if stored.get("arguments") != arguments:
        old = stored.get("arguments", {})
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in arguments.items() if old.get(k) != v)
        raise ValueError(
            f"{root} holds a synthetic dataset generated with different arguments ({diff}); "
            "delete it or choose another root"
        )
    return all((root / p).is_file() for p in _expected_files(videos))


def _remove_stale_partials(root: Path) -> None:
    """Delete temporary folders left by generations that were killed (their process is gone)."""
    prefix = f".{root.name}.partial-"
    for partial in root.parent.glob(f"{prefix}*"):
        try:
            pid = int(partial.name[len(prefix) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            continue  # not ours to judge: a foreign name, or a live process of another user


@dataclass(frozen=True)
class DatasetSpec:
    """What a generated dataset is (`generate`'s arguments, less where it goes and how many
    processes render it): its classes, videos per class and split, and every video's frames,
    size, seed and clutter."""

    num_classes: int
    family: str
    train_per_class: int
    labeled_per_class: int
    val_per_class: int
    frames: int
    width: int
    height: int
    seed: int
    clutter: bool

    def classes(self) -> list[str]:
        return class_names(self.num_classes, self.family)

    def check(self) -> None:
        """ValueError naming the first argument out of its range."""
        self.classes()
        if not 1 <= self.labeled_per_class <= self.train_per_class:
            raise ValueError(
                f"need 1 <= labeled_per_class <= train_per_class, got {self.labeled_per_class}, {self.train_per_class}"
            )
        if self.val_per_class < 1:
            raise ValueError(f"val_per_class must be >= 1, got {self.val_per_class}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even and >= 16 (yuv420p), got {self.width}x{self.height}")

    def identity(self) -> dict:
        """The arguments synthetic.json records: a folder holds this dataset when they are equal."""
        arguments: dict[str, Any] = dict(
            num_classes=self.num_classes,
            train_per_class=self.train_per_class,
            labeled_per_class=self.labeled_per_class,
            val_per_class=self.val_per_class,
            frames=self.frames,
            width=self.width,
            height=self.height,
            seed=self.seed,
            fps=FPS,
            generator_version=GENERATOR_VERSION,
        )
        if not self.clutter:  # only when off, so datasets generated before this option keep their identity
            arguments["clutter"] = False
        if self.family:  # likewise only when set; num_classes 0 and the family's size make the same dataset
            arguments.update(num_classes=len(self.classes()), family=self.family)
        return arguments

    def videos(self) -> list[tuple]:
        return _plan(self.classes(), self.train_per_class, self.labeled_per_class, self.val_per_class)


def generate(
    root: str | os.PathLike,
    *,
    num_classes: int = 10,
    family: str = "",
    train_per_class: int = 40,
    labeled_per_class: int = 4,
    val_per_class: int = 10,
    frames: int = 48,
    width: int = 96,
    height: int = 72,
    seed: int = 0,
    clutter: bool = True,
    workers: int = 1,
) -> dict:
    """Write the synthetic motion dataset under `root` (idempotent); return a summary.

    The classes are `class_names(num_classes, family)`: the first `num_classes` motions, or
    with a family its motions (num_classes 0: all of them). Re-running with the same arguments
    on a complete dataset does nothing. A dataset made with other arguments raises ValueError.
    clutter=False leaves out the distractors, camera jitter and pixel noise; object and
    background colours, textures and shapes stay random. The dataset is built in a temporary
    sibling folder and renamed into place, so an interrupted run never leaves a half dataset at `root`.
    workers > 1 renders in `spawn`ed processes: call it under `if __name__ == "__main__":`.
    Summary keys: root, classes, train, labeled, unlabeled, val (video counts), generated
    (False when the dataset was already there), seconds.
    """
    start = time.perf_counter()
    spec = DatasetSpec(
        num_classes=num_classes,
        family=family,
        train_per_class=train_per_class,
        labeled_per_class=labeled_per_class,
        val_per_class=val_per_class,
        frames=frames,
        width=width,
        height=height,
        seed=seed,
        clutter=clutter,
    )
    spec.check()
    if seed < 0 or workers < 1:
        raise ValueError(f"seed must be >= 0 and workers >= 1, got seed={seed}, workers={workers}")
    root, classes, videos = Path(root), spec.classes(), spec.videos()
    train = [v for v in videos if v[2] == "train"]
    summary = dict(
        root=str(root),
        classes=classes,
        train=len(train),
        labeled=len(classes) * labeled_per_class,
        unlabeled=len(train),
        val=len(videos) - len(train),
    )
    if _already_generated(root, spec, videos):
        return dict(summary, generated=False, seconds=time.perf_counter() - start)
    _build_dataset(root, spec, videos, workers)
    return dict(summary, generated=True, seconds=time.perf_counter() - start)


def _already_generated(root: Path, spec: DatasetSpec, videos: list[tuple]) -> bool:
    """True if `root` holds this dataset complete; False if it is to be (re)generated there;
    ValueError if `root` holds another dataset or files of its own."""
    if (root / "synthetic.json").is_file():
        if _is_complete(root, spec.identity(), videos):
            return True
        print(f"{root}: synthetic dataset incomplete (files missing); regenerating it")
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} exists and is not a synthetic dataset (no synthetic.json); refusing to write into it")
    return False


def _build_dataset(root: Path, spec: DatasetSpec, videos: list[tuple], workers: int) -> None:
    """Render the videos and write the lists in a temporary sibling folder, then rename it to `root`."""
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    # Unique per process and call: concurrent generations (ranks, threads) never share one.
    partial = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()  # not tempfile.mkdtemp: its 0700 mode would become the dataset's
    try:
        _render_videos(partial, spec, videos, workers)
        _write_lists(partial, spec, videos)
        _move_into_place(partial, root, spec.identity(), videos)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _render_videos(folder: Path, spec: DatasetSpec, videos: list[tuple], workers: int) -> None:
    for path, *_ in videos:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
    tasks = [
        (str(folder / path), motion, split, index, spec.seed, spec.frames, spec.width, spec.height, spec.clutter)
        for path, _, split, motion, index in videos
    ]
    if workers == 1:
        for task in tasks:
            _write_video(task)
    else:
        # spawn: workers must not inherit a parent's torch/OpenMP threads or decoder state.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_write_video, tasks, chunksize=max(1, len(tasks) // (8 * workers))))


def _write_lists(folder: Path, spec: DatasetSpec, videos: list[tuple]) -> None:
    """classes.txt, the list files and synthetic.json, written last: its presence marks a finished dataset."""
    classes, train = spec.classes(), [v for v in videos if v[2] == "train"]
    (folder / "lists").mkdir()
    (folder / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    (folder / "lists/train.txt").write_text(_list_text(train))
    (folder / "lists/labeled.txt").write_text(_list_text(v for v in train if v[4] < spec.labeled_per_class))
    (folder / "lists/unlabeled.txt").write_text(_list_text(train))
    (folder / "lists/val.txt").write_text(_list_text(v for v in videos if v[2] == "val"))
    (folder / "synthetic.json").write_text(
        json.dumps(dict(arguments=spec.identity(), classes=classes), indent=2) + "\n"
    )


def _move_into_place(partial: Path, root: Path, arguments: dict, videos) -> None:
    if (root / "synthetic.json").is_file() and _is_complete(root, arguments, videos):
        return  # another process (e.g. another rank) finished the same dataset meanwhile: keep it
    old = None
    if root.exists() and any(root.iterdir()):
        # Our own incomplete dataset: set it aside first, since rename can't replace a full folder.
        old = partial.with_name(partial.name + "-old")
        os.replace(root, old)
    try:
        os.replace(partial, root)  # atomic; also replaces an empty folder
    except OSError:
        if not ((root / "synthetic.json").is_file() and _is_complete(root, arguments, videos)):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def generate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training generate", description="Write the synthetic motion-video dataset (idempotent)."
    )
    parser.add_argument("--root", required=True, help="dataset folder to create")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help=f"the first N motions, 1..{len(MOTIONS)} (default 10); with --family: its first N "
        "(default 0: all of them)",
    )
    parser.add_argument(
        "--family",
        default="",
        choices=["", *FAMILIES],
        metavar="NAME",
        help="a dataset of one motion family: "
        + "; ".join(f"{name} ({', '.join(motions)})" for name, motions in FAMILIES.items()),
    )
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--labeled-per-class", type=int, default=4)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-clutter",
        dest="clutter",
        action="store_false",
        help="no distractors, camera jitter or pixel noise (appearance stays random)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes rendering videos (default: all CPU cores); output does not depend on it",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = generate_parser()
    args = parser.parse_args(argv)
    try:
        num_classes = args.num_classes if args.num_classes is not None else 0 if args.family else 10
        summary = generate(
            args.root,
            num_classes=num_classes,
            family=args.family,
            train_per_class=args.train_per_class,
            labeled_per_class=args.labeled_per_class,
            val_per_class=args.val_per_class,
            frames=args.frames,
            width=args.width,
            height=args.height,
            seed=args.seed,
            clutter=args.clutter,
            workers=args.workers,
        )
    except ValueError as exc:
        parser.error(str(exc))
    state = f"generated in {summary['seconds']:.1f} s" if summary["generated"] else "already present, left as is"
    print(
        f"synthetic dataset at {summary['root']}: {len(summary['classes'])} classes, "
        f"{summary['train']} training videos ({summary['labeled']} labeled), {summary['val']} val; {state}"
    )
    return 0
