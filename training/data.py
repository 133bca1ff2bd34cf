"""Datasets: list files and the folder layout, labeled-split making, and the clip datasets.

List file lines (label = 0-based class index, -1 = unknown; an unlabeled list may omit it):
    relative/path.ext label              this project's lists (`prepare`) and MMAction2 video lists
    relative/path num_frames label       MMAction2 rawframe lists: VideoSSL's published splits as
                                         the authors use them (`Class/v_Name 120 7`)
    relative/path                        unlabeled
A path may come without its extension and relative to another folder than the dataset root
(VideoSSL's `Class/v_Name` for `UCF-101/Class/v_Name.avi`): `ListResolver` finds the file.
Folder layout: ROOT/labeled/<class>/*, ROOT/unlabeled/**/*, ROOT/val/<class>/*, classes sorted
by name; names may hold spaces (nothing is written to a list file), dot-names are skipped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from training.config import ConfigError, DataConfig
from training.video import (
    VideoDecodeError,
    VideoProbe,
    clip_span,
    open_video,
    probe_video,
    read_frames,
    tg_frame_pairs,
    train_clip_indices,
)
from training.views import InputSpec, decode_test_views

log = logging.getLogger(__name__)

MAX_REPLACEMENTS = 10
# what a folder dataset lists as videos: every container the server accepts, and MPEG program streams
VIDEO_EXTENSIONS = (
    (".mp4", ".m4v", ".mov", ".3gp", ".3g2")  # mp4/mov family: phones, cameras, downloads
    + (".mkv", ".webm")  # Matroska: browser recordings, downloads
    + (".avi",)  # webcams, older cameras
    + (".ts", ".mts", ".m2ts")  # MPEG-TS: camcorders (AVCHD), broadcast captures
    + (".gif", ".mpg", ".mpeg")
)


@dataclass(frozen=True)
class VideoItem:
    path: str  # relative to the dataset root
    label: int  # -1 = unknown


@dataclass
class DataSplits:
    root: Path
    classes: list[str]
    labeled: list[VideoItem]
    unlabeled: list[VideoItem]
    val: list[VideoItem]
    source: str  # how the labeled split was obtained
    missing: dict[str, list[str]] = field(default_factory=dict)  # per set: list entries with no file


# ----------------------------------------------------------------------------- list files
def read_classes(path: Path) -> list[str]:
    if not path.is_file():
        raise ConfigError(f"class file not found: {path}")
    classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not classes:
        raise ConfigError(f"class file is empty: {path}")
    if len(classes) < 2:
        raise ConfigError(f"class file {path} names one class ({classes[0]}): a classifier needs at least two")
    return classes


def read_video_list(path: Path, *, num_classes: int, require_labels: bool) -> list[VideoItem]:
    """Read a list file in any of the formats above; paths are returned as written."""
    if not path.is_file():
        raise ConfigError(f"video list not found: {path}")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 3:
            raise ConfigError(
                f"{path}:{lineno}: expected 'path [num_frames] label', got {line!r} "
                "(paths with spaces and multi-label lines are not supported)"
            )
        label = -1
        if len(parts) >= 2:
            try:
                numbers = [int(p) for p in parts[1:]]
            except ValueError:
                raise ConfigError(
                    f"{path}:{lineno}: {' '.join(parts[1:])!r} is not "
                    f"{'a label' if len(parts) == 2 else 'a frame count and a label'} (integers)"
                ) from None
            if len(numbers) == 2 and numbers[0] < 0:
                raise ConfigError(f"{path}:{lineno}: frame count {numbers[0]} is negative")
            label = numbers[-1]
            if not -1 <= label < num_classes:
                raise ConfigError(f"{path}:{lineno}: label {label} outside 0..{num_classes - 1}")
        if require_labels and label < 0:
            raise ConfigError(f"{path}:{lineno}: a label is required in this list")
        items.append(VideoItem(parts[0].replace("\\", "/"), label))
    if not items:
        raise ConfigError(f"video list is empty: {path}")
    return items


def _strip_video_extension(path: str) -> str:
    stem, ext = os.path.splitext(path)
    return stem if ext.lower() in VIDEO_EXTENSIONS else path


class ListResolver:
    """Finds the video file a list entry names, under the dataset root.

    In order: the entry as a path relative to the root; the one known video (the training list
    read before) whose path, without its extension and compared case-insensitively, ends with the
    entry's (VideoSSL's `Class/v_Name` -> `UCF-101/Class/v_Name.avi`, K400's
    `label/id.mp4` -> `train/label/id.mkv`); a file of that name, with any video extension and
    in any case, in the entry's folder under the root or under one of its top-level folders."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._suffixes: dict[str, str | None] = {}  # lowercase path suffix without extension -> path (None: ambiguous)
        self._listings: dict[Path, tuple[dict[str, str], dict[str, str]] | None] = {}
        self._prefixes: list[str] | None = None

    def add_known(self, paths) -> None:
        for path in paths:
            parts = _strip_video_extension(path).lower().split("/")
            for i in range(len(parts)):
                key = "/".join(parts[i:])
                if self._suffixes.setdefault(key, path) != path:
                    self._suffixes[key] = None

    def _listing(self, folder: Path):
        if folder not in self._listings:
            names: dict[str, str] = {}
            stems: dict[str, str] = {}
            if folder.is_dir():
                for name in sorted(os.listdir(folder)):
                    names.setdefault(name.lower(), name)
                    if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                        stems.setdefault(os.path.splitext(name)[0].lower(), name)
                self._listings[folder] = (names, stems)
            else:
                self._listings[folder] = None
        return self._listings[folder]

    def resolve(self, entry: str) -> str | None:
        """The path (relative to the root) of the file `entry` names, or None if there is none."""
        entry = entry.replace("\\", "/").removeprefix("./")
        if (self.root / entry).is_file():
            return entry
        known = self._suffixes.get(_strip_video_extension(entry).lower())
        if known is not None:
            return known
        parent, _, base = entry.rpartition("/")
        if self._prefixes is None:
            self._prefixes = [""] + sorted(p.name + "/" for p in self.root.iterdir() if p.is_dir())
        for prefix in self._prefixes:
            listing = self._listing(self.root / (prefix + parent))
            if listing is None:
                continue
            names, stems = listing
            name = names.get(base.lower()) or stems.get(_strip_video_extension(base).lower())
            if name is not None and (self.root / prefix / parent / name).is_file():
                return f"{prefix}{parent}/{name}" if parent else f"{prefix}{name}"
        return None

    def resolve_items(self, items: list[VideoItem]) -> tuple[list[VideoItem], list[str]]:
        """Items with their paths resolved, and the entries that name no file (kept as written:
        training counts them as unreadable; the dry run lists them)."""
        out, missing = [], []
        for it in items:
            path = self.resolve(it.path)
            if path is None:
                missing.append(it.path)
                path = it.path
            out.append(VideoItem(path, it.label))
        return out, missing


