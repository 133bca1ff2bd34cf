from pathlib import Path

import numpy as np
import pytest
import torch

import training.data
from tests.videofiles import decoded_index, frame_coded, portrait_phone_video, write_video
from training.augment import split_modalities, temporal_gradient
from training.config import ConfigError, DataConfig
from training.data import (
    EvalClips,
    ListResolver,
    SeededSampler,
    TrainClips,
    VideoItem,
    collate_skipping,
    make_labeled_split,
    read_folder_layout,
    read_video_list,
    resolve_splits,
    weak_geometric,
)
from training.video import open_video, read_frames
from training.views import InputSpec

SPEC = InputSpec(
    clip_len=4,
    interval=3,
    short_side=48,
    crop_size=32,
    crop_area=[0.2, 1.0],
    test_clips=2,
    test_crops=3,
    test_short_side=48,
    test_crop=48,
)


def test_weak_view_is_identical_for_frames_and_successors():
    # successors = frames + 40: if both got the same crop box, resize and flip, the outputs
    # differ by exactly 40 everywhere (all three operations are linear)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, size=(4, 48, 64, 3)).astype(np.uint8)
    for seed in range(10):
        out = weak_geometric(np.concatenate([base, base + 40]), SPEC, np.random.default_rng(seed)).float()
        assert out.shape == (8, 3, 32, 32)
        assert torch.allclose(out[4:] - out[:4], torch.full_like(out[:4], 40.0), atol=1.0)


def test_weak_view_varies_crop_and_flip_between_clips():
    frame = np.tile(np.arange(64, dtype=np.uint8)[None, None, :, None] * 3, (1, 48, 1, 3))
    outs = {tuple(weak_geometric(frame, SPEC, np.random.default_rng(s))[0, 0, 0, [0, -1]].tolist()) for s in range(20)}
    assert len(outs) > 5
    assert any(a > b for a, b in outs) and any(a < b for a, b in outs)  # some flipped, some not


def test_temporal_gradient_values():
    cur = torch.tensor([0.0, 255.0, 100.0, 30.0])
    nxt = torch.tensor([255.0, 0.0, 100.0, 10.0])
    assert temporal_gradient(cur, nxt).tolist() == [0.0, 255.0, 127.5, 137.5]
    frames = torch.randint(0, 256, (2, 2, 3, 4, 8, 8), dtype=torch.uint8)
    rgb, tg = split_modalities(frames)
    assert rgb.shape == tg.shape == (2, 3, 4, 8, 8)
    assert torch.equal(tg, (frames[:, 0].float() - frames[:, 1].float() + 255) / 2)


def test_train_clips_sample_frames_and_their_successors(tmp_path):
    write_video(tmp_path / "a.mp4", frame_coded(40))
    for stride in (1, 7):
        ds = TrainClips([VideoItem("a.mp4", 2)], tmp_path, SPEC, tg_stride=stride)
        for epoch in range(3):
            item = ds[(0, (0, epoch, 0))]
            x = item["frames"]
            assert x.shape == (2, 3, 4, 32, 32) and x.dtype == torch.uint8 and item["label"] == 2
            cur = [decoded_index(x[0, :, t]) for t in range(4)]
            nxt = [decoded_index(x[1, :, t]) for t in range(4)]
            assert np.diff(cur).tolist() == [3, 3, 3]
            assert [n - c for c, n in zip(cur, nxt, strict=True)] == [stride] * 4
    again = ds[(0, (0, 2, 0))]["frames"]
    assert torch.equal(again, ds[(0, (0, 2, 0))]["frames"])  # a sample depends only on its seed


def test_corrupt_videos_are_replaced_counted_and_reported(tmp_path):
    write_video(tmp_path / "good.mp4", frame_coded(30))
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    (tmp_path / "empty.mp4").write_bytes(b"")
    items = [VideoItem("bad.mp4", 0), VideoItem("good.mp4", 1), VideoItem("empty.mp4", 0)]
    ds = TrainClips(items, tmp_path, SPEC, tg_stride=1)
    batch = collate_skipping([ds[(i, (0, 0, i))] for i in range(3)])
    assert batch["frames"].shape[0] == 3  # batch size kept
    skipped = {p for p, _ in batch["skipped"]}
    assert skipped == {"bad.mp4", "empty.mp4"}
    assert all("bad.mp4" in e or "empty" in e for _, e in batch["skipped"])
    ev = EvalClips(items, tmp_path, SPEC, tg_stride=None, quick=False)
    out = collate_skipping([ev[i] for i in range(3)])
    assert out["views"].shape == (1, 6, 3, 4, 48, 48) and len(out["skipped"]) == 2
    with pytest.raises(RuntimeError, match="unreadable videos in a row"):
        TrainClips([VideoItem("bad.mp4", 0)], tmp_path, SPEC, tg_stride=1)[(0, (0, 0, 0))]


