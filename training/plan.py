"""The plan of a training run, built without training: `python -m training train --dry-run`.

`build_plan` reads what a run would read (config, class file, lists or folders) and works out
what it would do: the data per set and class, files that are missing or cannot be opened,
steps, the learning rate over the run and the time on this machine. `format_plan` turns it into
the text the dry run prints. Neither writes anything: no run folder, no drawn split, no
generated dataset. Any caller that wants a plan before a run (a dry run, a run on the user's own
videos) builds one and prints it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import statistics
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from training.config import Config, ConfigError, config_from_dict, diff_configs
from training.data import DataSplits, VideoItem, frames_per_clip, resolve_splits, tg_tail, unread_folder_videos
from training.distributed import training_device
from training.evaluate import precise_bn_batch_size
from training.own_data import OwnDataRecipe, VideoStats
from training.schedule import Schedule, learning_rate, resolve_schedule, scaled_lr
from training.video import VideoDecodeError, open_video

TIMED_STEP_LIMIT_S = 10.0  # a predicted step up to this long is timed for real; longer ones are extrapolated
FEW_LABELS_PER_CLASS = 5  # fewer labeled videos than this in a class: a warning
# a note when the median training video lasts this long and spans this many training clips
LONG_VIDEO_SECONDS, LONG_VIDEO_CLIPS = 30.0, 10


@dataclass
class SetSummary:
    """One set of videos (labeled, unlabeled or val) as a run would read it."""

    name: str
    count: int
    per_class: list[int]  # videos per class index (unknown labels not counted)
    unknown_labels: int
    source: str
    missing: list[str] = field(default_factory=list)  # list entries with no file
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, error) among the probed
    probed: int = 0


@dataclass
class TimeEstimate:
    method: str  # "timed step" or "FLOP count / measured rate"
    device: str
    step_s: float  # one optimizer step after the supervised warm-up, per process
    warmup_step_s: float  # one step during it (no strong views when they are skipped there)
    total_s: float  # the training steps of the whole run (no data loading, PreciseBN or tests)
    detail: str


@dataclass
class TrainingPlan:
    cfg: Config
    source: str  # where the config came from (file and overrides)
    run: Path | None
    processes: int
    data_root: str
    classes: list[str]
    sets: list[SetSummary]
    schedule: Schedule | None  # None when the unlabeled set is empty or unknown
    base_lr: float
    lr_at_epoch: list[tuple[int, float]]
    time: TimeEstimate | None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recipe: OwnDataRecipe | None = None  # what the own-data default chose from the data and machine
    videos: VideoStats | None = None  # resolution, frame rate and length of a sample of the training videos

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch if self.schedule else 0

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps if self.schedule else 0


# ----------------------------------------------------------------------------- building
def build_plan(
    cfg: Config,
    *,
    run: Path | None = None,
    processes: int = 1,
    source: str = "",
    probe: int = 64,
    allow_missing: bool = False,
    estimate_time: bool = True,
    device: torch.device | None = None,
    seed: int = 0,
    recipe: OwnDataRecipe | None = None,
) -> TrainingPlan:
    """Everything a run of `cfg` would do, found without doing it. `probe`: videos per set
    opened with the training decoder to find unreadable files (-1: all, 0: none); `allow_missing`
    reports missing files without counting them as problems; `recipe`: the own-data default's
    choices, shown with the plan."""
    notes: list[str] = []
    problems: list[str] = []
    splits, classes, sets, videos = _read_data(
        cfg, run, probe=probe, seed=seed, recipe=recipe, notes=notes, problems=problems
    )
    _check_sets(cfg, sets, classes, allow_missing=allow_missing, notes=notes, problems=problems)
    if videos is not None:
        _check_video_length(cfg, videos, notes=notes)
    if splits is not None and "drawn" in splits.source and _is_paper_dataset(classes):
        notes.append(
            "labeled split drawn class-balanced; the paper used VideoSSL's published lists "
            "(point data.labeled_list at one to train on exactly those videos)"
        )
    if run is not None and (run / "config.yaml").is_file():
        _check_run_folder(cfg, run, notes=notes, problems=problems)

    num_unlabeled = next((s.count for s in sets if s.name == "unlabeled"), 0)
    schedule = resolve_schedule(cfg, num_unlabeled, processes) if num_unlabeled else None
    base_lr = scaled_lr(cfg, processes)
    estimate = None
    if estimate_time and schedule and classes:
        estimate = _estimate_time(cfg, len(classes), schedule, device=device, notes=notes)
    if processes > 1 and estimate is not None and estimate.device == "cpu":
        notes.append(f"time: measured in one process on this CPU; {processes} processes would share its cores")
    if schedule:
        _check_schedule(cfg, schedule, num_unlabeled, processes, notes=notes)
    if recipe is not None:
        notes += recipe.notes(cfg)
    return TrainingPlan(
        cfg=cfg,
        source=source,
        run=run,
        processes=processes,
        data_root=cfg.data.root,
        classes=classes,
        sets=sets,
        schedule=schedule,
        base_lr=base_lr,
        lr_at_epoch=_lr_at_epochs(cfg, schedule, base_lr) if schedule else [],
        time=estimate,
        notes=notes,
        problems=problems,
        recipe=recipe,
        videos=videos,
    )


def _read_data(
    cfg: Config,
    run: Path | None,
    *,
    probe: int,
    seed: int,
    recipe: OwnDataRecipe | None,
    notes: list[str],
    problems: list[str],
) -> tuple[DataSplits | None, list[str], list[SetSummary], VideoStats | None]:
    """The splits a run would read (None when they cannot be resolved or the synthetic dataset is
    still to be generated), the class names, one summary per set with its probed videos, and the
    training videos' statistics."""
    if cfg.data.synthetic and not _synthetic_ready(cfg):
        classes, sets = _synthetic_sets(cfg)
        notes.append(
            f"the synthetic dataset is not at {cfg.data.root} yet: training generates it first "
            "(the counts above are what it will hold)"
        )
        return None, classes, sets, None
    saved = run if run is not None and (run / "splits" / "labeled.txt").is_file() else None
    try:
        splits = resolve_splits(cfg.data, saved, is_main=False)  # is_main=False: writes nothing
    except ConfigError as exc:
        problems.append(f"data: {exc}")
        return None, [], [], None
    sets = _summaries(splits, cfg)
    _check_val_copies(splits, notes=notes)
    if cfg.data.format == "folder" and (unread := unread_folder_videos(splits.root)):
        notes.append(
            f"warning: {len(unread)} videos are outside the folder layout and not read, e.g. "
            f"{_names(unread, 3)} (it reads labeled/<class>/, unlabeled/ and val/<class>/)"
        )
    rng = random.Random(seed)
    training = VideoStats()  # the training videos the probe opens, each read once
    for s, items in zip(sets, (splits.labeled, splits.unlabeled, splits.val), strict=True):
        _probe(s, items, splits.root, probe, rng, training if s.name != "val" else None)
    videos = recipe.videos if recipe is not None else training if probe else None
    return splits, splits.classes, sets, videos


