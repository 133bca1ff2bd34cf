import subprocess
import sys

import av
import numpy as np
import pytest
import torch

from tests.upload_corpus import KINDS, build_corpus
from tests.videofiles import decoded_index, frame_coded, portrait_phone_video, write_video
from training.data import decode_short_side
from training.video import (
    DecordVideo,
    PyAVVideo,
    VideoDecodeError,
    frame_rotation,
    main_video_stream,
    open_video,
    read_frames,
    successor_indices,
    train_clip_indices,
    uniform_clip_indices,
)
from training.view_decode import ViewGeometry, cut_crops, scaled_size
from training.views import InputSpec, average_view_scores, crops_to_views, decode_test_views, normalize


def test_train_clip_indices_interval_and_wrap():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = train_clip_indices(100, clip_len=8, interval=8, rng=rng)
        assert len(idx) == 8 and (np.diff(idx) == 8).all() and idx[-1] < 100
    short = train_clip_indices(20, clip_len=8, interval=8, rng=np.random.default_rng(1))
    assert len(short) == 8 and short.max() < 20
    assert ((np.diff(short) % 20) == 8).all()  # wraps around


def test_test_clip_indices_are_uniform():
    idx = uniform_clip_indices(300, clip_len=8, interval=8, num_clips=10)
    assert idx.shape == (10, 8)
    starts = idx[:, 0]
    assert (np.diff(starts) > 0).all() and starts[0] >= 0 and idx.max() < 300
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1  # evenly spread
    # first and last clip keep the same margin to the video's ends
    assert abs(starts[0] - (300 - 1 - idx[-1, -1])) <= 2
    short = uniform_clip_indices(30, clip_len=8, interval=8, num_clips=10)
    assert short.shape == (10, 8) and short.max() < 30


def test_successor_at_video_end_is_the_frame_itself():
    idx = np.array([0, 5, 9])
    assert successor_indices(idx, stride=1, num_frames=10).tolist() == [1, 6, 9]
    assert successor_indices(idx, stride=7, num_frames=10).tolist() == [7, 5, 9]


def frames_to_views(frames: np.ndarray, *, clips: int, crops: int, crop: int) -> torch.Tensor:
    """(clips*T, H, W, 3) frames already at the test size -> views, through the decoder's crops."""
    out = np.empty((len(frames), crops, crop, crop, 3), np.uint8)
    for i, frame in enumerate(frames):
        cut_crops(frame, crop, crops, out[i])
    g = ViewGeometry(
        clips=clips,
        crops=crops,
        clip_len=len(frames) // clips,
        interval=1,
        short_side=min(frames.shape[1:3]),
        crop=crop,
    )
    return crops_to_views(out, g)


def test_scaled_size_keeps_the_aspect_ratio_and_swaps_for_rotation():
    assert scaled_size(320, 240, 0, 256) == (341, 256)
    assert scaled_size(3840, 2160, 0, 256) == (455, 256)
    assert scaled_size(3840, 2160, 90, 256) == (455, 256)  # coded size; displayed 256 x 455 after rotation
    assert scaled_size(8, 240, 0, 256) == (256, 7680)


def test_thirty_view_geometry():
    # a horizontal ramp: a left crop must be darker than the centre, the centre than the right
    frames = np.tile(np.linspace(0, 250, 128, dtype=np.float32)[None, None, :, None], (10 * 8, 64, 1, 3)).astype(
        np.uint8
    )
    frames[:8] = 0  # clip 0 is black: checks clip-major ordering
    views = frames_to_views(frames, clips=10, crops=3, crop=64)
    assert views.shape == (30, 3, 8, 64, 64)
    assert views[:3].abs().max() == 0 and views[3:].abs().max() > 0
    left, centre, right = views[3].mean(), views[4].mean(), views[5].mean()
    assert left < centre < right
    assert views[3, :, :, :, 0].mean() == pytest.approx(0, abs=1.5)  # left crop starts at the left edge
    assert views[5, :, :, :, -1].mean() == pytest.approx(250, abs=1.5)  # right crop ends at the right edge
    tall = frames_to_views(np.zeros((8, 100, 50, 3), np.uint8), clips=1, crops=3, crop=40)
    assert tall.shape == (3, 3, 8, 40, 40)


