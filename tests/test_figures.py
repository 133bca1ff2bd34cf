"""Figures of a run: confusion matrix values, curves from a history, RGB vs TG frames of real
videos, and `python -m training evaluate --figures --robustness` on a real tiny run."""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.videofiles import write_video
from training.data import VideoItem
from training.evaluate import main as evaluate_main
from training.figures import (
    FAST_STRIDE,
    SLOW_STRIDE,
    clip_modalities,
    confusion_matrix,
    curves_figure,
    frames_figure,
    readable_clips,
    tg_display,
)
from training.views import InputSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.0, 0.2, 0.8]])
    labels = np.array([0, 1, 1, 2, 0])
    expected = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(confusion_matrix(scores, labels, 3), expected)
    assert confusion_matrix(np.zeros((0, 3)), np.zeros(0, dtype=np.int64), 3).sum() == 0


def test_tg_display_maps_no_change_to_mid_grey_and_clips():
    tg = np.array([127.5, 255.0, 0.0, 140.0])
    out = tg_display(tg, gain=4.0)
    assert out[0] == 0.5 and out[1] == 1.0 and out[2] == 0.0
    assert out[3] == pytest.approx(0.5 + 4.0 * 12.5 / 255.0)


def test_curves_figure_plots_every_group_and_tolerates_missing_values(tmp_path):
    history = [
        {
            "epoch": 1,
            "loss/total": 3.0,
            "loss/sup_rgb": 2.0,
            "pseudo/mask_rate_rgb": 0.1,
            "pseudo/pseudo_acc_rgb": float("nan"),
        },
        {
            "epoch": 2,
            "loss/total": 2.0,
            "loss/sup_rgb": 1.5,
            "loss/unsup_rgb": 0.4,
            "pseudo/mask_rate_rgb": 0.5,
            "pseudo/pseudo_acc_rgb": 0.7,
            "val/student_top1": 40.0,
            "lr": 0.01,
        },
    ]
    assert is_png(curves_figure(history, tmp_path / "curves.png"))
    assert is_png(curves_figure([], tmp_path / "empty.png"))


def moving_bar(num_frames: int, height: int = 32, width: int = 40) -> np.ndarray:
    """A bright vertical bar moving right 2 pixels per frame over a dark background."""
    frames = np.full((num_frames, height, width, 3), 30, np.uint8)
    for i in range(num_frames):
        x = (4 + 2 * i) % (width - 4)
        frames[i, :, x : x + 4] = 220
    return frames


def test_fast_and_slow_tg_of_a_real_video(tmp_path):
    """TG is mid-grey where nothing moves, and the slow TG (frames 7 apart) changes more pixels
    than the fast TG (frames 1 apart) of the same clip."""
    path = write_video(tmp_path / "bar.mp4", moving_bar(40))
    spec = InputSpec(clip_len=4, interval=2, short_side=32, crop_size=32, test_short_side=32, test_crop=32)
    m = clip_modalities(path, spec)
    assert m["rgb"].shape == m["fast"].shape == m["slow"].shape == (4, 32, 32, 3)
    moved_fast = (np.abs(m["fast"] - 127.5) > 20).mean()
    moved_slow = (np.abs(m["slow"] - 127.5) > 20).mean()
    assert 0 < moved_fast < moved_slow
    assert np.median(m["fast"]) == pytest.approx(127.5, abs=2)
    assert FAST_STRIDE == 1 and SLOW_STRIDE == 7


def test_frames_figure_shows_one_readable_video_per_class(tmp_path):
    write_video(tmp_path / "a0.mp4", moving_bar(30))
    write_video(tmp_path / "a1.mp4", moving_bar(30)[::-1].copy())
    (tmp_path / "b0.mp4").write_bytes(b"not a video")
    write_video(tmp_path / "b1.mp4", moving_bar(30)[:, ::-1].copy())
    items = [VideoItem("a0.mp4", 0), VideoItem("a1.mp4", 0), VideoItem("b0.mp4", 1), VideoItem("b1.mp4", 1)]
    spec = InputSpec(clip_len=4, interval=2, short_side=32, crop_size=32, test_short_side=32, test_crop=32)
    assert [it.path for it, _ in readable_clips(items, tmp_path, spec, 5)] == ["a0.mp4", "b1.mp4"]
    assert [it.path for it, _ in readable_clips(items, tmp_path, spec, 1)] == ["a0.mp4"]
    assert is_png(frames_figure(items, tmp_path, ["left", "right"], spec, tmp_path / "frames.png"))
    with pytest.raises(ValueError, match="no readable validation video"):
        frames_figure(items[2:3], tmp_path, ["left", "right"], spec, tmp_path / "none.png")


@pytest.mark.slow
def test_evaluate_writes_figures_and_robustness_into_the_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "figures", "eval*.json"))
    assert evaluate_main(["--run", str(run), "--figures", "--robustness", "--workers", "0"]) == 0
    for name in ("frames", "curves", "confusion_student", "confusion_teacher"):
        assert is_png(run / "figures" / f"{name}.png"), name
    report = json.loads((run / "eval.json").read_text())
    assert sorted(report["figures"]) == sorted(str(p) for p in (run / "figures").glob("*.png"))
    robust = report["robustness"]["student"]
    videos = report["student"]["videos"]
    for kind in ("contrast", "brightness", "grayscale"):
        assert robust[kind]["videos"] == videos and 0 <= robust[kind]["top1"] <= 100
    # the clean test is the training run's own final test, repeated
    metrics = json.loads((run / "metrics.json").read_text())
    assert report["student"]["top1"] == pytest.approx(metrics["student"]["top1"])
    assert torch.load(run / "last.pt", weights_only=True)["history"]  # the curves had data
