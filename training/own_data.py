"""The recipe of a run on the user's own videos: `make train DATA_ROOT=DIR` with no config.

The base comes from the machine: `configs/own_data_gpu.yaml` (the full R3D-18 at the paper's
settings) where training runs on CUDA, `configs/own_data_cpu.yaml` (the small network the CPU
default was measured with) otherwise. On top of it a few keys follow from the data:

- `loss.threshold` from the number of classes: 0.3 is the paper's for 101 classes (30x chance);
  with few classes nearly every prediction passes it, so the threshold rises toward the 0.8
  measured on the 4-class synthetic default (log-linear in the number of classes between them);
- `input.flip` from `data.mirror_invariant` (off unless the user says a mirrored video keeps its
  class: a flipped "swipe left" is a "swipe right");
- the input size from the videos' resolution: never larger than the base recipe's (the machine's
  budget), smaller when the videos are;
- `input.interval` scaled with the videos' frame rate (the base is set for 25 fps), and shortened
  when the videos are too short for a clip;
- how often to validate, recompute BatchNorm statistics and checkpoint: a set number of times
  per run, whatever the number of epochs the step budget becomes.

Keys the user sets with --set are the user's: they win over every choice here, and the plan says
so. The resolved config is saved in the run folder like any other.
"""

from __future__ import annotations

import math
import os
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.config import Config, ConfigError, ModelConfig, load_config, parse_overrides
from training.data import resolve_splits, tg_tail
from training.distributed import training_device
from training.schedule import resolve_schedule
from training.video import VideoDecodeError, open_video

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CPU_BASE, GPU_BASE = CONFIGS / "own_data_cpu.yaml", CONFIGS / "own_data_gpu.yaml"
BASE_FPS = 25.0  # the frame rate the base recipes' `input.interval` is set for
# (classes, threshold) anchors: the synthetic default's measured 0.8 and the paper's 0.3
THRESHOLD_ANCHORS = ((4, 0.8), (101, 0.3))
THRESHOLD_RANGE = (0.3, 0.95)
# times per run: quick validations, PreciseBN passes, checkpoints
EVALS_PER_RUN, PRECISE_BN_PER_RUN, CHECKPOINTS_PER_RUN = 20, 10, 40


def _seconds(s: float) -> str:
    return f"{s:.2g} s" if s < 10 else f"{s:.0f} s"


@dataclass
class VideoStats:
    """Resolution, frame rate and length of a sample of the training videos."""

    probed: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    short_sides: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)
    fps: list[float] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    opened_paths: list[str] = field(default_factory=list)

    @property
    def opened(self) -> int:
        return len(self.frames)

    def median(self, values: list) -> float:
        return float(statistics.median(values)) if values else 0.0

    def summary(self) -> str:
        if not self.opened:
            return f"{self.probed} probed, none could be opened"
        (width, height), count = Counter(self.sizes).most_common(1)[0]
        size = f"{width}x{height}" + (f" ({count} of them)" if count < self.opened else "")
        return (
            f"{self.opened} of {self.probed} probed: {size} most common "
            f"(short side {min(self.short_sides)}-{max(self.short_sides)}), "
            f"{self.median(self.fps):.3g} fps median, {self.median(self.frames):.0f} frames "
            f"({_seconds(self.median_seconds())}) median, {min(self.frames)}-{max(self.frames)} frames"
        )

    def median_seconds(self) -> float:
        """The median duration of the opened videos that state a frame rate (0 when none does)."""
        return self.median([n / f for n, f in zip(self.frames, self.fps, strict=True) if f > 0])

    def read(self, root: Path, path: str) -> str | None:
        """Open one video with the training decoder and record its shape, frame rate and length;
        the decoder's error when it cannot be opened (recorded as unreadable)."""
        self.probed += 1
        try:
            reader = open_video(str(root / path))
            height, width = reader[0].shape[:2]
        except VideoDecodeError as exc:
            self.unreadable.append((path, str(exc)))
            return str(exc)
        self.sizes.append((int(width), int(height)))
        self.short_sides.append(int(min(width, height)))
        self.fps.append(float(reader.get_avg_fps() or 0.0))
        self.frames.append(len(reader))
        self.opened_paths.append(path)
        return None