def test_decode_test_views_reads_the_sampled_frames(coded_video):
    spec = InputSpec(clip_len=4, interval=5, test_clips=3, test_crops=3, test_short_side=48, test_crop=48)
    d = decode_test_views(str(coded_video), spec, tg_stride=1)
    assert d.num_frames == 60 and d.views.shape == (9, 3, 4, 48, 48)
    expected = uniform_clip_indices(60, clip_len=4, interval=5, num_clips=3)
    for clip in range(3):
        for crop in range(3):
            got = [decoded_index(d.views[clip * 3 + crop, :, t]) for t in range(4)]
            assert got == expected[clip].tolist()
            got_next = [decoded_index(d.successors[clip * 3 + crop, :, t]) for t in range(4)]
            assert got_next == (expected[clip] + 1).tolist()
    # whole 0-255 values: the loaders' uint8 transport and the server's floats are the same pixels
    assert torch.equal(d.views, d.views.to(torch.uint8).float())
    quick = decode_test_views(
        coded_video.read_bytes(), InputSpec(clip_len=4, interval=5, short_side=48, crop_size=32), quick=True
    )
    assert quick.views.shape == (1, 3, 4, 32, 32)


def test_slow_tg_test_views_spread_over_each_clip(coded_video):
    spec = InputSpec(clip_len=4, interval=5, test_clips=2, test_crops=1, test_short_side=48, test_crop=48)
    d = decode_test_views(str(coded_video), spec, tg_stride=7, tg_spread=True)
    for clip, idx in enumerate(uniform_clip_indices(60, clip_len=4, interval=5, num_clips=2)):
        points = np.round(np.linspace(idx[0], idx[-1], 5)).astype(int).tolist()
        assert [decoded_index(d.views[clip, :, t]) for t in range(4)] == points[:-1]
        assert [decoded_index(d.successors[clip, :, t]) for t in range(4)] == points[1:]


def test_normalized_views_equal_normalizing_the_views(coded_video):
    # the model input of the server's path (normalized=True) is, bit for bit, normalize() of
    # the 0-255 views offline evaluation builds
    spec = InputSpec(clip_len=4, interval=5, test_clips=3, test_crops=3, test_short_side=40, test_crop=40)
    data = coded_video.read_bytes()
    spent = {}
    fast = decode_test_views(data, spec, normalized=True, timings=spent)
    assert torch.equal(fast.views, normalize(decode_test_views(data, spec).views, spec))
    assert fast.views.dtype == torch.float32 and fast.views.is_contiguous()
    assert set(spent) == {"decode", "views"} and all(v > 0 for v in spent.values())
    with pytest.raises(ValueError, match="temporal gradient"):
        decode_test_views(data, spec, normalized=True, tg_stride=1)


def test_average_view_scores_is_mean_softmax():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    e = np.exp(2.0)
    expected = ((e / (e + 1)) + (1 / (1 + e)) + 0.5) / 3
    assert average_view_scores(logits).tolist() == pytest.approx([expected, expected])


def test_a_sound_only_file_is_named_as_one(tmp_path):
    import av

    path = tmp_path / "voice memo.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(
        VideoDecodeError, match=r"voice memo\.mp4: not a readable video \(it has no video track, perhaps"
    ):
        open_video(str(path))


