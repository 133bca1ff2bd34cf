"""The synthetic motion dataset: files, layout, determinism, idempotence, and that only motion
tells the classes apart. Tiny sizes keep every test to a few seconds."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from training import synthetic
from training.synthetic import FAMILIES, MOTIONS, class_names, generate, render_video, video_rng

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
    assert {n for n, _ in train} - {n for n, _ in labeled} == {n for n, _ in train if n.startswith("unlabeled/")}

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
def appearance_accuracy(motions) -> float:
    """Held-out accuracy of a nearest-class-mean classifier on each video's mean colour and
    first-frame colour spread: how much appearance alone says about the class."""
    features, labels = [], []
    for label, motion in enumerate(motions):
        for i in range(16):
            video = render_video(motion, video_rng(0, "train", motion, i), frames=16, width=32, height=24)
            video = video.astype(np.float32)
            features.append(np.concatenate([video.mean((0, 1, 2)), video[0].std((0, 1))]))
            labels.append(label)
    features, labels = np.array(features), np.array(labels)
    fit = np.arange(len(labels)) % 2 == 0
    means = np.stack([features[fit & (labels == c)].mean(0) for c in range(len(motions))])
    predicted = np.argmin(((features[~fit, None] - means[None]) ** 2).sum(-1), axis=1)
    return float((predicted == labels[~fit]).mean())


def test_appearance_alone_is_not_predictive():
    accuracy = appearance_accuracy(MOTIONS)
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
            video = render_video(
                motion, video_rng(0, "train", motion, i), frames=48, width=32, height=24, clutter=False
            ).astype(np.float32)
            for start in range(48 - 28):
                clip = video[start : start + 29 : 4]
                change = np.abs(np.diff(clip, axis=0)).mean((1, 2, 3)).max()
                assert change > 1.0, (motion, i, start, change)


# ----------------------------------------------------------------------------- motion families
ORIGINAL_MOTIONS = (
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
)
LATER_MOTIONS = MOTIONS[len(ORIGINAL_MOTIONS) :]
# sha256 of the original ten motions rendered before the later motions existed (see below).
ORIGINAL_RENDER_SHA256 = "40d52c47a558a13564036e492a0e1245681219bdfd8b8597062947e1a8741ef6"


def test_original_motions_keep_their_order_and_render_exactly_as_before():
    # A video's generator is seeded with its motion's index, so any reordering or change in how
    # these render would silently change every existing dataset.
    assert MOTIONS[: len(ORIGINAL_MOTIONS)] == ORIGINAL_MOTIONS
    digest = hashlib.sha256()
    for motion in ORIGINAL_MOTIONS:
        for clutter in (True, False):
            video = render_video(
                motion, video_rng(3, "val", motion, 5), frames=12, width=32, height=24, clutter=clutter
            )
            digest.update(video.tobytes())
    assert digest.hexdigest() == ORIGINAL_RENDER_SHA256
    assert synthetic.GENERATOR_VERSION == 2


def test_families_are_disjoint_groups_of_known_motions_and_valid_config_choices():
    from training.config import CHOICES

    assert CHOICES["data.synthetic_size.family"] == ("", *FAMILIES)
    seen: set[str] = set()
    for name, motions in FAMILIES.items():
        assert 4 <= len(motions) <= 5 and len(set(motions)) == len(motions), name
        assert set(motions) <= set(MOTIONS), name
        assert not seen & set(motions), f"{name} shares motions with another family"
        seen |= set(motions)
        assert class_names(0, name) == sorted(motions) == class_names(len(motions), name)
    assert set(LATER_MOTIONS) <= seen, "every later motion belongs to a family"
    assert FAMILIES["directions"] == ("move_right", "move_left", "move_up", "move_down")


def test_class_names_rules_and_errors():
    assert class_names(3) == TINY_CLASSES
    assert class_names(2, "periodic") == ["bounce_vertical", "oscillate_horizontal"]
    with pytest.raises(ValueError, match=r"family 'paths' has 4 motions .*0 \(all of them\) or 1\.\.4.*got 5"):
        class_names(5, "paths")
    with pytest.raises(ValueError, match=r"unknown motion family 'spirals'; known: directions, turns"):
        class_names(0, "spirals")
    with pytest.raises(ValueError, match=rf"1\.\.{len(MOTIONS)}, got 0"):
        class_names(0)


@pytest.mark.parametrize("motion", LATER_MOTIONS)
def test_later_motion_renders_deterministically_and_moves(motion):
    video = render_video(motion, np.random.default_rng(7), frames=16, width=32, height=24)
    assert video.shape == (16, 24, 32, 3) and video.dtype == np.uint8
    np.testing.assert_array_equal(render_video(motion, np.random.default_rng(7), frames=16, width=32, height=24), video)
    assert not np.array_equal(render_video(motion, np.random.default_rng(8), frames=16, width=32, height=24), video)


def test_later_motions_share_the_first_frame_and_differ_after_it():
    # Their static draws (appearance, position, orientation, size) come first and the motion's
    # own parameters from a child generator, so the first frame cannot tell them apart.
    for seed in range(3):
        videos = {m: render_video(m, np.random.default_rng(seed), frames=8, width=48, height=32) for m in LATER_MOTIONS}
        first = videos[LATER_MOTIONS[0]][0]
        for motion, video in videos.items():
            np.testing.assert_array_equal(video[0], first, err_msg=motion)
        for motions in FAMILIES.values():
            later = [videos[m][1:] for m in motions if m in videos]
            for i, a in enumerate(later):
                for b in later[i + 1 :]:
                    assert not np.array_equal(a, b)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_appearance_alone_does_not_predict_the_class_within_a_family(family):
    motions = FAMILIES[family]
    accuracy = appearance_accuracy(motions)
    assert accuracy < 2 / len(motions), f"appearance predicts the class ({accuracy:.2f}; chance {1 / len(motions):.2f})"


def test_later_motions_are_visible_in_every_clip_of_8_frames_2_apart():
    for motion in LATER_MOTIONS:
        for i in range(3):
            video = render_video(
                motion, video_rng(0, "train", motion, i), frames=48, width=64, height=48, clutter=False
            ).astype(np.float32)
            for start in range(48 - 14):
                change = np.abs(np.diff(video[start : start + 15 : 2], axis=0)).mean((1, 2, 3)).max()
                assert change > 0.5, (motion, i, start, change)


def trajectory(motion: str, index: int, frames: int = 48):
    t = np.arange(frames, dtype=np.float32)
    return synthetic._trajectory(motion, video_rng(0, "train", motion, index), t, 96, 72, 72.0)


def test_speed_bands_do_not_overlap_and_render_in_order():
    bands = []
    for k in range(1, 5):
        speeds = np.concatenate([np.diff(trajectory(f"move_right_speed{k}", i)[0]) for i in range(20)]) / 72
        bands.append((speeds.min(), speeds.max()))
    for (_, slower_max), (faster_min, _) in zip(bands, bands[1:], strict=False):
        assert faster_min > 1.3 * slower_max, bands
    rendered = [
        np.median(
            [
                global_flow(render_video(m, video_rng(0, "val", m, i), frames=16, width=64, height=48, clutter=False))[
                    0
                ]
                for i in range(6)
            ]
        )
        for m in FAMILIES["speeds"]
    ]
    assert rendered == sorted(rendered) and rendered[0] > 0, rendered


def test_circles_turn_the_way_their_names_say():
    for motion, sign in (("circle_cw", 1), ("circle_ccw", -1)):
        for i in range(6):
            video = render_video(motion, video_rng(0, "val", motion, i), frames=16, width=64, height=48, clutter=False)
            before, after = global_flow(video[:5]), global_flow(video[8:13])
            # with y pointing down, a clockwise turn of the velocity has a positive cross product
            assert sign * (before[0] * after[1] - before[1] * after[0]) > 0, (motion, i)


def test_accelerating_motions_speed_up_or_slow_down_steadily():
    for motion, sign, part in (
        ("accelerate_right", 1, 0),
        ("decelerate_right", -1, 0),
        ("spin_up_cw", 1, 2),
        ("spin_down_cw", -1, 2),
    ):
        for i in range(10):
            rate = np.diff(trajectory(motion, i)[part])
            assert np.all(rate > 0), motion  # always rightward, always clockwise
            change = np.sign(np.diff(rate))
            # the rate restarts at most twice in 48 frames (one sweep lasts 25-40 frames)
            assert (change == sign).sum() >= len(change) - 2, (motion, i, change)


def test_size_changes_stay_in_range_and_zooms_keep_their_sense():
    for motion in ("pulsate", "move_right_zoom_in", "move_right_zoom_out"):
        for i in range(10):
            scale = trajectory(motion, i)[3]
            assert scale.min() >= synthetic.SCALE_MIN * 0.999 and scale.max() <= synthetic.SCALE_MAX * 1.001, motion
            if motion != "pulsate":
                # as zoom_in / zoom_out: a sweep of the size range lasts 9.5-16 frames, then restarts
                change = np.sign(np.diff(scale)) * (1 if motion.endswith("in") else -1)
                assert (change > 0).sum() >= len(change) - 6 and (change < 0).sum() >= 2, (motion, i)


def test_family_round_trips_through_config_generate_and_cli(tmp_path, capsys):
    from training.config import load_config

    cfg = load_config(
        None,
        [
            "data.synthetic_size.family=periodic",
            "data.synthetic_size.num_classes=0",
            *(f"data.synthetic_size.{k}={v}" for k, v in TINY.items() if k != "num_classes"),
        ],
    )
    assert cfg.data.synthetic_size.family == "periodic"
    root = tmp_path / "periodic"
    summary = generate(root, **asdict(cfg.data.synthetic_size))
    assert summary["classes"] == sorted(FAMILIES["periodic"]) and summary["labeled"] == 4 * TINY["labeled_per_class"]
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["arguments"]["family"] == "periodic" and meta["arguments"]["num_classes"] == 4
    assert (root / "classes.txt").read_text().split() == sorted(FAMILIES["periodic"])
    assert sorted(p.name for p in (root / "labeled").iterdir()) == sorted(FAMILIES["periodic"])
    # the family's size is the same dataset as 0 (all of it), through the command line too
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "num_classes"]
    assert synthetic.main(["--root", str(root), "--family", "periodic", *flags]) == 0
    assert "4 classes" in capsys.readouterr().out
    assert generate(root, **dict(TINY, num_classes=4), family="periodic")["generated"] is False
    with pytest.raises(ValueError, match="different arguments"):
        generate(root, **dict(TINY, num_classes=4))  # no family: another dataset


def test_datasets_without_a_family_keep_their_identity(tiny):
    assert "family" not in json.loads((tiny / "synthetic.json").read_text())["arguments"]