def _check_val_copies(splits: DataSplits, *, notes: list[str]) -> None:
    """Validation videos that are byte for byte training videos: their accuracy would be measured
    on what the model trained on. Sizes first; only files of a shared size are read."""

    def sizes(items: list[VideoItem]) -> dict[int, list[Path]]:
        out: dict[int, list[Path]] = {}
        for it in items:
            path = splits.root / it.path
            with contextlib.suppress(OSError):
                out.setdefault(path.stat().st_size, []).append(path)
        return out

    if not splits.val:
        return
    training = {it.path: it for it in splits.labeled + splits.unlabeled}  # the labeled are in both
    train, val = sizes(list(training.values())), sizes(splits.val)
    copies = []
    for size in (val.keys() & train.keys()) - {0}:  # empty files are unreadable, not copies
        heads = {_digest(p, head=True) for p in train[size]}  # the first 64 KiB, then the whole file
        candidates = [p for p in val[size] if _digest(p, head=True) in heads]
        if candidates:
            whole = {_digest(p) for p in train[size]}
            copies += [p for p in candidates if _digest(p) in whole]
    if copies:
        names = sorted(p.relative_to(splits.root).as_posix() for p in copies)
        notes.append(
            f"warning: {len(copies)} validation videos are byte for byte training videos ({_names(names, 3)}): "
            "the accuracy on them says how well the model remembers, not how well it recognises"
        )