def test_a_video_that_cannot_be_opened_is_not_opened_again_but_still_counted(tmp_path, monkeypatch):
    write_video(tmp_path / "good.mp4", frame_coded(30))
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    items = [VideoItem("bad.mp4", 0), VideoItem("good.mp4", 1)]
    opened: list[str] = []
    real_open = training.data.open_video

    def counting_open(path, **kwargs):
        opened.append(Path(path).name)
        return real_open(path, **kwargs)

    monkeypatch.setattr(training.data, "open_video", counting_open)
    ds = TrainClips(items, tmp_path, SPEC, tg_stride=1)
    first, second = ds[(0, (0, 0, 0))], ds[(0, (0, 0, 0))]  # two passes of one loader worker
    assert opened == ["bad.mp4", "good.mp4", "good.mp4"]
    assert first["skipped"] == second["skipped"] and [p for p, _ in first["skipped"]] == ["bad.mp4"]
    # a worker that starts afresh (a resumed run) opens it, fails, and draws the same clip
    fresh = TrainClips(items, tmp_path, SPEC, tg_stride=1)[(0, (0, 0, 0))]
    assert fresh["skipped"] == first["skipped"] and torch.equal(fresh["frames"], second["frames"])


def test_a_portrait_phone_video_trains_upright_and_its_rotation_is_probed_once(tmp_path, monkeypatch):
    path = portrait_phone_video(tmp_path / "phone.mp4", 90)
    probed: list[str] = []
    real_probe = training.data.probe_video

    def counting_probe(source):
        probed.append(Path(source).name)
        return real_probe(source)

    monkeypatch.setattr(training.data, "probe_video", counting_probe)
    ds = TrainClips([VideoItem(path.name, 0)], tmp_path, SPEC, tg_stride=1)
    first, second = ds[(0, (0, 0, 0))], ds[(0, (0, 1, 0))]
    assert first["skipped"] == [] and second["skipped"] == []
    assert probed == ["phone.mp4"]  # once per process, not per clip
    # the clip is upright: its frames are portrait before the square crop, the band on top
    frames = read_frames(open_video(str(path)), np.array([0, 1]))
    assert frames.shape[1:3] == (64, 48) and (frames[:, :6] > 240).all()


def test_video_lists_parse_and_errors_name_the_line(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a/x.mp4 1\nb/y.avi 0\n\nc/z.mp4\n")
    items = read_video_list(lst, num_classes=2, require_labels=False)
    assert items == [VideoItem("a/x.mp4", 1), VideoItem("b/y.avi", 0), VideoItem("c/z.mp4", -1)]
    with pytest.raises(ConfigError, match=r"l\.txt:4: a label is required"):
        read_video_list(lst, num_classes=2, require_labels=True)
    lst.write_text("a/x.mp4 7\n")
    with pytest.raises(ConfigError, match=r"l\.txt:1: label 7 outside"):
        read_video_list(lst, num_classes=2, require_labels=False)


def test_labeled_split_by_ratio_and_per_class_is_seeded():
    items = [VideoItem(f"c{c}/{i}.mp4", c) for c in range(3) for i in range(20)]
    a = make_labeled_split(items, num_classes=3, ratio=0.1, seed=1)
    assert len(a) == 6 and all(sum(it.label == c for it in a) == 2 for c in range(3))
    assert a == make_labeled_split(items, num_classes=3, ratio=0.1, seed=1)
    assert a != make_labeled_split(items, num_classes=3, ratio=0.1, seed=2)
    b = make_labeled_split(items, num_classes=3, per_class=6, seed=0)
    assert len(b) == 18


def test_drawn_split_is_saved_and_reused(tmp_path):
    root = tmp_path / "d"
    (root / "lists").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    (root / "lists" / "train.txt").write_text("".join(f"v{i}.mp4 {i % 2}\n" for i in range(20)))
    (root / "lists" / "val.txt").write_text("w.mp4 0\n")
    run = tmp_path / "run"
    cfg = DataConfig(root=str(root), labeled_ratio=0.2, split_seed=3)
    first = resolve_splits(cfg, run)
    assert (run / "splits" / "labeled.txt").is_file() and (run / "splits" / "split.json").is_file()
    assert len(first.labeled) == 4 and len(first.unlabeled) == 20  # unlabeled = whole training list
    cfg.split_seed = 99  # a resumed run keeps the split it was started with
    assert resolve_splits(cfg, run).labeled == first.labeled


def touch_files(root: Path, paths: list[str]) -> None:
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"x")


