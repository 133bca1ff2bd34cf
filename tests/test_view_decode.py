"""The upload decoder (`training.view_decode`) and its isolated helper pool (`serving.isolation`):
the input policy and its limits, each with its own code; scaled and rotated frames; a helper that
crashes, hangs, spins or runs out of memory costs its request only (a 422), is replaced, and
the pool keeps answering; a saturated pool answers 503."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest

from serving.isolation import DecodePool, HelperLimits, RejectedUpload
from tests.upload_corpus import build_corpus
from tests.videofiles import decoded_index, encode, frame_coded
from training.video import uniform_clip_indices
from training.view_decode import UPLOAD_FORMATS, DecodeLimits, VideoRejected, ViewGeometry, read_view_crops, scaled_size

GEOMETRY = ViewGeometry(clips=2, crops=3, clip_len=4, interval=2, short_side=32, crop=32)
SDP = (
    b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
)
FFCONCAT = b"ffconcat version 1.0\nfile '/etc/passwd'\n"
HLS = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n#EXTINF:10,\n/etc/passwd\n"


def moving_bar(frames: int, height: int, width: int) -> np.ndarray:
    """A white bar that moves right one step per frame on black."""
    out = np.zeros((frames, height, width, 3), np.uint8)
    for i in range(frames):
        left = i * (width - 4) // max(1, frames - 1)
        out[i, :, left : left + 4] = 255
    return out


@pytest.fixture(scope="module")
def small() -> bytes:
    return encode(frame_coded(30, 48, 64), pix_fmt="yuv444p")


@pytest.fixture(scope="module")
def slow_to_decode(tmp_path_factory) -> bytes:
    """20,000 tiny frames: ~1 s of decoding, far longer than the limits the pool tests set."""
    return next(u.data for u in build_corpus(tmp_path_factory.mktemp("corpus")) if u.name == "many_tiny_frames_mp4")


@pytest.fixture(scope="module")
def long_gop() -> bytes:
    """640x360, 600 frames of noise in one GOP: reaching its last frames means decoding them all."""
    rng = np.random.default_rng(0)
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(
            "libx264",
            rate=30,
            options={"g": "1000", "keyint_min": "1000", "crf": "40", "preset": "ultrafast", "threads": "1"},
        )
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        base = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
        for i in range(600):
            frame = np.roll(base, i * 3, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


# ----------------------------------------------------------------------------- the decoder
def test_the_sampled_frames_are_decoded_from_bytes_and_from_a_path_alike(small, tmp_path):
    got = read_view_crops(small, GEOMETRY)
    assert got.crops.shape == GEOMETRY.shape and got.info.num_frames == 30
    assert got.info.container == "mov" and got.info.codec == "h264"
    index = [decoded_index(got.crops[i, 0]) for i in range(len(got.crops))]
    assert index == uniform_clip_indices(30, clip_len=4, interval=2, num_clips=2).reshape(-1).tolist()
    path = tmp_path / "v.mp4"
    path.write_bytes(small)
    assert np.array_equal(read_view_crops(str(path), GEOMETRY).crops, got.crops)


REFUSED = ("unsupported_format", "not_a_video")  # a probed format off the allow-list / nothing FFmpeg knows


@pytest.mark.parametrize(
    "data,codes",
    [
        (SDP, REFUSED[:1]),
        (FFCONCAT, REFUSED[:1]),
        (HLS, REFUSED),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), REFUSED),
        (b"hello, this is text " * 20, REFUSED[1:]),
        (b"", ("empty_body",)),
    ],
)
def test_text_formats_that_open_sockets_or_files_are_refused_before_their_demuxer_runs(data, codes):
    before = {c.laddr for c in psutil.Process().net_connections(kind="inet")}
    t0 = time.monotonic()
    with pytest.raises(VideoRejected) as info:
        read_view_crops(data, GEOMETRY)
    assert info.value.code in codes and 400 <= info.value.status < 500
    assert time.monotonic() - t0 < 1.0  # no RTP socket waiting ~20 s
    assert {c.laddr for c in psutil.Process().net_connections(kind="inet")} <= before  # no socket opened


def test_each_limit_has_its_own_code(small):
    cases = {
        "video_too_large": DecodeLimits(max_pixels=64 * 47),
        "too_many_frames": DecodeLimits(max_frames=29),
        "video_too_long": DecodeLimits(max_duration_s=1.0),  # 30 frames at 25 fps: 1.16 s
        "aspect_ratio": DecodeLimits(max_aspect=1.2),  # 64 x 48 is 1.33
        "decode_timeout": DecodeLimits(max_seconds=0.0),
    }
    for code, limits in cases.items():
        with pytest.raises(VideoRejected) as info:
            read_view_crops(small, GEOMETRY, limits=limits)
        assert (info.value.status, info.value.code) == (422, code), info.value.detail
    read_view_crops(small, GEOMETRY, limits=DecodeLimits(max_frames=30, max_pixels=64 * 48, max_duration_s=1.2))


def test_large_frames_are_scaled_while_they_are_converted():
    data = encode(moving_bar(4, 1088, 1920))
    got = read_view_crops(data, ViewGeometry(clips=1, crops=3, clip_len=4, interval=1, short_side=64, crop=64))
    assert got.crops.shape == (4, 3, 64, 64, 3) and (got.info.width, got.info.height) == (1920, 1088)
    # the bar moves right: it is in the left crop first and in the right crop last
    assert got.crops[0, 0].mean() > got.crops[0, 2].mean() and got.crops[3, 2].mean() > got.crops[3, 0].mean()
    assert scaled_size(1920, 1088, 0, 64) == (113, 64)


def test_very_narrow_frames_are_answered_and_the_crops_stay_small():
    data = encode(moving_bar(6, 240, 8).transpose(0, 2, 1, 3).copy(), pix_fmt="yuv444p")  # 240 x 8: wide
    got = read_view_crops(data, ViewGeometry(clips=1, crops=3, clip_len=4, interval=1, short_side=32, crop=32))
    assert got.crops.shape == (4, 3, 32, 32, 3) and got.info.height == 8


def test_frames_past_the_last_decodable_one_repeat_it():
    data = encode(np.random.default_rng(0).integers(0, 256, (30, 48, 64, 3), dtype=np.uint8), faststart=True)
    mdat = data.find(b"mdat")
    cut = mdat + (len(data) - mdat) * 2 // 3
    broken = data[:cut] + bytes(len(data) - cut)  # the index lists 30 frames; the last third is zeros
    g = ViewGeometry(clips=1, crops=1, clip_len=8, interval=4, short_side=32, crop=32)
    got = read_view_crops(broken, g)
    assert got.info.num_frames == 30 and got.crops.shape == g.shape
    assert np.array_equal(got.crops[-1], got.crops[-2])  # frames 25 and 29 are both past the damage


# ----------------------------------------------------------------------------- the helpers
@pytest.fixture
def pool():
    pool = DecodePool(1, limits=HelperLimits(threads=1), queue_seconds=0.5)
    pool.wait_ready()
    yield pool
    pool.close()


def test_the_pool_answers_what_the_decoder_answers_in_process(pool, small):
    crops, info = pool.decode(small, GEOMETRY, lambda c: c.copy())
    assert np.array_equal(crops, read_view_crops(small, GEOMETRY, formats=UPLOAD_FORMATS).crops)
    assert info["num_frames"] == 30 and info["codec"] == "h264" and info["decode_ms"] > 0
    with pytest.raises(RejectedUpload) as refused:
        pool.decode(SDP, GEOMETRY, lambda c: c)
    assert (refused.value.status, refused.value.code) == (415, "unsupported_format")
    assert pool.replaced == 0  # a refusal is an answer, not a failure of the helper


def test_a_helper_that_died_while_idle_is_replaced_before_it_is_used(pool, small):
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGKILL)
    psutil.Process(victim).wait(5) if psutil.pid_exists(victim) else None
    crops, _ = pool.decode(small, GEOMETRY, lambda c: c.shape)
    assert crops == GEOMETRY.shape and pool.pids() != [victim]


def test_a_crash_during_a_job_costs_that_request_only(pool, slow_to_decode, small):
    # a helper that ends mid-job (as native code does when it aborts) is seen as a crash
    victim = pool.pids()[0]
    threading.Timer(0.1, lambda: os.kill(victim, signal.SIGABRT)).start()
    with pytest.raises(RejectedUpload) as info:
        pool.decode(
            slow_to_decode, ViewGeometry(clips=10, crops=1, clip_len=8, interval=8, short_side=16, crop=16), lambda c: c
        )
    assert (info.value.status, info.value.code) == (422, "decoder_crashed") and "SIGABRT" in info.value.detail
    assert pool.decode(small, GEOMETRY, lambda c: c.shape)[0] == GEOMETRY.shape
    assert pool.replaced == 1 and pool.pids() != [victim]


def test_a_decode_past_the_wall_limit_is_killed_and_answered_422(slow_to_decode, small):
    pool = DecodePool(1, limits=HelperLimits(threads=1, wall_seconds=0.05, decode=DecodeLimits(max_seconds=60)))
    try:
        pool.wait_ready()
        first = pool.pids()[0]
        t0 = time.monotonic()
        with pytest.raises(RejectedUpload) as info:
            pool.decode(
                slow_to_decode,
                ViewGeometry(clips=10, crops=1, clip_len=8, interval=8, short_side=16, crop=16),
                lambda c: c,
            )
        assert (info.value.status, info.value.code) == (422, "decode_timeout")
        assert time.monotonic() - t0 < 3 and first not in pool.pids()
        assert pool.decode(small, GEOMETRY, lambda c: c.shape)[0] == GEOMETRY.shape
    finally:
        pool.close()


def test_a_decode_over_its_time_budget_stops_itself_with_its_code(long_gop):
    with pytest.raises(VideoRejected) as info:
        read_view_crops(
            long_gop,
            ViewGeometry(clips=10, crops=1, clip_len=8, interval=8, short_side=64, crop=64),
            limits=DecodeLimits(max_seconds=0.01),
        )
    assert info.value.code == "decode_timeout"


def test_a_helper_over_its_memory_limit_answers_422_and_is_still_usable(small):
    data = encode(moving_bar(3, 2160, 3840))
    pool = DecodePool(1, limits=HelperLimits(threads=1, memory_mb=230))
    try:
        pool.wait_ready()
        big = ViewGeometry(clips=1, crops=3, clip_len=3, interval=1, short_side=256, crop=256)
        with pytest.raises(RejectedUpload) as info:
            pool.decode(data, big, lambda c: c)
        assert info.value.status == 422
        assert info.value.code in ("decode_memory_limit", "decoder_crashed"), info.value.detail
        assert pool.replaced == 1  # retired either way: the failure may have left memory behind
        assert pool.decode(small, GEOMETRY, lambda c: c.shape)[0] == GEOMETRY.shape
    finally:
        pool.close()
    # the same file with the default limits is answered
    assert read_view_crops(data, big).crops.shape == big.shape


def test_a_saturated_pool_answers_503(pool, small):
    held = pool.idle.get()  # the only helper is busy
    try:
        with pytest.raises(RejectedUpload) as info:
            pool.decode(small, GEOMETRY, lambda c: c)
        assert (info.value.status, info.value.code) == (503, "decoders_busy")
    finally:
        pool.idle.put(held)
    assert pool.decode(small, GEOMETRY, lambda c: c.shape)[0] == GEOMETRY.shape


def test_helpers_run_under_their_limits_without_files_or_sockets(pool):
    proc = psutil.Process(pool.pids()[0])
    assert proc.rlimit(psutil.RLIMIT_FSIZE) == (0, 0) and proc.rlimit(psutil.RLIMIT_CORE) == (0, 0)
    assert proc.rlimit(psutil.RLIMIT_AS)[0] == HelperLimits().memory_mb * 2**20
    assert proc.rlimit(psutil.RLIMIT_NOFILE)[0] <= 64
    assert proc.net_connections(kind="inet") == []


def test_portrait_phone_videos_are_turned_upright(tmp_path):
    # the corpus draws a white band along the top of the upright picture
    uploads = {u.name: u for u in build_corpus(tmp_path)}
    g = ViewGeometry(clips=1, crops=3, clip_len=2, interval=1, short_side=64, crop=64)
    for name in ("portrait_mp4", "portrait_other_way_mp4", "portrait_4k_mp4"):
        got = read_view_crops(uploads[name].data, g)
        assert got.info.rotation in (90, 270), name
        top, bottom = got.crops[0, 0], got.crops[0, 2]  # portrait: the crops run top to bottom
        assert top[:2].mean() > 200 and top[-2:].mean() < top[:2].mean() - 100, name
        assert bottom[-2:].mean() < 200, name


def test_a_video_stream_after_an_audio_stream_is_found_and_decoded():
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        audio = container.add_stream("aac", rate=16000)  # stream 0: the video is stream 1, video stream 0
        video = container.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(audio.encode(frame))
            container.mux(video.encode(av.VideoFrame.from_ndarray(moving_bar(12, 48, 64)[i], format="rgb24")))
        container.mux(audio.encode())
        container.mux(video.encode())
    got = read_view_crops(buf.getvalue(), GEOMETRY)
    assert got.crops.shape == GEOMETRY.shape and got.info.num_frames == 12 and got.info.codec == "h264"