def _class_key(name: str) -> str:
    return name.lower().replace(" ", "_")


def check_labels_follow_folders(items: list[VideoItem], classes: list[str], list_name: str) -> None:
    """A list whose video folders are class names must label each video with that folder's class
    in classes.txt; anything else is a list of another class order, or 1-based (an error)."""
    index = {_class_key(c): i for i, c in enumerate(classes)}
    wrong = []
    for it in items:
        folder = it.path.rsplit("/", 2)[-2] if it.path.count("/") else ""
        expected = index.get(_class_key(folder))
        if expected is not None and it.label >= 0 and it.label != expected:
            wrong.append(f"{it.path} has label {it.label}, its folder is class {expected} ({classes[expected]})")
    if wrong:
        raise ConfigError(
            f"{list_name}: {len(wrong)} of {len(items)} labels disagree with the class of their folder "
            f"in classes.txt (another class order, or 1-based labels?), e.g. {'; '.join(wrong[:3])}"
        )


def write_video_list(path: Path, items: list[VideoItem]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{it.path} {it.label}\n" for it in items))


# ----------------------------------------------------------------------------- folder layout
def _videos_under(folder: Path) -> list[Path]:
    """The videos under `folder`, in linked folders too (each real folder once, so a link back up
    the tree is no loop). None on a dot-name path (.ipynb_checkpoints/, macOS's ._clip.mp4
    resource forks): tool clutter, never a class or a video."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # a folder linked twice: the first name
        found += [
            Path(top, f)
            for f in files
            if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_EXTENSIONS and os.path.isfile(Path(top, f))
        ]
    return sorted(found)


def unread_folder_videos(root: Path) -> list[str]:
    """Videos under a folder dataset that its layout does not read: beside labeled/, unlabeled/
    and val/, or in labeled/ or val/ but outside a class folder."""
    if not root.is_dir():
        return []

    def is_video(p: Path) -> bool:
        return not p.name.startswith(".") and p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()

    unread: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == "unlabeled":
            continue
        if entry.name in ("labeled", "val") and entry.is_dir():  # their own files, outside a class folder
            unread += [p for p in sorted(entry.iterdir()) if is_video(p)]
        elif entry.is_dir():
            unread += _videos_under(entry)
        elif is_video(entry):
            unread.append(entry)
    return [p.relative_to(root).as_posix() for p in unread]


# folder names other layouts use for the three this one reads
LAYOUT_SYNONYMS = {
    "labeled": "labeled",
    "labelled": "labeled",
    "train": "labeled",
    "training": "labeled",
    "unlabeled": "unlabeled",
    "unlabelled": "unlabeled",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "val",
    "eval": "val",
}


def _layout_hint(root: Path) -> str:
    """What to rename or move in a folder without labeled/: split folders under other names
    (train/, Labeled/, validation/), or class folders right under the root (ROOT/<class>/*, as
    many datasets ship)."""
    if not root.is_dir():
        return ""
    folders = _class_folders(root)
    renames = [
        f"{name}/ to {LAYOUT_SYNONYMS[name.lower()]}/"
        for name in folders
        if name.lower() in LAYOUT_SYNONYMS
        and name != LAYOUT_SYNONYMS[name.lower()]
        and not (root / LAYOUT_SYNONYMS[name.lower()]).is_dir()
    ]
    if renames:
        return f"; rename {', '.join(renames)} (the layout: labeled/<class>/, unlabeled/, val/<class>/)"
    holding = [name for name in folders if name.lower() not in LAYOUT_SYNONYMS and _videos_under(root / name)]
    if not holding:
        return ""
    names = ", ".join(holding[:5]) + (", ..." if len(holding) > 5 else "")
    return (
        f"; it has {len(holding)} folders with videos ({names}): if they are classes, move them into "
        "labeled/, videos without a label into unlabeled/, and a few of each class into val/<class>/ "
        "to measure accuracy"
    )


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder_layout(root: Path) -> tuple[list[str], list[VideoItem], list[VideoItem], list[VideoItem]]:
    """ROOT/labeled/<class>/*, ROOT/unlabeled/**/*, ROOT/val/<class>/* -> classes, labeled, unlabeled-only, val."""
    labeled_dir = root / "labeled"
    if not labeled_dir.is_dir():
        raise ConfigError(
            f"folder dataset {root}: missing {labeled_dir} (expected labeled/<class>/videos){_layout_hint(root)}"
        )
    classes = _class_folders(labeled_dir)
    if not classes:
        raise ConfigError(f"folder dataset {root}: no class folders under {labeled_dir}")
    if len(classes) < 2:
        raise ConfigError(
            f"folder dataset {root}: one class folder under {labeled_dir} ({classes[0]}): a classifier "
            "needs at least two (labeled/<class>/ for each action)"
        )

    def per_class(split_dir: Path) -> list[VideoItem]:
        items = []
        for label, name in enumerate(classes):
            for p in _videos_under(split_dir / name):
                items.append(VideoItem(p.relative_to(root).as_posix(), label))
        unknown = [name for name in _class_folders(split_dir) if name not in classes]
        if unknown:
            folded = {c.casefold(): c for c in classes}
            near = [f"{u} (labeled/ has {folded[u.casefold()]})" for u in unknown if u.casefold() in folded]
            raise ConfigError(
                f"{split_dir}: class folders not in labeled/: {', '.join(unknown)}"
                + (f"; names must match exactly, case included: {', '.join(near)}" if near else "")
            )
        return items

    labeled = per_class(labeled_dir)
    unlabeled = [VideoItem(p.relative_to(root).as_posix(), -1) for p in _videos_under(root / "unlabeled")]
    val = per_class(root / "val") if (root / "val").is_dir() else []
    if not labeled:
        others = sorted({p.suffix.lower() for p in labeled_dir.rglob("*") if p.is_file() and p.suffix})
        raise ConfigError(
            f"folder dataset {root}: no videos under {labeled_dir}"
            + (f" (files ending {', '.join(others)} are not read as videos)" if others else "")
            + f"; videos end {' '.join(sorted(VIDEO_EXTENSIONS))}"
        )
    return classes, labeled, unlabeled, val


# ----------------------------------------------------------------------------- splits
def make_labeled_split(
    items: list[VideoItem], *, num_classes: int, ratio: float = 0.0, per_class: int = 0, seed: int = 0
) -> list[VideoItem]:
    """Draw the labeled subset: `per_class` videos of each class, or `ratio` of each class (>= 1)."""
    rng = random.Random(seed)
    by_class: dict[int, list[VideoItem]] = {c: [] for c in range(num_classes)}
    for it in items:
        if it.label < 0:
            raise ConfigError(f"cannot draw a labeled split: {it.path} has no label in the training list")
        by_class[it.label].append(it)
    chosen = []
    for members in by_class.values():
        k = per_class if per_class else max(1, round(ratio * len(members)))
        chosen += rng.sample(members, min(k, len(members))) if members else []
    return sorted(chosen, key=lambda it: it.path)


def resolve_splits(cfg: DataConfig, run_dir: Path | None, *, is_main: bool = True) -> DataSplits:
    """The labeled, unlabeled and val sets of a run; a drawn split is saved into the run folder
    (and reused from there on resume) so the run can be repeated exactly."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: dataset folder not found: {root}")
    if cfg.format == "folder":
        classes, labeled, unlabeled_only, val = read_folder_layout(root)
        # the unlabeled set is the whole training set, labeled videos included (authors' code)
        return DataSplits(root, classes, labeled, labeled + unlabeled_only, val, "folder layout")

    lists = ListReader(root, read_classes(root / cfg.classes))
    missing = lists.missing
    train = lists.read("train", cfg.train_list, require_labels=False) if cfg.train_list else []
    unlabeled = lists.read("unlabeled", cfg.unlabeled_list, require_labels=False) if cfg.unlabeled_list else train
    if not cfg.unlabeled_list and train:
        missing["unlabeled"] = missing["train"]
    val = lists.read("val", cfg.val_list, require_labels=True) if cfg.val_list else []
    if not unlabeled:
        raise ConfigError("data.train_list / data.unlabeled_list: no training videos configured")
    labeled, source = labeled_set(cfg, lists, train, run_dir / "splits" / "labeled.txt" if run_dir else None, is_main)
    if not labeled:
        raise ConfigError("no labeled training videos: set data.labeled_list, labeled_ratio or labeled_per_class")
    return DataSplits(root, lists.classes, labeled, unlabeled, val, source, {k: v for k, v in missing.items() if v})


class ListReader:
    """Reads a run's video lists under one root, resolving each entry to a file (see
    ListResolver) and recording per list the entries with no file."""

    def __init__(self, root: Path, classes: list[str]) -> None:
        self.root = root
        self.classes = classes
        self.resolver = ListResolver(root)
        self.missing: dict[str, list[str]] = {}

    def read(self, key: str, rel: str, *, require_labels: bool) -> list[VideoItem]:
        items, self.missing[key] = self.resolver.resolve_items(
            read_video_list(self.root / rel, num_classes=len(self.classes), require_labels=require_labels)
        )
        check_labels_follow_folders(items, self.classes, f"data.{key}_list {rel}")
        absent = set(self.missing[key])
        # files found through one list help resolve the entries of the next
        self.resolver.add_known(it.path for it in items if it.path not in absent)
        return items


def labeled_set(
    cfg: DataConfig, lists: ListReader, train: list[VideoItem], saved: Path | None, is_main: bool
) -> tuple[list[VideoItem], str]:
    """The labeled set and where it came from: the given list, the run's saved split, a split
    drawn now (saved to `saved` by the main process), or every labeled training video."""
    missing = lists.missing
    if cfg.labeled_list:
        return lists.read("labeled", cfg.labeled_list, require_labels=True), f"given list {cfg.labeled_list}"
    if saved is not None and saved.is_file():
        return lists.read("labeled", str(saved.resolve()), require_labels=True), f"saved split {saved}"
    if cfg.labeled_ratio or cfg.labeled_per_class:
        labeled = make_labeled_split(
            train,
            num_classes=len(lists.classes),
            ratio=cfg.labeled_ratio,
            per_class=cfg.labeled_per_class,
            seed=cfg.split_seed,
        )
        absent = set(missing.get("train", []))
        missing["labeled"] = [it.path for it in labeled if it.path in absent]
        source = (
            f"drawn: {cfg.labeled_per_class} per class"
            if cfg.labeled_per_class
            else f"drawn: ratio {cfg.labeled_ratio}"
        ) + f", seed {cfg.split_seed}"
        if saved is not None and is_main:
            save_drawn_split(saved, labeled, cfg, num_train=len(train))
        return labeled, source
    labeled = [it for it in train if it.label >= 0]
    labeled_paths = {it.path for it in labeled}
    missing["labeled"] = [p for p in missing.get("train", []) if p in labeled_paths]
    return labeled, "every labeled video of the training list"


def save_drawn_split(saved: Path, labeled: list[VideoItem], cfg: DataConfig, *, num_train: int) -> None:
    """The drawn labeled list and how it was drawn, so a resumed run reads the same videos."""
    write_video_list(saved, labeled)
    (saved.parent / "split.json").write_text(
        json.dumps(
            {
                "ratio": cfg.labeled_ratio,
                "per_class": cfg.labeled_per_class,
                "seed": cfg.split_seed,
                "train_list": cfg.train_list,
                "num_labeled": len(labeled),
                "num_train": num_train,
            },
            indent=2,
        )
    )


# ----------------------------------------------------------------------------- sampling
class SeededSampler(Sampler):
    """Yields (index, seed) pairs: a shuffled shard of the dataset for this process, and a seed
    per sample derived from (base seed, epoch, index). Augmentation then depends only on these,
    not on which worker decodes which sample, so resuming at an epoch boundary is exact."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0, min_per_rank: int = 1):
        self.size, self.rank, self.world_size, self.seed = size, rank, world_size, seed
        # every process gets the same count (DDP steps in lockstep); a set smaller than one
        # batch per process is repeated rather than producing no batch at all
        self.per_rank = max(size // world_size, min_per_rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        needed = self.per_rank * self.world_size
        order = (order * -(-needed // self.size))[:needed]
        for i in order[self.rank :: self.world_size]:
            yield i, (self.seed, self.epoch, i)


# ----------------------------------------------------------------------------- datasets
def random_resized_box(h: int, w: int, *, area: list[float], ratio: list[float], rng: np.random.Generator):
    """A crop box (top, left, height, width) covering `area` of the frame with aspect in `ratio`.

    Sampled with the sample's own generator (not torch's global one) so every box is
    reproducible; after 10 rejected draws it falls back to the largest centred box."""
    total = h * w
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = total * rng.uniform(area[0], area[1])
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def weak_geometric(frames: np.ndarray, spec: InputSpec, rng: np.random.Generator) -> torch.Tensor:
    """Weak augmentation shared by every frame passed in (RGB frames and their TG successors):
    resize short side to `short_side`, random resized crop to `crop_size`, horizontal flip.

    (N, H, W, 3) uint8 -> (N, 3, crop, crop) uint8. The box is drawn in the resized frame and
    mapped back, so resize + crop + resize happens as one interpolation."""
    n, h, w, _ = frames.shape
    scale = spec.short_side / min(h, w)
    rh, rw = round(h * scale), round(w * scale)
    top, left, ch, cw = random_resized_box(rh, rw, area=spec.crop_area, ratio=spec.crop_ratio, rng=rng)
    t0, l0 = int(top / scale), int(left / scale)
    t1, l1 = max(t0 + 1, min(h, round((top + ch) / scale))), max(l0 + 1, min(w, round((left + cw) / scale)))
    x = torch.from_numpy(frames[:, t0:t1, l0:l1]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(spec.crop_size, spec.crop_size), mode="bilinear", align_corners=False, antialias=True)
    if spec.flip and rng.random() < 0.5:
        x = x.flip(-1)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def decode_short_side(spec: InputSpec) -> int:
    """The short side training decodes a larger video at: the smallest random crop (the least
    area, the most elongated ratio) still has `crop_size` source pixels along its short side,
    so nothing the crop could show is lost (119 px for 56-px crops of area 0.3 or more, 915 px
    for the paper's 224-px crops of area 0.08 or more)."""
    least_side = math.sqrt(spec.crop_area[0] / max(spec.crop_ratio[1], 1 / spec.crop_ratio[0]))
    return max(spec.short_side, math.ceil(spec.crop_size / least_side))


def frames_per_clip(spec: InputSpec, *, tg_stride: int, tg_spread: bool) -> int:
    """Frames one training clip covers, those its temporal gradient is taken from included; a
    shorter video's clips wrap around to its first frame."""
    return clip_span(spec.clip_len, spec.interval) + tg_tail(tg_stride=tg_stride, tg_spread=tg_spread)


def tg_tail(*, tg_stride: int, tg_spread: bool) -> int:
    """Frames kept free after a training clip for its temporal gradient: `tg_stride` (the frames
    after each sampled one), none for slow TG spread over the clip's own span."""
    return 0 if tg_spread and tg_stride > 1 else tg_stride


def training_clip_rows(
    num_frames: int, spec: InputSpec, rng: np.random.Generator, *, tg_stride: int, tg_spread: bool
) -> list[np.ndarray]:
    """The frame indices of one random training clip, a row per group of T frames: [clip, the
    frames t + tg_stride], or [clip, first, second frame of each TG frame] for slow TG spread
    over the clip (`tg_spread`, which needs `tg_stride` > 1)."""
    idx = train_clip_indices(
        num_frames,
        clip_len=spec.clip_len,
        interval=spec.interval,
        rng=rng,
        tail=tg_tail(tg_stride=tg_stride, tg_spread=tg_spread),
    )
    first, second = tg_frame_pairs(idx, stride=tg_stride, num_frames=num_frames, spread=tg_spread)
    return [idx, first, second] if tg_spread else [idx, second]


def augment_training_clip(frames: np.ndarray, rows: int, spec: InputSpec, rng: np.random.Generator) -> torch.Tensor:
    """The frames of `training_clip_rows` (rows x T, H, W, 3) uint8 -> (rows, 3, T, crop, crop) uint8,
    one weak view (crop box and flip) for all of them."""
    x = weak_geometric(frames, spec, rng)  # (rows*T, 3, S, S)
    t = spec.clip_len
    return x.view(rows, t, 3, *x.shape[-2:]).permute(0, 2, 1, 3, 4).contiguous()


class TrainClips(Dataset):
    """Training clips: each item is one random clip of a video and the frames its temporal
    gradient is taken from, with one weak augmentation applied to all (same crop box and flip).

    item -> {"frames": (K, 3, T, crop, crop) uint8, "label": int, "index": int, "skipped": [...]}
    K = 2 [frames t, frames t + tg_stride] (fast TG, or slow TG with `tg_spread` off), or K = 3
    [frames t, then the two frames of each TG frame] for slow TG spread over the clip."""

    def __init__(
        self,
        items: list[VideoItem],
        root: Path,
        spec: InputSpec,
        *,
        tg_stride: int,
        decode_threads: int = 1,
        tg_spread: bool = False,
    ):
        self.items, self.root, self.spec = items, Path(root), spec
        self.tg_stride, self.decode_threads = tg_stride, decode_threads
        self.tg_spread = tg_spread and tg_stride > 1
        self.decode_short_side = decode_short_side(spec)
        # videos this process could not open, by path: not opened again (loader workers live for
        # the whole run). Only failures to open, which happen before any random draw, so a
        # resumed run, whose workers start without this memory, draws the same clips.
        self._unopenable: dict[str, str] = {}
        # each video's probe (which reader, its rotation and length), once per process
        self._probes: dict[str, VideoProbe | None] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key
        rng = np.random.default_rng(list(seed))
        skipped = []
        # an unreadable video is replaced by another one (so every process keeps the same batch
        # size, which DDP's collectives need) and reported through "skipped" each time
        for attempt in range(MAX_REPLACEMENTS):
            item = self.items[(index + attempt * 7919) % len(self.items)]
            path = str(self.root / item.path)
            error = self._unopenable.get(path)
            if error is None:
                try:
                    if path not in self._probes:
                        self._probes[path] = probe_video(path)
                    reader = open_video(
                        path,
                        num_threads=self.decode_threads,
                        probe=self._probes[path],
                        max_short_side=self.decode_short_side,
                    )
                except VideoDecodeError as exc:
                    error = self._unopenable[path] = str(exc)
            if error is not None:
                skipped.append((item.path, error))
                continue
            try:
                rows = training_clip_rows(
                    len(reader), self.spec, rng, tg_stride=self.tg_stride, tg_spread=self.tg_spread
                )
                frames = read_frames(reader, np.concatenate(rows), name=path)
                break
            except VideoDecodeError as exc:
                skipped.append((item.path, str(exc)))
        else:
            raise RuntimeError(
                f"{MAX_REPLACEMENTS} unreadable videos in a row near {self.items[index].path}: "
                f"is data.root right? Last error: {skipped[-1][1]}"
            )
        x = augment_training_clip(frames, len(rows), self.spec, rng)  # (K, 3, T, S, S)
        return {"frames": x, "label": item.label, "index": index, "skipped": skipped}


class EvalClips(Dataset):
    """One clip per video with eval preprocessing: the quick validation (1 clip, centre crop)
    and PreciseBN's batches, or the full 30 views with `quick=False`."""

    def __init__(
        self,
        items: list[VideoItem],
        root: Path,
        spec: InputSpec,
        *,
        tg_stride: int | None,
        quick: bool = True,
        decode_threads: int = 1,
        tg_spread: bool = False,
    ):
        self.items, self.root, self.spec = items, Path(root), spec
        self.tg_stride, self.quick, self.decode_threads = tg_stride, quick, decode_threads
        self.tg_spread = tg_spread

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:
            d = decode_test_views(
                str(self.root / item.path),
                self.spec,
                tg_stride=self.tg_stride,
                quick=self.quick,
                tg_spread=self.tg_spread,
                num_threads=self.decode_threads,
            )
        except VideoDecodeError as exc:
            return {"skipped": [(item.path, str(exc))]}
        out = {"views": d.views.to(torch.uint8), "label": item.label, "index": index, "skipped": []}
        if d.successors is not None:
            out["successors"] = d.successors.to(torch.uint8)
        return out


def collate_skipping(samples: list[dict]) -> dict[str, Any]:
    """Stack the good samples; gather every sample's skipped (path, error) pairs to be counted."""
    good = [s for s in samples if "label" in s]
    batch: dict[str, Any] = {"skipped": [pair for s in samples for pair in s["skipped"]]}
    if good:
        for key in good[0]:
            if key == "skipped":
                continue
            values = [s[key] for s in good]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


def worker_init(_worker_id: int) -> None:
    # several loader processes share 2-16 cores with the training process: one thread each
    torch.set_num_threads(1)
