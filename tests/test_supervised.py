"""The supervised reference benchmark: its clips (the recipe's frames, one crop for RGB and TG), and a
tiny end-to-end run (training's 30-view test at each check) that writes its results."""

import json

import numpy as np
import pytest
import torch

from benchmarks.supervised import Videos, main, train_batch
from training.config import load_config
from training.own_data import CPU_BASE


def indexed_video(frames: int = 48, height: int = 24, width: int = 32) -> np.ndarray:
    """Each pixel holds its frame index in channel 0 and its column in channel 1."""
    video = np.zeros((frames, height, width, 3), np.uint8)
    video[..., 0] = np.arange(frames)[:, None, None]
    video[..., 1] = np.arange(width)[None, None, :]
    return video


def small_config(**input_keys):
    sets = [f"input.{k}={v}" for k, v in input_keys.items()]
    return load_config(CPU_BASE, ["data.root=unused", *sets])


def test_a_training_clip_takes_rgb_and_tg_from_one_crop_of_the_recipes_frames():
    cfg = small_config(clip_len=4, interval=2, short_side=24, crop_size=16, flip="false")
    video = indexed_video()
    videos = Videos([video, video], np.array([0, 1]))
    x, y = train_batch(videos, cfg, "rgb", np.random.default_rng(0))
    assert x.shape == (cfg.optim.batch_labeled, 3, 4, 16, 16) and set(y.tolist()) <= {0, 1}
    # undo the normalization: channel 0 holds the frame index, so the clip steps by the interval
    frames = x[:, 0] * cfg.input.std[0] + cfg.input.mean[0]
    steps = frames[:, 1:, 8, 8] - frames[:, :-1, 8, 8]
    assert torch.allclose(steps, torch.full_like(steps, 2.0), atol=1e-3)
    # TG of the same draw: every frame minus the next one, (x_t - x_t+1 + 255) / 2 = 127 everywhere
    tg, _ = train_batch(videos, cfg, "tg", np.random.default_rng(0))
    raw = tg[:, 0] * cfg.input.std[0] + cfg.input.mean[0]
    assert torch.allclose(raw, torch.full_like(raw, 127.0), atol=1e-3)
    # channel 1 holds the column: a frame and its successor were cut by one box, so it cancels
    columns = tg[:, 1] * cfg.input.std[1] + cfg.input.mean[1]
    assert torch.allclose(columns, torch.full_like(columns, 127.5), atol=1e-3)


@pytest.mark.slow
def test_a_tiny_supervised_run_writes_its_table(tmp_path):
    argv = [
        "--families", "directions", "--per-class", "1", "--val-per-class", "1", "--width", "48", "--height", "32",
        "--frames", "20", "--tag", "tiny", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--set",
        "optim.steps=4", "optim.warmup_steps=1", "optim.sup_warmup_steps=1", "model.width=4",
        "input.short_side=32", "input.crop_size=28", "input.test_short_side=32", "input.test_crop=32",
        "optim.batch_labeled=2",
    ]  # fmt: skip
    assert main(argv) == 0
    (json_path,) = (tmp_path / "out").glob("supervised-tiny-*.json")
    results = json.loads(json_path.read_text())
    assert [(r["family"], r["input"]) for r in results["runs"]] == [("directions", "rgb"), ("directions", "tg")]
    for run in results["runs"]:
        assert [p["step"] for p in run["curve"]] == [1, 2, 3, 4]
        assert all(0 <= p["val_top1"] <= 100 for p in run["curve"])
        assert run["config"]["width"] == 4 and run["steps"] == 4
    table = json_path.with_suffix(".md").read_text()
    assert "| directions | TG | width 4 |" in table and "chance 25 %" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--families", "spirals"], "unknown family spirals"),
        (["--tag", "../up"], "--tag '../up': lower-case letters, digits and single hyphens only"),
        (["--per-class", "0"], "--per-class and --val-per-class must be at least 1"),
    ],
)
def test_a_bad_argument_is_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_a_video_size_the_encoder_cannot_write_is_named_before_anything_runs(tmp_path, capsys):
    argv = ["--families", "turns", "--width", "171", "--root", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "width and height must be even" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
