"""The figures of a run, written as PNGs into RUN/figures/ by `python -m training evaluate --figures`.

- frames.png: RGB, fast TG and slow TG of a few validation clips, one per class (the
  paper's Figure 3): what the student and the teacher see.
- curves.png: training curves from the checkpoint's history: every loss term, the
  pseudo-label mask rate and accuracy, and the quick-validation accuracy, per epoch.
- confusion_student.png, confusion_teacher.png: confusion matrices of the 30-view test.

matplotlib's object API (`Figure(...).savefig`) is used rather than pyplot: no global state
and no display backend, so figures can be written from any process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.augment import temporal_gradient
from training.data import VideoItem
from training.video import VideoDecodeError
from training.views import InputSpec, decode_test_views

FAST_STRIDE, SLOW_STRIDE = 1, 7  # the paper's fast and slow TG (Table 3a, Figure 3)


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib comes with the dev extra
        raise RuntimeError("figures need matplotlib: pip install -e '.[dev]' (or pip install matplotlib)") from exc
    return Figure(**kwargs)


# ----------------------------------------------------------------------------- frames
def clip_modalities(path: Path, spec: InputSpec) -> dict[str, np.ndarray]:
    """RGB, fast TG and slow TG of a video's validation clip (1 clip, centre crop) -> each
    (T, H, W, 3) float 0-255, TG as the teacher sees it: (x_t - x_{t+s} + 255) / 2."""
    out = {}
    for name, stride in (("fast", FAST_STRIDE), ("slow", SLOW_STRIDE)):
        d = decode_test_views(str(path), spec, tg_stride=stride, quick=True)
        out["rgb"] = d.views[0].float().permute(1, 2, 3, 0).numpy()  # (3, T, H, W) -> (T, H, W, 3)
        assert d.successors is not None  # decoded with a TG stride
        out[name] = temporal_gradient(d.views, d.successors)[0].permute(1, 2, 3, 0).numpy()
    return out


def readable_clips(items: list[VideoItem], root: Path, spec: InputSpec, count: int) -> list[tuple[VideoItem, dict]]:
    """The first readable video of each class, for up to `count` classes (distinct motions side
    by side), with its modalities; unreadable videos are passed over (the test counts them)."""
    picked, seen = [], set()
    for item in items:
        if item.label in seen:
            continue
        try:
            modalities = clip_modalities(root / item.path, spec)
        except VideoDecodeError:
            continue
        picked.append((item, modalities))
        seen.add(item.label)
        if len(picked) == count:
            break
    return picked


def tg_display(tg: np.ndarray, gain: float) -> np.ndarray:
    """TG for display in [0, 1]: no change (127.5) is mid-grey, deviations stretched by `gain`."""
    return np.clip(0.5 + gain * (tg - 127.5) / 255.0, 0.0, 1.0)


def frames_figure(
    items: list[VideoItem],
    root: Path,
    classes: list[str],
    spec: InputSpec,
    out: Path,
    *,
    num_clips: int = 3,
    num_frames: int = 6,
) -> Path:
    """RGB / fast TG / slow TG rows for `num_clips` validation clips, `num_frames` frames each."""
    clips = readable_clips(items, root, spec, num_clips)
    if not clips:
        raise ValueError(f"no readable validation video under {root} to draw frames from")
    columns = np.unique(np.linspace(0, spec.clip_len - 1, min(num_frames, spec.clip_len)).round().astype(int))
    rows = 3 * len(clips)
    fig = _figure(figsize=(1.3 * len(columns) + 1.2, 1.3 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, len(columns), squeeze=False)
    for c, (item, m) in enumerate(clips):
        # one stretch per clip, shared by fast and slow TG so their magnitudes compare
        spread = np.percentile(np.abs(np.concatenate([m["fast"], m["slow"]]) - 127.5), 99.5)
        gain = 0.5 * 255.0 / max(spread, 1.0)
        images = {"rgb": m["rgb"] / 255.0, "fast": tg_display(m["fast"], gain), "slow": tg_display(m["slow"], gain)}
        labels = {
            "rgb": f"{classes[item.label]}\nRGB",
            "fast": f"fast TG\nstride {FAST_STRIDE}, x{gain:.1f}",
            "slow": f"slow TG\nstride {SLOW_STRIDE}, x{gain:.1f}",
        }
        for r, key in enumerate(("rgb", "fast", "slow")):
            for j, t in enumerate(columns):
                ax = axes[3 * c + r, j]
                ax.imshow(images[key][t], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if 3 * c + r == 0:
                    ax.set_title(f"frame {t}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(labels[key], fontsize=8)
    fig.suptitle(
        "RGB vs temporal gradient of validation clips (TG: grey = no change, deviations stretched xN)", fontsize=9
    )
    fig.savefig(out, dpi=100)
    return out


# ----------------------------------------------------------------------------- curves
CURVE_PANELS = (
    ("loss", "loss terms (epoch mean)"),
    ("pseudo", "pseudo-labels: mask rate, accuracy"),
    ("val", "quick validation top-1 (%)"),
)


def curves_figure(history: list[dict], out: Path) -> Path:
    """One panel per key group of the history (loss/*, pseudo/*, val/*, anything else), per epoch."""
    groups: dict[str, list[str]] = {}
    for row in history:
        for key in row:
            if key == "epoch":
                continue
            group = key.split("/", 1)[0] if "/" in key else "other"
            groups.setdefault(group, [])
            if key not in groups[group]:
                groups[group].append(key)
    titles = dict(CURVE_PANELS)
    order = [g for g, _ in CURVE_PANELS if g in groups] + sorted(g for g in groups if g not in titles)
    fig = _figure(figsize=(5.0 * max(1, len(order)), 3.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(order)), squeeze=False)[0]
    if not order:
        axes[0].text(0.5, 0.5, "no training history in the checkpoint", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, group in zip(axes, order, strict=False):
        for key in groups[group]:
            points = [(row["epoch"], row[key]) for row in history if key in row and row[key] == row[key]]
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker="o", markersize=3, label=key.split("/", 1)[-1])
        ax.set_title(titles.get(group, group), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(out, dpi=100)
    return out


# ----------------------------------------------------------------------------- confusion
def confusion_matrix(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) video scores and (N,) true labels -> (C, C) counts, rows = true, columns = predicted."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    if len(labels):
        np.add.at(matrix, (labels, scores.argmax(axis=1)), 1)
    return matrix


def confusion_figure(scores: np.ndarray, labels: np.ndarray, classes: list[str], out: Path, *, title: str) -> Path:
    matrix = confusion_matrix(scores, labels, len(classes))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(1.0 + 0.45 * len(classes), 14.0)  # UCF-101's 101 classes stay readable at 14 inches
    fig = _figure(figsize=(side + 1.5, side + 0.8), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    ticks = np.arange(len(classes))
    size = 8 if len(classes) <= 30 else 4
    ax.set_xticks(ticks, classes, rotation=90 if len(classes) > 30 else 45, ha="right", fontsize=size)
    ax.set_yticks(ticks, classes, fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
    top1 = 100.0 * np.trace(matrix) / max(1, matrix.sum())
    ax.set_title(f"{title}\ntop-1 {top1:.1f} % over {matrix.sum()} videos", fontsize=10)
    fig.savefig(out, dpi=100)
    return out


# ----------------------------------------------------------------------------- all of them
def write_figures(
    run: Path,
    *,
    history: list[dict],
    items: list[VideoItem],
    root: Path,
    classes: list[str],
    spec: InputSpec,
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    views: str,
) -> list[Path]:
    """Write every figure of a run into RUN/figures/; `scores` maps model name ("student",
    "teacher") to its 30-view (scores, labels). Returns the files written."""
    folder = Path(run) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written = [curves_figure(history, folder / "curves.png")]
    if items:
        written.append(frames_figure(items, root, classes, spec, folder / "frames.png"))
    for name, (s, y) in scores.items():
        modality = "RGB" if name == "student" else "TG"
        written.append(
            confusion_figure(s, y, classes, folder / f"confusion_{name}.png", title=f"{name} ({modality}), {views}")
        )
    return written
