"""The synthetic motion dataset: files, layout, determinism, idempotence, and that only motion
tells the classes apart. Tiny sizes keep every test to a few seconds."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from training import synthetic
from training.synthetic import MOTIONS, generate, render_video, video_rng

TINY = dict(num_classes=3, train_per_class=3, labeled_per_class=1, val_per_class=2, frames=16, width=32, height=24)
TINY_CLASSES = ["move_left", "move_right", "move_up"]  # the first three motions, sorted


def read_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        name, label = line.split()
        rows.append((name, int(label)))
    return rows


def decode_all(path: Path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    summary = generate(root, seed=0, **TINY)
    assert summary["generated"] and summary["classes"] == TINY_CLASSES
    return root


def all_videos(root: Path) -> list[str]:
    return [name for split in ("train", "val") for name, _ in read_list(root / "lists" / f"{split}.txt")]


# ----------------------------------------------------------------------------- files and layout
def test_videos_decode_with_requested_frames_and_size(tiny):
    import decord

    for name in all_videos(tiny):
        reader = decord.VideoReader(str(tiny / name), num_threads=1)
        assert len(reader) == TINY["frames"], name
        assert reader[0].shape == (TINY["height"], TINY["width"], 3), name
        assert reader.get_avg_fps() == pytest.approx(synthetic.FPS)


def test_layout_and_lists_agree(tiny):
    classes = (tiny / "classes.txt").read_text().splitlines()
    assert classes == TINY_CLASSES

    train = read_list(tiny / "lists/train.txt")
    labeled = read_list(tiny / "lists/labeled.txt")
    unlabeled = read_list(tiny / "lists/unlabeled.txt")
    val = read_list(tiny / "lists/val.txt")
    assert len(train) == 3 * TINY["train_per_class"] and len(val) == 3 * TINY["val_per_class"]
    assert len(labeled) == 3 * TINY["labeled_per_class"]
    # The unlabeled list is every training video, labeled ones included, with true labels.
    assert unlabeled == train and set(labeled) <= set(train)

    for name, label in train + val:
        class_name = Path(name).stem.rsplit("_", 1)[0]
        assert classes[label] == class_name, name
    for name, label in labeled:
        assert name.startswith(f"labeled/{classes[label]}/"), name
    for name, label in val:
        assert name.startswith(f"val/{classes[label]}/"), name
    assert {n for n, _ in train} - {n for n, _ in labeled} == {
        n for n, _ in train if n.startswith("unlabeled/")}

    # The folder layout holds exactly the listed videos.
    on_disk = {p.relative_to(tiny).as_posix() for p in tiny.rglob("*.mp4")}
    assert on_disk == {n for n, _ in train + val}
    assert sorted(p.name for p in (tiny / "labeled").iterdir()) == classes
    assert sorted(p.name for p in (tiny / "val").iterdir()) == classes

    meta = json.loads((tiny / "synthetic.json").read_text())
    assert meta["classes"] == classes
    assert meta["arguments"]["seed"] == 0 and meta["arguments"]["frames"] == TINY["frames"]
    assert not list(tiny.parent.glob(".tiny.partial-*")), "temporary folder left behind"


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_frames_whatever_the_workers_and_other_seed_differs(tiny, tmp_path):
    again = generate(tmp_path / "again", seed=0, workers=2, **TINY)
    other = generate(tmp_path / "other", seed=1, **TINY)
    assert again["generated"] and other["generated"]
    for name in all_videos(tiny):
        reference = decode_all(tiny / name)
        np.testing.assert_array_equal(decode_all(tmp_path / "again" / name), reference, err_msg=name)
        assert not np.array_equal(decode_all(tmp_path / "other" / name), reference), name


def test_rerun_with_same_arguments_does_nothing(tiny):
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    summary = generate(tiny, seed=0, **TINY)
    assert summary["generated"] is False
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()} == before


def test_rerun_with_other_arguments_raises(tiny):
    with pytest.raises(ValueError, match=r"different arguments.*seed"):
        generate(tiny, seed=1, **TINY)


def test_missing_files_are_regenerated_identically(tmp_path):
    args = dict(TINY, num_classes=1, train_per_class=2, val_per_class=1)
    root = tmp_path / "data"
    generate(root, **args)
    victim = root / "unlabeled/move_right_001.mp4"
    reference = decode_all(victim)
    victim.unlink()
    assert generate(root, **args)["generated"]
    np.testing.assert_array_equal(decode_all(victim), reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "temporary folders left behind"


def test_concurrent_generations_of_one_dataset_agree(tmp_path):
    # As when every rank of a distributed run makes sure the default dataset exists.
    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda _: generate(tmp_path / "data", **TINY), range(2)))
    assert any(s["generated"] for s in summaries)
    assert generate(tmp_path / "data", **TINY)["generated"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"], "temporary folders left behind"


def test_stale_partial_folder_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".data.partial-999999999-x1y2"  # no such process
    (stale / "labeled").mkdir(parents=True)
    generate(tmp_path / "data", **dict(TINY, num_classes=1, train_per_class=1, val_per_class=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failed_generation_leaves_no_dataset(tmp_path, monkeypatch):
    real = synthetic._write_video
    calls = []

    def fail_on_third(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        real(task)

    monkeypatch.setattr(synthetic, "_write_video", fail_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate(tmp_path / "data", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="not a synthetic dataset"):
        generate(tmp_path / "mine", **TINY)


def test_cli_prints_summary(tiny, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert synthetic.main(["--root", str(tiny), "--seed", "0", *flags]) == 0
    out = capsys.readouterr().out
    assert "3 classes" in out and "already present" in out


# ----------------------------------------------------------------------------- what tells classes apart
def test_appearance_alone_is_not_predictive():
    # Nearest class mean on each video's mean colour and first-frame colour spread.
    features, labels = [], []
    for label, motion in enumerate(MOTIONS):
        for i in range(16):
            video = render_video(motion, video_rng(0, "train", motion, i), frames=16, width=32, height=24)
            video = video.astype(np.float32)
            features.append(np.concatenate([video.mean((0, 1, 2)), video[0].std((0, 1))]))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)
    fit = np.arange(len(labels)) % 2 == 0
    means = np.stack([features[fit & (labels == c)].mean(0) for c in range(len(MOTIONS))])
    predicted = np.argmin(((features[~fit, None] - means[None]) ** 2).sum(-1), axis=1)
    accuracy = (predicted == labels[~fit]).mean()
    assert accuracy < 0.3, f"appearance predicts the class ({accuracy:.2f}; chance 0.10)"


def global_flow(video: np.ndarray) -> np.ndarray:
    """Least-squares translation (dx, dy) in pixels per frame over the pixels that change."""
    grey = video.astype(np.float32).mean(-1)
    # Periodic differences: the synthetic world wraps around, so do the gradients.
    gx = (np.roll(grey, -1, 2) - np.roll(grey, 1, 2)) / 2
    gy = (np.roll(grey, -1, 1) - np.roll(grey, 1, 1)) / 2
    gx, gy, gt = (gx[1:] + gx[:-1]) / 2, (gy[1:] + gy[:-1]) / 2, grey[1:] - grey[:-1]
    # Only where something moves: the static background's texture would bias the estimate.
    moving = np.abs(gt) > 1
    gx, gy, gt = gx[moving], gy[moving], gt[moving]
    a = np.array([[(gx * gx).sum(), (gx * gy).sum()], [(gx * gy).sum(), (gy * gy).sum()]])
    return np.linalg.solve(a, -np.array([(gx * gt).sum(), (gy * gt).sum()]))


def test_translation_direction_is_recoverable_from_motion():
    axis_sign = {"move_right": (0, 1), "move_left": (0, -1), "move_down": (1, 1), "move_up": (1, -1)}
    for motion, (axis, sign) in axis_sign.items():
        for i in range(8):
            # 64x48: at 32x24 the object's texture is finer than a pixel and aliases.
            video = render_video(motion, video_rng(0, "val", motion, i), frames=16, width=64, height=48, clutter=False)
            flow = global_flow(video)
            assert sign * flow[axis] > abs(flow[1 - axis]), (motion, i, flow)


def test_motion_is_visible_in_every_clip_window():
    # A training clip: 8 frames every 4 frames (29 raw frames), starting anywhere.
    for motion in MOTIONS:
        for i in range(3):
            video = render_video(motion, video_rng(0, "train", motion, i), frames=48, width=32, height=24,
                                 clutter=False).astype(np.float32)
            for start in range(48 - 28):
                clip = video[start:start + 29:4]
                change = np.abs(np.diff(clip, axis=0)).mean((1, 2, 3)).max()
                assert change > 1.0, (motion, i, start, change)