def test_unreadable_inputs_raise_named_errors(tmp_path, coded_video):
    with pytest.raises(VideoDecodeError, match="empty"):
        open_video(b"")
    with pytest.raises(VideoDecodeError, match="not a readable video"):
        open_video(b"this is not a video at all" * 10)
    data = coded_video.read_bytes()
    with pytest.raises(VideoDecodeError):
        open_video(data[: len(data) // 4])
    with pytest.raises(VideoDecodeError, match="no such file"):
        open_video(str(tmp_path / "missing.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4: empty"):
        open_video(str(tmp_path / "empty.mp4"))
    reader = open_video(data)
    frames = read_frames(reader, np.array([3, 3, 1]))
    assert [decoded_index(f) for f in frames] == [3, 3, 1]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_portrait_phone_videos_are_read_upright_frame_by_frame(tmp_path, rotation):
    """decord 0.6 fails on these (its batch read raises, its frames are garbage): every portrait
    phone video would be skipped in training."""
    path = portrait_phone_video(tmp_path / f"phone{rotation}.mp4", rotation)
    reader = open_video(str(path))
    assert len(reader) == 60 and reader.get_avg_fps() == pytest.approx(25)
    assert isinstance(reader, PyAVVideo)
    indices = np.array([41, 0, 41, 59, 17, 42])
    frames = read_frames(reader, indices, name="phone.mp4")
    assert frames.shape == (6, 64, 48, 3)  # upright: portrait
    assert (frames[:, :6] > 240).all()  # the band on top
    assert [decoded_index(f[8:]) for f in frames] == indices.tolist()
    assert reader[59].shape == (64, 48, 3) and decoded_index(reader[59][8:]) == 59
    late = read_frames(reader, np.array([52, 44, 45]))  # seeks to the key frame at 40
    assert [decoded_index(f[8:]) for f in late] == [52, 44, 45]
    assert open_video(path.read_bytes()).get_batch([5]).shape[1:3] == (64, 48)  # bytes too


def test_a_large_video_is_decoded_scaled_down_to_what_the_crops_can_use(tmp_path):
    assert decode_short_side(InputSpec(short_side=64, crop_size=56, crop_area=[0.3, 1.0])) == 119  # CPU recipe
    assert decode_short_side(InputSpec()) == 915  # the paper's 224-px crops of area 0.08 and more
    big = write_video(tmp_path / "big.mp4", frame_coded(12, height=240, width=320))
    reader = open_video(str(big), max_short_side=60)
    assert isinstance(reader, DecordVideo)
    frames = read_frames(reader, np.array([11, 0, 5]))
    assert frames.shape == (3, 60, 80, 3) and [decoded_index(f) for f in frames] == [11, 0, 5]
    assert read_frames(open_video(str(big), max_short_side=480), np.array([0])).shape == (1, 240, 320, 3)
    # the PyAV reader (a rotated phone video) scales before it turns: upright 24 x 32 (W x H)
    phone = portrait_phone_video(tmp_path / "phone.mp4", 90)
    reader = open_video(str(phone), max_short_side=24)
    assert isinstance(reader, PyAVVideo)
    frames = read_frames(reader, np.array([30, 2]))
    assert frames.shape == (2, 32, 24, 3) and (frames[:, 0] > 240).all()  # the band on top
    assert [decoded_index(f[4:]) for f in frames] == [30, 2]


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> dict:
    return {u.name: u for u in build_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.mark.parametrize("name", [k.name for k in KINDS if k.group == "valid"])
def test_training_reads_every_video_the_server_accepts_as_the_test_views_do(uploads, tmp_path, name):
    """Browser WebM, MPEG-TS, AV1, GIF, rotated phone videos, 8-px-wide frames: decord fails on
    each, and training used to skip them; it reads them, upright, frame for frame as PyAV does."""
    upload = uploads[name]
    path = tmp_path / name
    path.write_bytes(upload.data)
    with av.open(str(path), metadata_errors="replace") as container:
        stream = main_video_stream(container)
        reference = [
            np.rot90(f.to_ndarray(format="rgb24"), k=-frame_rotation(f) // 90) for f in container.decode(stream)
        ]
    reader = open_video(str(path))
    assert len(reader) == len(reference)
    indices = np.array([len(reference) - 1, 0, len(reference) // 2])
    frames = read_frames(reader, indices, name=name)
    for frame, i in zip(frames, indices, strict=True):
        assert frame.shape == reference[i].shape  # upright: a portrait video stays portrait
        # the same stream (a thumbnail track marked default too) and the same pictures; decord and
        # PyAV convert 10-bit video to 8-bit RGB a little differently (2.6 levels)
        assert np.abs(frame.astype(int) - reference[i].astype(int)).mean() < 4


def test_a_matroska_file_decord_would_abort_on_is_read(uploads, tmp_path):
    """decord aborts the whole process (std::bad_alloc) on a huge declared duration: in training,
    the run. So the reading runs in a process of its own here."""
    path = tmp_path / "huge_duration.mkv"
    path.write_bytes(uploads["huge_duration_mkv"].data)
    code = (
        "import numpy as np; from training.video import open_video, read_frames; "
        f"r = open_video({str(path)!r}); print(len(r), read_frames(r, np.array([0, len(r) - 1])).shape)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "64"


def test_ffmpeg_stays_quiet_about_an_unreadable_file(tmp_path, coded_video, capfd):
    data = coded_video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 4])  # the index (moov) is at the end: cut off
    with pytest.raises(VideoDecodeError, match="truncated.mp4: not a readable video"):
        open_video(str(truncated))
    assert "moov atom not found" not in capfd.readouterr().err