def probe_videos(root: Path, paths: list[str], *, probe: int = 32, seed: int = 0) -> VideoStats:
    """Open up to `probe` of `paths` (-1: all) with the training decoder and read their shape."""
    unique = sorted(set(paths))
    chosen = unique if probe < 0 or probe >= len(unique) else random.Random(seed).sample(unique, probe)
    stats = VideoStats()
    for path in chosen:
        stats.read(root, path)
    return stats


@dataclass
class Choice:
    key: str
    value: object
    reason: str
    user_value: object = None  # set when the user's own --set overrides this choice

    def override(self) -> str:
        return f"{self.key}={_as_written(self.value)}"


def _as_written(value: object) -> str:
    """A value as YAML and --set write it (true, not True)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass
class OwnDataRecipe:
    base: Path
    device: str
    classes: int
    videos: VideoStats
    choices: list[Choice]

    def describe(self) -> list[str]:
        lines = [f"base: {self.base.relative_to(CONFIGS.parent)} (training on {self.device})"]
        for c in self.choices:
            value = _as_written(c.value)
            if c.user_value is not None:
                user = _as_written(c.user_value)
                lines.append(f"{c.key} = {user} (your --set; the recipe would choose {value}: {c.reason})")
            else:
                lines.append(f"{c.key} = {value}: {c.reason}")
        return lines

    def notes(self, cfg: Config) -> list[str]:
        """What the run should not be expected to learn: the measured limits of the CPU recipe's
        small network, unless the user has widened it."""
        if self.device != "cpu" or cfg.model.width >= ModelConfig().width:
            return []
        return [
            f"the CPU recipe's small network (R3D-18 of width {cfg.model.width}, {cfg.input.crop_size} px "
            "crops) learns where things move: on cluttered synthetic videos with 4 labeled per class it "
            "reached 97 % on directions of travel in 2,400 steps, but stayed below 50 % on rotation, zoom, "
            "circular, periodic and accelerating motion (README: generalization benchmark); such classes "
            "need more labeled videos per class and more steps, and change of speed a larger network "
            "(the full R3D-18 is the default where a CUDA GPU trains)"
        ]


def confidence_threshold(num_classes: int) -> float:
    """log-linear in the number of classes through THRESHOLD_ANCHORS, clipped to THRESHOLD_RANGE."""
    (c0, t0), (c1, t1) = THRESHOLD_ANCHORS
    t = t0 + (t1 - t0) * math.log(max(num_classes, 1) / c0) / math.log(c1 / c0)
    return round(min(max(t, THRESHOLD_RANGE[0]), THRESHOLD_RANGE[1]), 2)


def _size_choices(base: Config, videos: VideoStats) -> list[Choice]:
    """The input size: the base recipe's, or the videos' own when they are smaller."""
    spec = base.input
    short = int(videos.median(videos.short_sides))
    if not videos.opened or short >= spec.short_side:
        seen = f"the videos' median short side is {short} px" if videos.opened else "no video could be probed"
        return [
            Choice(
                "input.short_side",
                spec.short_side,
                f"the recipe's size on this machine ({seen}; "
                f"{spec.crop_size} px training crops, {spec.test_crop} px test crops)",
            )
        ]
    side = max(16, short // 8 * 8)
    crop = max(8, round(side * spec.crop_size / spec.short_side / 4) * 4)
    test_crop = max(8, round(side * spec.test_crop / spec.test_short_side / 4) * 4)
    reason = f"the videos' median short side is {short} px, below the recipe's {spec.short_side}: " + (
        "trained at their own size, not upscaled"
        if side == short
        else f"trained at {side} px, a multiple of 8 at most their size"
        if side < short
        else f"upscaled to {side} px, the smallest size this recipe trains at"
    )
    return [
        Choice("input.short_side", side, reason),
        Choice("input.crop_size", crop, reason),
        Choice("input.test_short_side", side, reason),
        Choice("input.test_crop", test_crop, reason),
    ]


def _interval_choice(base: Config, videos: VideoStats) -> list[Choice]:
    """Frames between sampled frames: the same time span as at 25 fps, within the videos' length."""
    spec = base.input
    if not videos.opened:
        return []
    fps, frames = videos.median(videos.fps) or BASE_FPS, int(videos.median(videos.frames))
    interval = max(1, round(spec.interval * fps / BASE_FPS))
    reason = f"{spec.interval} at {BASE_FPS:g} fps, scaled to the videos' {fps:.3g} fps"
    # a clip within the median video, with the frames after it its temporal gradient takes
    tail = tg_tail(tg_stride=base.tg.stride, tg_spread=base.tg.slow == "spread")
    longest = max(1, (frames - tail - 1) // max(1, spec.clip_len - 1))
    if interval > longest or frames < spec.clip_len + tail:
        after = f" and {tail} after it for its temporal gradient" if tail else ""
        fits = (
            f"a clip of {spec.clip_len} frames{after} fits at interval {longest}"
            if frames >= spec.clip_len + tail
            else f"fewer than a clip's {spec.clip_len + tail} even at interval 1: clips wrap around"
        )
        interval, reason = longest, f"the median video has {frames} frame{'s' if frames != 1 else ''}: {fits}"
    return [Choice("input.interval", interval, reason)]


def _cadence_choices(base: Config, epochs: int) -> list[Choice]:
    out = []
    for key, times, what in (
        ("train.eval_every", EVALS_PER_RUN, "quick validations"),
        ("train.precise_bn_every", PRECISE_BN_PER_RUN, "PreciseBN passes"),
        ("train.checkpoint_every", CHECKPOINTS_PER_RUN, "checkpoints"),
    ):
        every = max(1, epochs // times)
        out.append(Choice(key, every, f"about {times} {what} over the run's {epochs} epochs"))
    return out


def resolve_own_data(data_root: str, user_sets: list[str], *, probe: int = 32) -> tuple[Config, OwnDataRecipe]:
    """The config of a run on the folder dataset at `data_root`, and what it chose and why."""
    root_set = [f"data.root={data_root}"]
    first = load_config(CPU_BASE, root_set + user_sets)
    device = training_device(first.train.device)
    base_path = GPU_BASE if device == "cuda" else CPU_BASE
    base = load_config(base_path, root_set + user_sets)
    try:
        splits = resolve_splits(base.data, None, is_main=False)  # reads the folders, writes nothing
    except ConfigError as exc:
        if (Path(base.data.root) / "labeled").is_dir():
            raise
        raise ConfigError(
            f"{exc} (a data root without a config is read in the folder layout; for list files "
            "pass a config, e.g. CONFIG=configs/ucf101_20.yaml)"
        ) from exc
    videos = probe_videos(
        splits.root, [it.path for it in splits.labeled + splits.unlabeled], probe=probe, seed=base.data.split_seed
    )

    n = len(splits.classes)
    choices = [
        Choice(
            "loss.threshold",
            confidence_threshold(n),
            f"{n} classes: log-linear in the number of classes through the paper's 0.3 at 101 and "
            f"0.8 measured at 4, within {THRESHOLD_RANGE[0]}-{THRESHOLD_RANGE[1]}",
        ),
        Choice(
            "input.flip",
            base.data.mirror_invariant,
            "data.mirror_invariant=true: the classes survive a mirror"
            if base.data.mirror_invariant
            else "off: a mirrored video may change class (say data.mirror_invariant=true if it never does)",
        ),
    ]
    choices += _size_choices(base, videos) + _interval_choice(base, videos)
    # the processes torchrun starts (WORLD_SIZE): each takes a shard, so epochs are shorter
    epochs = resolve_schedule(base, len(splits.unlabeled), int(os.environ.get("WORLD_SIZE", "1"))).epochs
    choices += _cadence_choices(base, epochs)

    user = dict(parse_overrides(user_sets))
    for c in choices:
        if c.key in user:
            c.user_value = user[c.key]
    ours = [c.override() for c in choices if c.user_value is None]
    cfg = load_config(base_path, root_set + ours + user_sets)
    return cfg, OwnDataRecipe(base=base_path, device=device, classes=n, videos=videos, choices=choices)
