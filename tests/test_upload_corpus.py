"""The upload corpus is what it claims: valid uploads decode, hostile ones are what their name
says and give no video frame, bombs carry the huge value they are built around."""

from __future__ import annotations

import io
import json
import struct
import time

import av
import numpy as np
import pytest

from tests.upload_corpus import (
    BAD_UTF8_TITLE,
    CLUSTER,
    CORPUS_VERSION,
    CUES,
    DURATION,
    EBML_HEADER,
    FFCONCAT,
    HLS,
    HUGE_DURATION_MS,
    HUGE_TIMESCALE,
    INFO,
    KINDS,
    SDP,
    SEGMENT,
    TITLE,
    Upload,
    build_corpus,
    byte_flips,
    fuzz_seeds,
    mkv_elements,
    mkv_find,
    mp4_boxes,
    mp4_find,
)

NO_PROTOCOLS = {"protocol_whitelist": ""}  # nothing the file names may be opened (SDP, HLS, concat)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="session")
def corpus(corpus_dir) -> dict[str, Upload]:
    start = time.perf_counter()
    uploads = build_corpus(corpus_dir)
    print(f"build_corpus: {time.perf_counter() - start:.1f} s for {len(uploads)} uploads")
    return {u.name: u for u in uploads}


def _names(group: str) -> list[str]:
    return [k.name for k in KINDS if k.group == group]


def _open(data: bytes, **kw):
    return av.open(io.BytesIO(data), options=NO_PROTOCOLS, timeout=10, **kw)


def _decode(data: bytes, stream: int = 0, **kw) -> list[av.VideoFrame]:
    with _open(data, **kw) as container:
        return list(container.decode(container.streams.video[stream]))


def _video_frames_or_zero(data: bytes) -> int:
    """How many frames PyAV decodes from the first video stream; 0 when it cannot open the
    file, finds no video stream, has no decoder or fails on the data."""
    try:
        with _open(data) as container:
            if not container.streams.video:
                return 0
            return sum(1 for _ in container.decode(container.streams.video[0]))
    except (av.FFmpegError, UnicodeDecodeError):
        return 0


# --- the corpus as a whole ------------------------------------------------------------------


def test_corpus_shape(corpus):
    groups = [u.group for u in corpus.values()]
    assert len(corpus) == len(KINDS) >= 34
    assert groups.count("valid") >= 16 and groups.count("hostile") >= 14 and groups.count("bomb") >= 5
    assert set(groups) == {"valid", "hostile", "bomb"}
    for u in corpus.values():
        assert u.note and "\n" not in u.note, u.name
        assert u.rotation in (0, 90, 180, 270)
        assert u.rotation == 0 or u.group == "valid"
        assert len(u.data) < 2_000_000, (u.name, len(u.data))
    assert sum(len(u.data) > 200_000 for u in corpus.values()) <= 3


def test_cached_per_directory(corpus, corpus_dir):
    again = build_corpus(corpus_dir)
    assert [(u.name, u.data) for u in again] == [(u.name, corpus[u.name].data) for u in again]
    assert len(list((corpus_dir / f"upload-corpus-v{CORPUS_VERSION}").iterdir())) >= len(KINDS)


SLOW_TO_MAKE = {"long_gop_mp4", "many_tiny_frames_mp4", "portrait_4k_mp4", "hidden_large_stream_mkv"}


def test_deterministic(corpus, tmp_path):
    for kind in (k for k in KINDS if k.name not in SLOW_TO_MAKE):
        assert kind.make(tmp_path) == corpus[kind.name].data, kind.name


# --- valid ----------------------------------------------------------------------------------