def _digest(path: Path, *, head: bool = False) -> str:
    """SHA-256 of a file, or of its first 64 KiB; an unreadable file equals no other."""
    digest = hashlib.sha256()
    with contextlib.suppress(OSError), path.open("rb") as f:
        while chunk := f.read(1 << 16):
            digest.update(chunk)
            if head:
                break
        return digest.hexdigest()
    return f"unreadable {path}"


def _check_sets(
    cfg: Config,
    sets: list[SetSummary],
    classes: list[str],
    *,
    allow_missing: bool,
    notes: list[str],
    problems: list[str],
) -> None:
    """Missing and unreadable videos, and labeled classes with no or few videos."""
    for s in sets:
        if s.missing:
            (notes if allow_missing else problems).append(
                f"{s.name}: {len(s.missing)} listed videos not found under {cfg.data.root}, "
                f"e.g. {', '.join(s.missing[:3])}" + (" (they would be skipped and counted)" if allow_missing else "")
            )
        if s.name == "val" and not s.count:
            notes.append(
                "warning: no validation videos: the run can report no accuracy and `make export` refuses it "
                "(it checks the exported model on validation clips); put a few videos of each class under "
                + ("val/<class>/" if cfg.data.format == "folder" else "data.val_list")
            )
        if s.unreadable:
            (notes if allow_missing else problems).append(
                f"{s.name}: {len(s.unreadable)} of {s.probed} probed videos cannot be opened, e.g. {s.unreadable[0][1]}"
                + (" (training skips and counts them)" if allow_missing else "")
            )
    if classes and any(s.name == "labeled" for s in sets):
        _check_labeled_classes(sets, classes, notes=notes)


def _check_video_length(cfg: Config, videos: VideoStats, *, notes: list[str]) -> None:
    """Training videos with fewer frames than one clip covers (their clips wrap around), and long
    recordings that one clip covers little of (each clip still takes the video's label)."""
    spread = cfg.tg.slow == "spread"
    need = frames_per_clip(cfg.input, tg_stride=cfg.tg.stride, tg_spread=spread)
    tail = tg_tail(tg_stride=cfg.tg.stride, tg_spread=spread)
    after = f", and {tail} after the last for its temporal gradient" if tail else ""
    short = [(path, n) for path, n in zip(videos.opened_paths, videos.frames, strict=True) if n < need]
    seconds, median_frames = videos.median_seconds(), videos.median(videos.frames)
    if seconds >= LONG_VIDEO_SECONDS and median_frames >= LONG_VIDEO_CLIPS * need:
        notes.append(
            f"the median training video lasts {seconds:.0f} s and one clip covers {need} of its "
            f"{median_frames:.0f} frames: every clip of a video is given its label, so each "
            "video should show its action throughout (cut long recordings down to the action)"
        )
    if not short:
        return
    path, n = min(short, key=lambda s: s[1])
    frames = f"{n} frames" if n > 1 else "1 frame: a still image, whose temporal gradient is zero"
    notes.append(
        ("warning: " if len(short) * 4 >= videos.opened else "")  # a quarter or more of them
        + f"{len(short)} of {videos.opened} probed training videos are shorter than one training clip "
        f"({need} frames: {cfg.input.clip_len} every {cfg.input.interval}{after}), e.g. {path} ({frames}): "
        "their clips wrap around to the first frame, so part of each clip shows a jump back instead of the action"
    )


def _names(names: list[str], most: int) -> str:
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _check_labeled_classes(sets: list[SetSummary], classes: list[str], *, notes: list[str]) -> None:
    labeled = next(s for s in sets if s.name == "labeled")
    anywhere = [sum(n) for n in zip(*(s.per_class for s in sets), strict=True)]
    # a class with no video in any set (an empty folder in labeled/, say) still gets an output
    empty = [classes[c] for c, n in enumerate(anywhere) if n == 0]
    if empty:
        notes.append(
            f"warning: {len(empty)} of {len(classes)} classes have no video at all ({_names(empty, 5)}): "
            "the model gets an output for each that no video teaches or tests; remove the empty "
            "class folder if it is not a class"
        )
    alike: dict[str, list[str]] = {}
    for name in classes:
        alike.setdefault(" ".join(name.casefold().split()), []).append(name)
    for names in (names for names in alike.values() if len(names) > 1):
        notes.append(
            f"warning: classes {', '.join(repr(n) for n in names)} differ only in case or spaces: to the "
            "model they are different classes; merge their folders if they are one"
        )
    absent = [classes[c] for c, n in enumerate(labeled.per_class) if n == 0 and anywhere[c] > 0]
    if absent:
        notes.append(f"labeled: {len(absent)} of {len(classes)} classes have no labeled video ({_names(absent, 5)})")
    few = [f"{classes[c]} {n}" for c, n in enumerate(labeled.per_class) if 0 < n < FEW_LABELS_PER_CLASS]
    if few:
        notes.append(
            f"warning: {len(few)} of {len(classes)} classes have fewer than {FEW_LABELS_PER_CLASS} "
            f"labeled videos ({_names(few, 8)}): expect a "
            "weaker model; a few more labeled videos per class help most"
        )