def test_folder_layout(tmp_path):
    touch_files(
        tmp_path,
        [
            "labeled/walk/a.mp4",
            "labeled/run/b.avi",
            "unlabeled/x/c.mp4",
            "unlabeled/d.webm",
            "val/run/e.mp4",
            "labeled/run/notes.txt",
        ],
    )
    classes, labeled, unlabeled, val = read_folder_layout(tmp_path)
    assert classes == ["run", "walk"]
    assert labeled == [VideoItem("labeled/run/b.avi", 0), VideoItem("labeled/walk/a.mp4", 1)]
    assert unlabeled == [VideoItem("unlabeled/d.webm", -1), VideoItem("unlabeled/x/c.mp4", -1)]
    assert val == [VideoItem("val/run/e.mp4", 0)]
    splits = resolve_splits(DataConfig(root=str(tmp_path), format="folder"), None)
    assert len(splits.unlabeled) == 4  # labeled videos are part of the unlabeled set
    (tmp_path / "val" / "swim").mkdir()
    with pytest.raises(ConfigError, match="swim"):
        read_folder_layout(tmp_path)


def test_folder_layout_takes_names_with_spaces_and_skips_hidden_clutter(tmp_path):
    # Class folders are often phrases ("Wave Hand"). Copies from a Mac or a notebook bring
    # ._resource forks and .ipynb_checkpoints/, which are never a class or a video.
    touch_files(
        tmp_path,
        [
            "labeled/Wave Hand/take 1.mp4",
            "labeled/Wave Hand/._take 1.mp4",
            "labeled/clap/a.mp4",
            "labeled/.ipynb_checkpoints/b.mp4",
            "unlabeled/day 2/c.mov",
            "unlabeled/.cache/d.mp4",
            "val/Wave Hand/e.mp4",
            "val/.Trash/f.mp4",
        ],
    )
    classes, labeled, unlabeled, val = read_folder_layout(tmp_path)
    assert classes == ["Wave Hand", "clap"]
    assert labeled == [VideoItem("labeled/Wave Hand/take 1.mp4", 0), VideoItem("labeled/clap/a.mp4", 1)]
    assert unlabeled == [VideoItem("unlabeled/day 2/c.mov", -1)]
    assert val == [VideoItem("val/Wave Hand/e.mp4", 0)]


def test_folder_layout_lists_every_container_the_server_accepts(tmp_path):
    names = ["a.MP4", "b.m4v", "c.mov", "d.3gp", "e.mkv", "f.webm", "g.avi", "h.ts", "i.MTS", "j.m2ts", "k.gif"]
    touch_files(
        tmp_path,
        ["labeled/clap/x.mp4", "labeled/wave/x.mp4", *(f"unlabeled/{n}" for n in names), "unlabeled/cover.jpg"],
    )
    _, _, unlabeled, _ = read_folder_layout(tmp_path)
    assert [it.path for it in unlabeled] == [f"unlabeled/{n}" for n in names]


def test_seeded_sampler_shards_and_repeats_small_sets():
    s0, s1 = SeededSampler(10, rank=0, world_size=2, seed=1), SeededSampler(10, rank=1, world_size=2, seed=1)
    a, b = [i for i, _ in s0], [i for i, _ in s1]
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    assert [k for k in s0] == [k for k in s0]  # deterministic per epoch
    s0.set_epoch(1)
    assert [i for i, _ in s0] != a
    small = SeededSampler(3, seed=0, min_per_rank=8)
    assert len(list(small)) == 8 and set(i for i, _ in small) == {0, 1, 2}


# ----------------------------------------------------------------------------- published list formats
def test_list_formats_path_label_frames_and_extensionless(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("\ufeffA/v_a 120 1\r\nB/v_b.avi 0\nC\\v_c.mp4\n")  # rawframes, videos, unlabeled (BOM, CRLF)
    assert read_video_list(lst, num_classes=2, require_labels=False) == [
        VideoItem("A/v_a", 1),
        VideoItem("B/v_b.avi", 0),
        VideoItem("C/v_c.mp4", -1),
    ]
    for bad, message in (
        ("a 1 2 3\n", "expected 'path \\[num_frames\\] label'"),
        ("a 12 x\n", "frame count and a label"),
        ("a -3 1\n", "frame count -3"),
    ):
        lst.write_text(bad)
        with pytest.raises(ConfigError, match=message):
            read_video_list(lst, num_classes=2, require_labels=False)


def _tree(root, paths):
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"x")