# name: (codec, coded width, coded height, frames, decoded pix_fmt); None: not checked
EXPECTED = {
    "h264_mp4": ("h264", 128, 96, 16, "yuv420p"),
    "hevc_mp4": ("hevc", 128, 96, 16, "yuv420p"),
    "iphone_hevc_mov": ("hevc", 128, 96, 16, "yuv420p"),
    "vp9_webm": ("vp9", 128, 96, 16, "yuv420p"),
    "av1_mp4": ("av1", 128, 96, 16, "yuv420p"),
    "mpeg4_avi": ("mpeg4", 128, 96, 16, "yuv420p"),
    "mjpeg_avi": ("mjpeg", 128, 96, 16, "yuvj420p"),
    "mediarecorder_webm": ("vp8", 128, 96, 20, "yuv420p"),
    "h264_ts": ("h264", 128, 96, 16, "yuv420p"),
    "fragmented_mp4": ("h264", 128, 96, 32, "yuv420p"),
    "vfr_mp4": ("h264", 128, 96, 24, "yuv420p"),
    "one_frame_mp4": ("h264", 128, 96, 1, "yuv420p"),
    "two_frames_mp4": ("h264", 128, 96, 2, "yuv420p"),
    "odd_tiny_mp4": ("h264", 33, 17, 16, "yuv444p"),
    "narrow_mp4": ("h264", 8, 240, 16, "yuv420p"),
    "gray_ffv1_mkv": ("ffv1", 64, 48, 16, "gray"),
    "gray_h264_mp4": ("h264", 128, 96, 16, "yuv420p"),  # FFmpeg's h264 decoder outputs 4:0:0 as yuv420p
    "h264_10bit_mp4": ("h264", 128, 96, 16, "yuv420p10le"),
    "hevc_10bit_mp4": ("hevc", 128, 96, 16, "yuv420p10le"),
    "bad_utf8_title_mkv": ("h264", 128, 96, 16, "yuv420p"),
    "portrait_mp4": ("h264", 128, 96, 16, "yuv420p"),
    "portrait_other_way_mp4": ("h264", 128, 96, 16, "yuv420p"),
    "portrait_4k_mp4": ("h264", 3840, 2160, 10, "yuv420p"),
    "gif": ("gif", 96, 64, 16, None),
    "h264_aac_mp4": ("h264", 128, 96, 25, "yuv420p"),
    "cover_art_mkv": ("h264", 128, 96, 16, "yuv420p"),
    "thumbnail_first_mp4": ("h264", 32, 32, 1, "yuv420p"),
}


def test_every_valid_kind_has_expectations():
    assert set(EXPECTED) == set(_names("valid"))


@pytest.mark.parametrize("name", _names("valid"))
def test_valid_decodes(corpus, name):
    codec, width, height, count, pix_fmt = EXPECTED[name]
    upload = corpus[name]
    extra = {"metadata_errors": "replace"} if name == "bad_utf8_title_mkv" else {}
    with _open(upload.data, **extra) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec.canonical_name == codec
        assert (stream.width, stream.height) == (width, height)
        frames = list(container.decode(stream))
    assert len(frames) == count
    assert (frames[0].width, frames[0].height) == (width, height)
    if pix_fmt:
        assert frames[0].format.name == pix_fmt
    assert all(f.rotation % 360 == upload.rotation for f in frames)
    if count >= 2:  # something moves
        first, last = (f.to_ndarray(format="rgb24").astype(int) for f in (frames[0], frames[-1]))
        assert np.abs(first - last).mean() > 1