def _check_run_folder(cfg: Config, run: Path, *, notes: list[str], problems: list[str]) -> None:
    """Whether training would resume the existing run folder or refuse it."""
    try:
        changed = diff_configs(config_from_dict(yaml.safe_load((run / "config.yaml").read_text())), cfg)
    except ConfigError as exc:
        changed = []
        problems.append(f"run folder {run}: its config.yaml does not load ({exc})")
    if changed:
        problems.append(
            f"run folder {run} was started with a different config ({', '.join(changed)}): "
            "training would refuse it; use another --run"
        )
    else:
        notes.append(f"run folder {run} exists with this config: training resumes it")


def _lr_at_epochs(cfg: Config, schedule: Schedule, base_lr: float) -> list[tuple[int, float]]:
    return [
        (e, learning_rate(e * schedule.steps_per_epoch, base_lr=base_lr, schedule=schedule, cfg=cfg))
        for e in lr_epochs(schedule)
    ]


def _estimate_time(
    cfg: Config, num_classes: int, schedule: Schedule, *, device: torch.device | None, notes: list[str]
) -> TimeEstimate | None:
    try:
        estimate = estimate_training_time(cfg, num_classes, schedule, device=device)
    except (RuntimeError, MemoryError) as exc:  # e.g. out of memory at this size on this device
        notes.append(f"time: not estimated ({str(exc).splitlines()[0][:200]})")
        return None
    if estimate.device == "cpu" and (busy := _cpu_busy()):
        notes.append(
            f"warning: time: other work kept this machine busy while the step was timed ({busy}); the "
            "estimate holds only while it stays that busy, and an idle machine trains much faster"
        )
    return estimate