def test_resolver_finds_published_entries_under_the_dataset_root(tmp_path):
    _tree(
        tmp_path,
        [
            "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi",
            "UCF-101/YoYo/v_YoYo_g01_c01.avi",
            "hmdb51/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
            "train/air_drumming/-def456uvw_000005_000015.mkv",
            "val/zumba/val0000001a_000003_000013.mp4",
        ],
    )
    r = ListResolver(tmp_path)
    r.add_known(
        ["UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi", "train/air_drumming/-def456uvw_000005_000015.mkv"]
    )
    assert r.resolve("UCF-101/YoYo/v_YoYo_g01_c01.avi") == "UCF-101/YoYo/v_YoYo_g01_c01.avi"  # as is
    # VideoSSL rawframes (UCF-101): no extension, relative to the frames folder, other case
    assert (
        r.resolve("HandstandPushups/v_HandstandPushups_g01_c01")
        == "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi"
    )
    # K400's _videos.txt variant: .mp4 named, .mkv on disk, under train/
    assert r.resolve("air_drumming/-def456uvw_000005_000015.mp4") == "train/air_drumming/-def456uvw_000005_000015.mkv"
    # not in the known list: found on disk under a top-level folder (HMDB-51, a K400 val entry)
    assert (
        r.resolve("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0")
        == "hmdb51/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi"
    )
    assert r.resolve("zumba/val0000001a_000003_000013.mp4") == "val/zumba/val0000001a_000003_000013.mp4"
    assert r.resolve("YoYo/v_YoYo_g99_c01") is None
    items, missing = r.resolve_items([VideoItem("YoYo/v_YoYo_g01_c01", 2), VideoItem("YoYo/v_YoYo_g99_c01", 2)])
    assert items == [VideoItem("UCF-101/YoYo/v_YoYo_g01_c01.avi", 2), VideoItem("YoYo/v_YoYo_g99_c01", 2)]
    assert missing == ["YoYo/v_YoYo_g99_c01"]


def test_labels_that_disagree_with_their_folders_are_an_error(tmp_path):
    root = tmp_path / "d"
    _tree(root, [f"UCF-101/{c}/v_{c}_g01_c01.avi" for c in ("A", "B", "C")])
    (root / "classes.txt").write_text("A\nB\nC\n")
    (root / "lists").mkdir()
    (root / "lists/train.txt").write_text("".join(f"UCF-101/{c}/v_{c}_g01_c01.avi {i}\n" for i, c in enumerate("ABC")))
    (root / "lists/val.txt").write_text("UCF-101/A/v_A_g01_c01.avi 0\n")
    (root / "one_based.txt").write_text("A/v_A_g01_c01 20 1\nB/v_B_g01_c01 20 2\n")  # labels + 1
    with pytest.raises(ConfigError, match=r"2 of 2 labels disagree.*1-based"):
        resolve_splits(DataConfig(root=str(root), labeled_list="one_based.txt"), None)
    (root / "ok.txt").write_text("A/v_A_g01_c01 20 0\nB/v_B_g01_c01 20 1\nC/v_C_g02_c01 20 2\n")
    splits = resolve_splits(DataConfig(root=str(root), labeled_list="ok.txt"), None)
    assert [it.path for it in splits.labeled][:2] == ["UCF-101/A/v_A_g01_c01.avi", "UCF-101/B/v_B_g01_c01.avi"]
    assert splits.missing == {"labeled": ["C/v_C_g02_c01"]}


def test_slow_tg_spread_over_the_clip_as_the_authors(tmp_path):
    """SampleFrames_WithDiff: T + 1 frames at round(linspace(first, last)) of the clip, TG between
    neighbours; the RGB clip itself is unchanged."""
    write_video(tmp_path / "a.mp4", frame_coded(40))
    ds = TrainClips([VideoItem("a.mp4", 0)], tmp_path, SPEC, tg_stride=7, tg_spread=True)
    for epoch in range(3):
        x = ds[(0, (0, epoch, 0))]["frames"]
        assert x.shape == (3, 3, 4, 32, 32)
        rgb, first, second = ([decoded_index(x[k, :, t]) for t in range(4)] for k in range(3))
        assert np.diff(rgb).tolist() == [3, 3, 3]
        points = np.round(np.linspace(rgb[0], rgb[-1], 5)).astype(int).tolist()
        assert first == points[:-1] and second == points[1:]
    rgb, tg = split_modalities(x[None])
    assert torch.equal(tg[0], (x[1].float() - x[2].float() + 255) / 2) and torch.equal(rgb[0], x[0].float())
    offset = TrainClips([VideoItem("a.mp4", 0)], tmp_path, SPEC, tg_stride=7, tg_spread=False)[(0, (0, 0, 0))]["frames"]
    assert offset.shape[0] == 2  # tg.slow=offset: frame t and t + 7, as before