@pytest.mark.parametrize("name", [k.name for k in KINDS if k.rotation])
def test_rotated_upright_after_rot90(corpus, name):
    """np.rot90(frame, k=rotation // 90) is the upright portrait picture: white band on top."""
    upload = corpus[name]
    frame = _decode(upload.data)[0]
    assert frame.rotation % 360 == upload.rotation  # PyAV: counterclockwise, -180..180
    upright = np.rot90(frame.to_ndarray(format="rgb24"), k=upload.rotation // 90).mean(axis=2)
    height, width = upright.shape
    assert height > width
    strip = max(1, height // 16)
    edges = {
        "top": upright[:strip],
        "bottom": upright[-strip:],
        "left": upright[:, :strip],
        "right": upright[:, -strip:],
    }
    assert edges["top"].mean() > 235
    assert max(edges[e].mean() for e in ("bottom", "left", "right")) < 215


def test_rotation_matrix_is_the_phone_one(corpus):
    """Classic portrait phone file: tkhd {0, 1, 0, -1, 0, 0, height, 0, 1} -> PyAV -90 -> 270."""
    data = corpus["portrait_mp4"].data
    ((pos, header, _),) = mp4_find(data, "moov/trak/tkhd")
    matrix = struct.unpack_from(">9i", data, pos + header + 4 + 20 + 16)
    assert matrix == (0, 1 << 16, 0, -(1 << 16), 0, 0, 96 << 16, 0, 1 << 30)
    assert _decode(data)[0].rotation == -90


def test_mediarecorder_webm_has_no_duration_no_cues(corpus):
    data = corpus["mediarecorder_webm"].data
    with _open(data) as container:
        assert container.duration is None
        assert [s.codec_context.codec.canonical_name for s in container.streams] == ["vp8", "opus"]
    assert struct.pack(">I", CUES) not in data
    assert mkv_find(data, SEGMENT, INFO, DURATION) is None
    segment = mkv_find(data, SEGMENT)
    top = list(mkv_elements(data, *segment))  # stops at the first unknown-size element
    assert CUES not in [e[0] for e in top] and top[-1][0] == CLUSTER and top[-1][3] == len(data)
    assert data[segment[0] - 8 : segment[0]] == b"\x01" + b"\xff" * 7  # Segment size unknown
    assert data.count(struct.pack(">I", CLUSTER)) >= 2


def test_fragmented_mp4_has_fragments(corpus):
    data = corpus["fragmented_mp4"].data
    kinds = [kind for kind, *_ in mp4_boxes(data)]
    assert kinds.count(b"moof") >= 2 and mp4_find(data, "moov/mvex")


def test_vfr_has_irregular_timestamps(corpus):
    pts = [f.time for f in _decode(corpus["vfr_mp4"].data)]
    steps = np.round(np.diff(pts), 3)
    assert len(set(steps.tolist())) >= 3 and (steps > 0).all()


def test_gray_h264_is_monochrome(corpus):
    frame = _decode(corpus["gray_h264_mp4"].data)[0]
    chroma = frame.to_ndarray(format="yuv444p")[1:]
    assert np.abs(chroma.astype(int) - 128).max() <= 1


def test_bad_title_is_invalid_utf8(corpus):
    data = corpus["bad_utf8_title_mkv"].data
    start, end = mkv_find(data, SEGMENT, INFO, TITLE)
    assert data[start:end] == BAD_UTF8_TITLE
    with pytest.raises(UnicodeDecodeError):
        BAD_UTF8_TITLE.decode()
    with pytest.raises(UnicodeDecodeError):  # PyAV's default metadata_errors="strict"
        _open(data)


def test_audio_and_extra_streams(corpus):
    with _open(corpus["h264_aac_mp4"].data) as container:
        assert [s.type for s in container.streams] == ["video", "audio"]
        assert container.streams.audio[0].codec_context.codec.canonical_name == "aac"
    with _open(corpus["cover_art_mkv"].data) as container:
        cover = container.streams.video[1]
        assert cover.disposition & av.stream.Disposition.attached_pic and (cover.width, cover.height) == (32, 32)
    frames = _decode(corpus["thumbnail_first_mp4"].data, stream=1)
    assert len(frames) == 16 and (frames[0].width, frames[0].height) == (128, 96)
    with _open(corpus["iphone_hevc_mov"].data) as container:
        assert container.streams.video[0].codec_tag == "hvc1"
        assert [kind for kind, *_ in mp4_boxes(corpus["iphone_hevc_mov"].data)][0] == b"ftyp"


# --- hostile --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in _names("hostile") if n not in {"png_image", "jpeg_image"}])
def test_hostile_gives_no_video_frame(corpus, name):
    assert _video_frames_or_zero(corpus[name].data) == 0


@pytest.mark.parametrize(
    ("name", "demuxer", "magic"),
    [("png_image", "png_pipe", b"\x89PNG\r\n\x1a\n"), ("jpeg_image", "jpeg_pipe", b"\xff\xd8")],
)
def test_images_are_images(corpus, name, demuxer, magic):
    """FFmpeg opens a still image as a 1-frame video: the server must refuse it by format."""
    data = corpus[name].data
    assert data.startswith(magic)
    with _open(data) as container:
        assert container.format.name == demuxer
    assert len(_decode(data)) == 1


def test_text_kinds_are_what_they_say(corpus):
    assert corpus["empty"].data == b""
    assert len(corpus["garbage_4k"].data) == 4096
    for name in ("plain_text", "json", "html", "sdp_text", "ffconcat", "hls_playlist", "srt_subtitles"):
        corpus[name].data.decode("ascii")
    json.loads(corpus["json"].data)
    assert corpus["html"].data.startswith(b"<!DOCTYPE html>")
    sdp = corpus["sdp_text"].data
    assert sdp == SDP and 100 <= len(sdp) <= 130 and sdp.startswith(b"v=0\n") and b"m=video" in sdp
    assert corpus["ffconcat"].data == FFCONCAT
    assert corpus["hls_playlist"].data == HLS and b"http://127.0.0.1:9/x.ts" in HLS and b"/etc/passwd" in HLS
    assert b" --> " in corpus["srt_subtitles"].data


def test_audio_only_kinds(corpus):
    for name, codec in (("wav_audio", "pcm_s16le"), ("aac_only_m4a", "aac")):
        with _open(corpus[name].data) as container:
            assert [s.type for s in container.streams] == ["audio"], name
            assert container.streams.audio[0].codec_context.codec.name == codec
    assert corpus["wav_audio"].data[:4] == b"RIFF" and corpus["wav_audio"].data[8:12] == b"WAVE"


def test_unknown_fourcc_avi_has_no_decoder(corpus):
    data = corpus["unknown_fourcc_avi"].data
    assert data.count(b"XXXX") == 2
    with _open(data) as container:
        stream = container.streams.video[0]
        assert stream.codec_context is None
        with pytest.raises(av.DecoderNotFoundError):
            next(container.decode(stream))


def test_truncated_mp4s(corpus):
    data = corpus["truncated_mp4"].data
    assert b"moov" not in [kind for kind, *_ in mp4_boxes(data)]
    data = corpus["truncated_faststart_mp4"].data
    boxes = {kind: (pos, size) for kind, pos, _, size in mp4_boxes(data)}
    assert b"moov" in boxes and b"mdat" not in boxes  # mdat's declared size runs past the end
    mdat = data.index(b"mdat") - 4
    assert struct.unpack_from(">I", data, mdat)[0] > len(data) - mdat
    with _open(data) as container:
        assert container.streams.video[0].frames == 32


def test_header_only_kinds(corpus):
    data = corpus["ftyp_zeros"].data
    assert data[4:8] == b"ftyp" and not any(data[struct.unpack_from(">I", data)[0] :])
    data = corpus["ebml_header_only"].data
    elements = list(mkv_elements(data))
    assert [e[0] for e in elements] == [EBML_HEADER] and elements[0][3] == len(data)
    assert b"matroska" in data


# --- bombs ----------------------------------------------------------------------------------


def test_huge_duration_mkv(corpus):
    data = corpus["huge_duration_mkv"].data
    assert 10_000 < len(data) < 40_000
    start, end = mkv_find(data, SEGMENT, INFO, DURATION)
    assert struct.unpack(">d", data[start:end]) == (HUGE_DURATION_MS,)
    with _open(data) as container:
        assert container.duration >= HUGE_DURATION_MS * 1000 * 0.99  # microseconds
    assert len(_decode(data)) == 64


def test_huge_dims_mp4(corpus):
    data = corpus["huge_dims_mp4"].data
    ((pos, header, _),) = mp4_find(data, "moov/trak/mdia/minf/stbl/stsd/avc1")
    assert struct.unpack_from(">HH", data, pos + header + 24) == (65535, 65535)
    ((pos, header, size),) = mp4_find(data, "moov/trak/tkhd")
    assert struct.unpack_from(">II", data, pos + size - 8) == (65535 << 16, 65535 << 16)
    frames = _decode(data)  # the SPS still says 128x96
    assert (frames[0].width, frames[0].height) == (128, 96)


def test_hidden_large_stream(corpus):
    with _open(corpus["hidden_large_stream_mkv"].data) as container:
        small, large = container.streams.video
        assert (small.width, small.height, large.width, large.height) == (64, 48, 4096, 2304)
        assert small.disposition & av.stream.Disposition.default
        assert not large.disposition & av.stream.Disposition.default
        assert sum(1 for p in container.demux(large) if p.size) == 4


def _packets(data: bytes) -> list[av.Packet]:
    with _open(data) as container:
        return [p for p in container.demux(container.streams.video[0]) if p.size]


def test_long_gop(corpus):
    packets = _packets(corpus["long_gop_mp4"].data)
    assert len(packets) == 900 and sum(p.is_keyframe for p in packets) == 1


def test_many_tiny_frames(corpus):
    assert len(_packets(corpus["many_tiny_frames_mp4"].data)) == 20_000


def test_huge_fps(corpus):
    data = corpus["huge_fps_mp4"].data
    ((pos, header, _),) = mp4_find(data, "moov/trak/mdia/mdhd")
    assert struct.unpack_from(">I", data, pos + header + 12)[0] == HUGE_TIMESCALE
    with _open(data) as container:
        assert container.streams.video[0].average_rate > 1_000_000
    assert len(_decode(data)) == 16


# --- fuzzing helpers ------------------------------------------------------------------------


def test_fuzz_seeds(corpus_dir):
    seeds = fuzz_seeds(corpus_dir)
    assert set(seeds) == {"mp4", "mkv", "webm"}
    for ext, data in seeds.items():
        frames = _decode(data)
        assert len(frames) == 25 and (frames[0].width, frames[0].height) == (96, 64), ext
        assert len(data) < 50_000
    assert fuzz_seeds(corpus_dir) == seeds


def test_byte_flips():
    data = bytes(range(256)) * 40  # 10,240 bytes
    variants = byte_flips(data, 20, rate=0.001, seed=3, keep_head=100)
    assert len(variants) == 20 and len(set(variants)) == 20
    assert variants == byte_flips(data, 20, rate=0.001, seed=3, keep_head=100)
    assert variants != byte_flips(data, 20, rate=0.001, seed=4, keep_head=100)
    assert byte_flips(data, 5, seed=3, keep_head=100) == variants[:5]
    for variant in variants:
        assert len(variant) == len(data) and variant[:100] == data[:100]
        assert sum(a != b for a, b in zip(variant, data, strict=True)) == 10
    (one,) = byte_flips(b"abc", 1, rate=0.001)
    assert sum(a != b for a, b in zip(one, b"abc", strict=True)) == 1
    with pytest.raises(ValueError):
        byte_flips(b"abc", 1, keep_head=3)