def _cpu_busy() -> str | None:
    """The 1-minute load average against this process's cores, when other work was using them all
    (the plan's own few seconds of probing and timing add well under one to it); None when they
    were free."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return f"load average {load:.1f} on {cores} cores" if load >= cores + 0.5 else None


def _check_schedule(cfg: Config, schedule: Schedule, num_unlabeled: int, processes: int, *, notes: list[str]) -> None:
    """PreciseBN batches the unlabeled set cannot fill, and a run shorter than its warm-up."""
    if cfg.train.precise_bn:
        size = precise_bn_batch_size(cfg.train.precise_bn_batch_size, num_unlabeled, processes)
        available = num_unlabeled // processes // size
        if not available:
            notes.append(
                f"warning: PreciseBN: {num_unlabeled} unlabeled videos for {processes} process(es), not one "
                "clip each: it is skipped and the BatchNorm statistics of training are kept"
            )
        elif available < cfg.train.precise_bn_batches:
            smaller = (
                f" of {size} clips (the unlabeled set is smaller than one batch)"
                if size < cfg.train.precise_bn_batch_size
                else ""
            )
            notes.append(
                f"PreciseBN: {available} batches{smaller} per process available, fewer than the "
                f"{cfg.train.precise_bn_batches} asked for (it uses them all)"
            )
    if schedule.epochs <= schedule.sup_warmup_epochs:
        notes.append("the run ends before the supervised warm-up does: the unlabeled loss is never on")


def lr_epochs(schedule: Schedule) -> list[int]:
    """Epochs whose starting lr the plan shows: across the warm-up and then the run by quarters."""
    n = schedule.epochs
    picks = {0, n - 1, round(n / 4), round(n / 2), round(3 * n / 4), schedule.sup_warmup_epochs}
    if schedule.warmup_iters:
        warm_epochs = schedule.warmup_iters / schedule.steps_per_epoch
        picks |= {round(warm_epochs * f) for f in (1 / 6, 1 / 3, 2 / 3, 1)}
    return sorted(e for e in picks if 0 <= e < n)


def _is_paper_dataset(classes: list[str]) -> bool:
    return len(classes) in (101, 51, 400)


def _synthetic_ready(cfg: Config) -> bool:
    root = Path(cfg.data.root)
    return (root / cfg.data.classes).is_file() and all(
        (root / rel).is_file()
        for rel in (cfg.data.train_list, cfg.data.labeled_list, cfg.data.unlabeled_list, cfg.data.val_list)
        if rel
    )


def _synthetic_sets(cfg: Config) -> tuple[list[str], list[SetSummary]]:
    from training.synthetic import class_names

    size = cfg.data.synthetic_size
    classes = class_names(size.num_classes, size.family)
    n = len(classes)
    made = "to be generated"
    return classes, [
        SetSummary("labeled", n * size.labeled_per_class, [size.labeled_per_class] * n, 0, made),
        SetSummary("unlabeled", n * size.train_per_class, [size.train_per_class] * n, 0, made),
        SetSummary("val", n * size.val_per_class, [size.val_per_class] * n, 0, made),
    ]


def _summaries(splits: DataSplits, cfg: Config) -> list[SetSummary]:
    n = len(splits.classes)
    unlabeled_source = (
        f"list {cfg.data.unlabeled_list}"
        if cfg.data.unlabeled_list
        else "the whole training set, labeled videos included"
        if cfg.data.format == "folder"
        else f"the whole training list {cfg.data.train_list}, labeled videos included"
    )
    out = []
    for name, items, src in (
        ("labeled", splits.labeled, splits.source),
        ("unlabeled", splits.unlabeled, unlabeled_source),
        ("val", splits.val, f"list {cfg.data.val_list}" if cfg.data.format == "lists" else "val/"),
    ):
        per_class = [0] * n
        for it in items:
            if it.label >= 0:
                per_class[it.label] += 1
        out.append(
            SetSummary(
                name,
                len(items),
                per_class,
                sum(it.label < 0 for it in items),
                src,
                missing=list(splits.missing.get(name, [])),
            )
        )
    return out


def _probe(
    summary: SetSummary,
    items: list[VideoItem],
    root: Path,
    probe: int,
    rng: random.Random,
    stats: VideoStats | None = None,
) -> None:
    """Open up to `probe` of the set's found videos with the training decoder; with `stats`,
    record each one's shape there too (a video already in it is not opened again)."""
    absent = set(summary.missing)
    found = sorted({it.path for it in items if it.path not in absent})
    chosen = found if probe < 0 or probe >= len(found) else rng.sample(found, probe)
    seen: dict[str, str | None] = {}  # path -> its error (None: it opens), read for another set
    if stats is not None:
        seen = {**dict.fromkeys(stats.opened_paths), **dict(stats.unreadable)}
    for path in chosen:
        if path in seen:
            error = seen[path]
        elif stats is not None:
            error = stats.read(root, path)
        else:
            error = _open_error(root, path)
        if error is not None:
            summary.unreadable.append((path, error))
    summary.probed = len(chosen)


def _open_error(root: Path, path: str) -> str | None:
    try:
        open_video(str(root / path))
    except VideoDecodeError as exc:
        return str(exc)
    return None


# ----------------------------------------------------------------------------- time
def _clips_per_step(cfg: Config, *, warmup: bool) -> int:
    """Clips each network forwards in one step (per process)."""
    strong = not warmup or cfg.train.forward_strong_in_warmup
    return cfg.optim.batch_labeled + cfg.optim.batch_unlabeled * (2 if strong else 1)


def _step_flops(cfg: Config, num_classes: int, clips: int) -> int:
    """FLOPs of one step's forward and backward through the networks, counted on the meta
    device (nothing is computed; 2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from training.models import two_stream_from_config

    s = cfg.input
    with torch.device("meta"):
        net = two_stream_from_config(cfg, num_classes)
        x = torch.empty(clips, 3, s.clip_len, s.crop_size, s.crop_size)
    with FlopCounterMode(display=False) as counter:
        out = net(**{m: x for m in _streams(cfg)})
        sum(v.float().sum() for k, v in out.items() if not k.startswith("feats")).backward()
    return int(counter.get_total_flops())


def _streams(cfg: Config) -> tuple[str, ...]:
    return ("rgb", "tg") if cfg.loss.streams == "both" else (cfg.loss.streams,)


def _time_steps(
    cfg: Config,
    num_classes: int,
    device: torch.device,
    *,
    batch_labeled: int,
    batch_unlabeled: int,
    use_unlabeled: bool,
    repeats: int = 2,
) -> float:
    """Seconds of one real training step (views and strong augmentation on the device, forward,
    backward, optimizer) on random frames: the fastest of `repeats` after one warm-up step."""
    from training.models import two_stream_from_config
    from training.step import total_loss, training_step

    s = cfg.input
    torch.manual_seed(0)
    net = two_stream_from_config(cfg, num_classes).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    frames_per_clip = 3 if cfg.tg.stride > 1 and cfg.tg.slow == "spread" else 2

    def batch(n: int) -> dict:
        return {
            "frames": torch.randint(
                0, 256, (n, frames_per_clip, 3, s.clip_len, s.crop_size, s.crop_size), dtype=torch.uint8
            ),
            "label": torch.randint(0, num_classes, (n,)),
        }

    bl, bu = batch(batch_labeled), batch(batch_unlabeled)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        terms, _ = training_step(net, bl, bu, cfg, use_unlabeled=use_unlabeled, device=device)
        opt.zero_grad(set_to_none=True)
        total_loss(terms, cfg).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def estimate_training_time(
    cfg: Config, num_classes: int, schedule: Schedule, *, device: torch.device | None = None
) -> TimeEstimate:
    """The run's training time on this machine's device, per process.

    A step predicted to take at most TIMED_STEP_LIMIT_S is timed for real (random frames, so
    no decoding). Longer ones are extrapolated from steps of 1 + 1 and 2 + 2 clips of the same
    networks timed here: a fixed cost per step (augmentation, launch overheads) plus the step's
    FLOP count at the marginal rate between the two. A small step is mostly fixed cost, so its
    rate alone would overestimate a full step many times over."""
    if device is None:
        device = torch.device(training_device(cfg.train.device))
    full, warm = _clips_per_step(cfg, warmup=False), _clips_per_step(cfg, warmup=True)
    # weak clips only (strong views off) in the two small steps
    small_cfg = _with(cfg, forward_strong_in_warmup=False)
    points = [
        (
            _step_flops(small_cfg, num_classes, 2 * n),
            _time_steps(small_cfg, num_classes, device, batch_labeled=n, batch_unlabeled=n, use_unlabeled=False),
        )
        for n in (1, 2)
    ]
    (f1, t1), (f2, t2) = points
    rate = (f2 - f1) / (t2 - t1) if t2 > t1 else f2 / t2  # timing noise: fall back to the larger step's rate
    fixed = max(0.0, t1 - f1 / rate)
    flops_full, flops_warm = _step_flops(cfg, num_classes, full), _step_flops(cfg, num_classes, warm)
    step_s, warm_s = fixed + flops_full / rate, fixed + flops_warm / rate
    method = "FLOP count / measured rate"
    detail = (
        f"{flops_full / 1e9:.4g} GFLOP per step ({full} clips per network, forward and backward) at "
        f"{rate / 1e9:.3g} GFLOP/s plus {fixed:.3g} s per step, from steps of 1 + 1 and 2 + 2 clips timed "
        f"here ({t1:.3g} s, {t2:.3g} s, best of 2)"
    )
    if step_s <= TIMED_STEP_LIMIT_S:
        bl, bu = cfg.optim.batch_labeled, cfg.optim.batch_unlabeled
        step_s = _time_steps(cfg, num_classes, device, batch_labeled=bl, batch_unlabeled=bu, use_unlabeled=True)
        warm_s = (
            step_s
            if warm == full
            else _time_steps(cfg, num_classes, device, batch_labeled=bl, batch_unlabeled=bu, use_unlabeled=False)
        )
        method = "timed step"
        detail = (
            f"a real step of {bl} + {bu} clips timed here on random frames (best of 2 after a warm-up "
            f"step; {flops_full / 1e9:.4g} GFLOP, {flops_full / step_s / 1e9:.3g} GFLOP/s)"
        )
    warm_epochs = min(schedule.sup_warmup_epochs, schedule.epochs)
    total = schedule.steps_per_epoch * (warm_epochs * warm_s + (schedule.epochs - warm_epochs) * step_s)
    return TimeEstimate(
        method=method,
        device=str(device.type if device.index is None else device),
        step_s=step_s,
        warmup_step_s=warm_s,
        total_s=total,
        detail=detail,
    )


def _with(cfg: Config, **train_keys) -> Config:
    tree = cfg.to_dict()
    tree["train"].update(train_keys)
    return config_from_dict(tree)


# ----------------------------------------------------------------------------- printing
def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _per_class_line(s: SetSummary, classes: list[str]) -> str:
    counts = s.per_class
    present = sum(n > 0 for n in counts)
    if not counts:
        return ""
    return (
        f"{present} of {len(classes)} classes; per class min {min(counts)}, "
        f"median {statistics.median(counts):g}, max {max(counts)}"
    )


def format_plan(plan: TrainingPlan, *, dry_run: bool = True) -> str:
    """The plan as text: resolved config (YAML; before a real run only where it will be saved),
    the own-data recipe's choices, data, schedule, time, notes and problems."""
    out = _header_lines(plan, dry_run=dry_run)
    out += _data_lines(plan) + _file_lines(plan) + _schedule_section(plan) + _time_lines(plan)
    out += ["", "== notes"] + ([f"- {n}" for n in plan.notes] or ["none"])
    out += ["", "== problems"] + ([f"- {p}" for p in plan.problems] or ["none"])
    return "\n".join(out) + "\n"


def _header_lines(plan: TrainingPlan, *, dry_run: bool) -> list[str]:
    """Title, config source, run folder, the resolved config and the own-data recipe."""
    cfg = plan.cfg
    out = ["Training plan" + (" (dry run: nothing is trained and nothing is written)" if dry_run else "")]
    if plan.source:
        out.append(f"config: {plan.source}")
    if plan.run is not None:
        out.append(f"run folder: {plan.run}")
    if dry_run:
        out += ["", "== resolved config", yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip()]
    elif plan.run is not None:
        out.append(f"resolved config: {plan.run / 'config.yaml'}")
    if plan.recipe is not None:
        out += ["", "== recipe chosen from the data and this machine"] + [
            f"  {line}" for line in plan.recipe.describe()
        ]
    return out


def _data_lines(plan: TrainingPlan) -> list[str]:
    """Each set's size, per-class counts and source, and the labeled videos per class."""
    cfg = plan.cfg
    out = ["", f"== data: {plan.data_root} ({cfg.data.format}), {len(plan.classes)} classes"]
    for s in plan.sets:
        extra = f", {s.unknown_labels} without a label" if s.unknown_labels else ""
        out.append(f"{s.name:<10}{s.count:>8,} videos  {_per_class_line(s, plan.classes)}{extra}")
        out.append(f"{'':<10}source: {s.source}")
    labeled = next((s for s in plan.sets if s.name == "labeled"), None)
    if labeled is not None and plan.classes:
        pairs = list(zip(plan.classes, labeled.per_class, strict=True))
        if len(pairs) > 120:
            ranked = sorted(pairs, key=lambda p: p[1])
            pairs_text = (
                "fewest: "
                + ", ".join(f"{c} {n}" for c, n in ranked[:10])
                + "; most: "
                + ", ".join(f"{c} {n}" for c, n in ranked[-5:])
            )
        else:
            pairs_text = ", ".join(f"{c} {n}" for c, n in pairs)
        out.append("labeled videos per class:")
        out += textwrap.wrap(pairs_text, width=100, initial_indent="  ", subsequent_indent="  ")
    return out


def _file_lines(plan: TrainingPlan) -> list[str]:
    """Per set: listed videos found or missing, probed videos that open, and a sample's format."""
    out: list[str] = []
    for s in plan.sets:
        status = (
            s.source
            if s.source == "to be generated"
            else f"{len(s.missing):,} listed but not found"
            if s.missing
            else "all listed videos found"
        )
        probe = (
            f"; {len(s.unreadable)} of {s.probed} probed cannot be opened"
            if s.unreadable
            else f"; {s.probed} probed, all open"
            if s.probed
            else ""
        )
        out.append(f"files {s.name:<10}{status}{probe}")
        for path in s.missing[:5]:
            out.append(f"  missing: {path}")
        if len(s.missing) > 5:
            out.append(f"  missing: ... and {len(s.missing) - 5} more")
        for _path, error in s.unreadable[:5]:
            out.append(f"  unreadable: {error}")
        if len(s.unreadable) > 5:
            out.append(f"  unreadable: ... and {len(s.unreadable) - 5} more")
    if plan.videos is not None:
        out.append(f"videos    {plan.videos.summary()}")
    return out


def _schedule_section(plan: TrainingPlan) -> list[str]:
    """Batches, learning rate and its warm-up and shape, PreciseBN, precision and test views."""
    cfg, o = plan.cfg, plan.cfg.optim
    bl, bu = o.batch_labeled, o.batch_unlabeled
    out = [
        "",
        "== schedule",
        f"{plan.processes} process(es) x ({bl} labeled + {bu} unlabeled clips); total batch "
        f"{plan.processes * (bl + bu)}; lr {plan.base_lr:.4g} ({o.lr:g} at {o.lr_reference_batch} clips, "
        "scaled linearly)",
        *_schedule_lines(plan),
    ]
    sched = plan.schedule
    if sched and sched.warmup_iters:
        shape = (
            "one cosine over the whole run, by epoch, times the ramp (MMCV CosineAnnealing, as the authors)"
            if o.schedule == "mmcv"
            else "then a cosine over the remaining iterations"
        )
        out.append(
            f"lr warm-up: linear from {o.warmup_start_factor:g}x over the first {sched.warmup_iters:,.0f} steps, "
            f"per iteration; {shape}"
        )
    else:
        out.append("lr warm-up: none; " + ("cosine over the run by epoch" if o.schedule == "mmcv" else "cosine"))
    if plan.lr_at_epoch:
        out.append("lr at the start of epoch: " + "  ".join(f"{e}: {lr:.4g}" for e, lr in plan.lr_at_epoch))
    t = cfg.train
    out.append(
        f"PreciseBN every {t.precise_bn_every} epochs: {t.precise_bn_batches} batches of "
        f"{t.precise_bn_batch_size} clips per process"
        if t.precise_bn
        else "PreciseBN: off"
    )
    out.append(
        f"precision: {'bf16 autocast on CUDA' if t.amp else 'fp32'}; test: {cfg.input.test_clips} clips x "
        f"{cfg.input.test_crops} crops, views averaged by {'raw score' if t.test_average == 'score' else 'softmax'}"
    )
    return out


def _time_lines(plan: TrainingPlan) -> list[str]:
    out = ["", "== time on this machine"]
    if plan.time is None:
        out.append("not estimated")
    else:
        tm = plan.time
        out.append(
            f"{_duration(tm.total_s)} of training steps ({tm.method}, {tm.device}): {tm.step_s:.3g} s per step"
            + (f", {tm.warmup_step_s:.3g} s during the supervised warm-up" if tm.warmup_step_s != tm.step_s else "")
        )
        out.append(f"  {tm.detail}; data loading, PreciseBN and evaluation not included")
    return out


def _schedule_lines(plan: TrainingPlan) -> list[str]:
    s, o = plan.schedule, plan.cfg.optim
    if s is None:
        return ["steps: unknown (no unlabeled videos found)"]
    budget = (
        f"budget {o.steps:,} steps (optim.steps): {s.epochs} epochs of {s.steps_per_epoch:,} steps on this data"
        if s.budget == "steps"
        else f"budget {s.epochs} epochs (optim.epochs) of {s.steps_per_epoch:,} steps"
    )
    warm = (
        (
            f"supervised warm-up: unlabeled loss off for the first {s.sup_warmup_epochs} epochs "
            f"({s.sup_warmup_epochs * s.steps_per_epoch:,} steps)"
            + (
                "; strong views forwarded from the first step"
                if plan.cfg.train.forward_strong_in_warmup
                else "; strong views skipped until then"
            )
        )
        if s.sup_warmup_epochs
        else "supervised warm-up: none"
    )
    return [f"{budget}; total {s.total_steps:,} steps (an epoch is one pass over the unlabeled set)", warm]


def print_plan(plan: TrainingPlan, file=None, *, dry_run: bool = True) -> None:
    print(format_plan(plan, dry_run=dry_run), end="", file=file)
