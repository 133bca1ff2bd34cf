"""Video uploads a public action-recognition endpoint gets from strangers, generated at test time.

Three groups (see DESIGN.md, "Hostile uploads"):

- ``valid``: videos people really send (phones, browsers, screen recorders, converters). A
  correct decoder answers every one with a prediction.
- ``hostile``: things that are not a decodable video (images, text, playlists that name other
  files or hosts, audio only, truncated or unknown-codec files). The server must refuse them
  with a 4xx, quickly.
- ``bomb``: small files that declare or contain something huge (duration, frame size, frame
  count, frame rate, a long GOP, a hidden large stream). The server must give a bounded
  answer (4xx or 200): no 5xx, no worker death, bounded time and memory.

Everything is written with PyAV (no ffmpeg CLI) plus byte patching with the small box /
element / chunk walkers below, seeded, so the corpus is the same bytes on every run. Files
are cached under ``workdir/upload-corpus-v<CORPUS_VERSION>/``: a second call reads them back.

Rotation convention (``Upload.rotation``): the counterclockwise angle in degrees, modulo 360,
that PyAV's ``VideoFrame.rotation`` reports for the decoded frames (FFmpeg's
``av_display_rotation_get`` on the display matrix). ``np.rot90(decoded_hwc, k=rotation // 90)``
gives the upright picture. Measured with PyAV 18.1 / FFmpeg 8.1: the classic phone-portrait
tkhd matrix {0, 1, 0, -1, 0, 0, tx, 0, 1} (the old ``rotate=90`` tag, "turn 90 degrees
clockwise to display") reads ``frame.rotation == -90``, so ``Upload.rotation == 270``. Rotated
uploads draw a white band along the top edge of the upright picture so a test can check the
orientation, not only the shape.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CORPUS_VERSION = 1


@dataclass(frozen=True)
class Upload:
    name: str  # short unique id, e.g. "h264_mp4", "sdp_text"
    group: str  # "valid" | "hostile" | "bomb"
    data: bytes
    note: str  # one line: what it is and why it is in the corpus
    rotation: int = 0  # valid files: display rotation a decoder must apply (module docstring)


# ---------------------------------------------------------------------------------------------
# Pictures: a moving square on a blocky textured background (so every video has motion).


def _pictures(n: int, width: int, height: int, *, seed: int = 0, top_band: bool = False) -> Iterator[np.ndarray]:
    """`n` RGB frames (height, width, 3). `top_band` paints the top eighth white and keeps the
    square below it: the orientation marker of the rotated uploads."""
    rng = np.random.default_rng(seed)
    cell = max(2, min(width, height) // 6)
    colors = rng.integers(40, 200, size=((height + cell - 1) // cell, (width + cell - 1) // cell, 3), dtype=np.uint8)
    background = np.repeat(np.repeat(colors, cell, axis=0), cell, axis=1)[:height, :width]
    band = height // 8 if top_band else 0
    if band:
        background[:band] = 255
    side = max(2, min(width, height - band) // 4)
    for i in range(n):
        frame = background.copy()
        x = int((width - side) * (0.5 + 0.5 * np.sin(0.3 * i + seed)))
        y = band + int((height - band - side) * (0.5 + 0.5 * np.cos(0.21 * i + seed)))
        frame[y : y + side, x : x + side] = (250, 250, 30)
        yield frame


# ---------------------------------------------------------------------------------------------
# Writing containers with PyAV.

# Fast, single-threaded (deterministic) encoder settings; a kind overrides what it needs.
_ENCODER_OPTIONS = {
    # mbtree=0: x264's macroblock-tree rate control gave different bitstreams for identical frames
    # in this build even with one thread (measured), so a kind would not be byte-reproducible
    "libx264": {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=error:pools=none:frame-threads=1"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "threads": "1"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "threads": "1"},
    "libsvtav1": {"preset": "10"},
}
_LAVC_BITEXACT = {"flags": "+bitexact"}  # FFmpeg's own encoders: no version string in the output


@dataclass
class _Video:
    codec: str
    width: int  # coded size
    height: int
    frames: int = 16
    pix_fmt: str = "yuv420p"
    options: dict[str, str] = field(default_factory=dict)
    rate: int = 25
    seed: int = 0
    rotation: int = 0  # draw an upright picture that needs this Upload.rotation to show upright
    pts_ms: Sequence[int] | None = None  # irregular timestamps in ms (variable frame rate)
    codec_tag: str | None = None
    default: bool | None = None  # disposition "default" (None: the muxer decides)


@dataclass
class _Audio:
    codec: str
    seconds: float = 1.0
    sample_rate: int = 48000


class _NonSeekable(io.RawIOBase):
    """A write-only pipe: what a browser's MediaRecorder stream looks like to the muxer, which
    then cannot go back to write Duration, SeekHead or Cues."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:
        self.data += b
        return len(b)

    def seek(self, *args):
        raise io.UnsupportedOperation("not seekable")

    def tell(self) -> int:
        return len(self.data)


def _video_frames(spec: _Video) -> Iterator[av.VideoFrame]:
    k = spec.rotation // 90
    if k % 2:  # the upright picture is the coded one turned by 90 degrees
        upright = _pictures(spec.frames, spec.height, spec.width, seed=spec.seed, top_band=True)
    else:
        upright = _pictures(spec.frames, spec.width, spec.height, seed=spec.seed, top_band=bool(k))
    for i, picture in enumerate(upright):
        # np.rot90(coded, k) must give the upright picture, so coded = np.rot90(upright, -k)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(picture, -k)), format="rgb24")
        if spec.pts_ms is not None:
            frame.pts, frame.time_base = spec.pts_ms[i], Fraction(1, 1000)
        yield frame


def _add_video(container, spec: _Video):
    stream = container.add_stream(spec.codec, rate=spec.rate)
    stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
    stream.options = {**_ENCODER_OPTIONS.get(spec.codec, _LAVC_BITEXACT), **spec.options}
    if spec.pts_ms is not None:
        stream.codec_context.time_base = Fraction(1, 1000)
    if spec.codec_tag:
        stream.codec_tag = spec.codec_tag
    if spec.default is not None:
        stream.disposition = av.stream.Disposition.default if spec.default else av.stream.Disposition(0)
    return stream


def _add_audio(container, spec: _Audio):
    stream = container.add_stream(spec.codec, rate=spec.sample_rate)
    stream.layout = "mono"
    return stream


def _audio_frames(spec: _Audio) -> Iterator[av.AudioFrame]:
    n, chunk = int(spec.seconds * spec.sample_rate), 1024
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / spec.sample_rate)).astype(np.float32)
    for start in range(0, n, chunk):
        frame = av.AudioFrame.from_ndarray(tone[None, start : start + chunk], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = spec.sample_rate, start, Fraction(1, spec.sample_rate)
        yield frame


def _mux(
    fmt: str,
    *specs: _Video | _Audio,
    options: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    target: str | Path = "memory",
) -> bytes:
    """Encode `specs` into one `fmt` container and return its bytes. `target`: "memory"
    (seekable BytesIO), "pipe" (non-seekable) or a Path (for muxer options that reopen the
    file, like movflags=faststart)."""
    out = io.BytesIO() if target == "memory" else _NonSeekable() if target == "pipe" else str(target)
    with av.open(out, "w", format=fmt, options={"fflags": "+bitexact", **(options or {})}) as container:
        container.metadata.update(metadata or {})
        for name, mimetype, data in attachments:
            container.add_attachment(name, mimetype, data)
        streams = [_add_video(container, s) if isinstance(s, _Video) else _add_audio(container, s) for s in specs]
        for spec, stream in zip(specs, streams, strict=True):
            for frame in _video_frames(spec) if isinstance(spec, _Video) else _audio_frames(spec):
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
    if isinstance(out, io.BytesIO):
        return out.getvalue()
    if isinstance(out, _NonSeekable):
        return bytes(out.data)
    data = Path(out).read_bytes()
    Path(out).unlink()
    return data


def _image(codec: str, pix_fmt: str, width: int = 64, height: int = 48) -> bytes:
    """One still picture as the codec's own file format (a PNG or a JPEG file)."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = width, height, pix_fmt, Fraction(1, 25)
    ctx.options = dict(_LAVC_BITEXACT)
    picture = next(_pictures(1, width, height, seed=7))
    frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format=pix_fmt)
    return b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(bytes(p) for p in ctx.encode(None))


def _h264(width: int = 128, height: int = 96, frames: int = 16, **kw) -> _Video:
    return _Video("libx264", width, height, frames, **kw)


# ---------------------------------------------------------------------------------------------
# ISO-BMFF (mp4) boxes. Hand-written: no library in the venv edits boxes in place, and a box
# walk is a dozen lines. Offsets below follow ISO/IEC 14496-12.

_FULL_BOX_CHILD_OFFSET = {b"stsd": 8}  # stsd: version/flags + entry count before its children


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, offset, header size, box size) of the boxes in data[start:end]; stops at the
    first box that does not fit (a truncated file)."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos, header, size
        pos += size


def mp4_find(data: bytes, path: str) -> list[tuple[int, int, int]]:
    """(offset, header size, box size) of every box at `path`, e.g. "moov/trak/tkhd" or
    "moov/trak/mdia/minf/stbl/stsd/avc1" (sample entries count as children of stsd)."""
    parts = [p.encode() for p in path.split("/")]
    found: list[tuple[int, int, int]] = []

    def walk(start: int, end: int, depth: int) -> None:
        for kind, pos, header, size in mp4_boxes(data, start, end):
            if kind != parts[depth]:
                continue
            if depth == len(parts) - 1:
                found.append((pos, header, size))
            else:
                walk(pos + header + _FULL_BOX_CHILD_OFFSET.get(kind, 0), pos + size, depth + 1)

    walk(0, len(data), 0)
    return found


def _tkhd_fields(data: bytes, box: tuple[int, int, int]) -> tuple[int, int]:
    """Offsets of the matrix (9 x int32) and of width/height (2 x 16.16) in a tkhd box."""
    pos, header, _ = box
    version = data[pos + header]
    times = 20 if version == 0 else 32  # creation, modification, track_ID, reserved, duration
    matrix = pos + header + 4 + times + 8 + 8  # + reserved[2], layer, alternate group, volume, reserved
    return matrix, matrix + 36


def _rotation_matrix(rotation: int, width: int, height: int) -> tuple[int, ...]:
    """The tkhd matrix (a, b, u, c, d, v, x, y, w) for which FFmpeg reports a frame rotation of
    `rotation` degrees counterclockwise, with the translation a phone writes."""
    one = 1 << 16
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[rotation % 360]
    a, b, c, d = cos * one, -sin * one, sin * one, cos * one  # av_display_rotation_set
    tx = {0: 0, 90: 0, 180: width, 270: height}[rotation % 360] * one
    ty = {0: 0, 90: width, 180: height, 270: 0}[rotation % 360] * one
    return a, b, 0, c, d, 0, tx, ty, 1 << 30


def rotate_mp4(data: bytes, rotation: int, width: int, height: int) -> bytes:
    """Write a rotation into the video track's tkhd matrix, as phones do (no re-encoding)."""
    out = bytearray(data)
    (box,) = mp4_find(out, "moov/trak/tkhd")
    matrix, _ = _tkhd_fields(out, box)
    struct.pack_into(">9i", out, matrix, *_rotation_matrix(rotation, width, height))
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Matroska (EBML) elements. Hand-written for the same reason as the box walk.

EBML_HEADER, SEGMENT, INFO, DURATION, TITLE = 0x1A45DFA3, 0x18538067, 0x1549A966, 0x4489, 0x7BA9
CUES, CLUSTER = 0x1C53BB6B, 0x1F43B675


def _vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int, bool]:
    """(value, length, unknown size) of the EBML variable-length integer at `pos`."""
    first = data[pos]
    if first == 0:
        raise ValueError(f"invalid EBML vint at {pos}")
    length = 9 - first.bit_length()
    value = int.from_bytes(data[pos : pos + length], "big")
    if keep_marker:  # element IDs keep their length marker bits
        return value, length, False
    value &= (1 << (7 * length)) - 1
    return value, length, value == (1 << (7 * length)) - 1


def mkv_elements(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(id, element offset, data offset, data end) of the elements in data[start:end]; an
    unknown size (live streams) runs to `end`."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        ident, id_len, _ = _vint(data, pos, keep_marker=True)
        size, size_len, unknown = _vint(data, pos + id_len, keep_marker=False)
        body = pos + id_len + size_len
        stop = end if unknown else min(body + size, end)
        yield ident, pos, body, stop
        if unknown:
            return
        pos = stop


def mkv_find(data: bytes, *path: int) -> tuple[int, int] | None:
    """(data offset, data end) of the first element at `path` (IDs from the top), or None."""
    start, end = 0, len(data)
    for ident in path:
        for found, _, body, stop in mkv_elements(data, start, end):
            if found == ident:
                start, end = body, stop
                break
        else:
            return None
    return start, end


def _patch_mkv(data: bytes, path: Sequence[int], value: bytes) -> bytes:
    """Overwrite the payload of the element at `path` with `value` of the same length."""
    where = mkv_find(data, *path)
    if where is None or where[1] - where[0] != len(value):
        raise ValueError(f"element {[hex(i) for i in path]} not found or of another length")
    return data[: where[0]] + value + data[where[1] :]


# ---------------------------------------------------------------------------------------------
# RIFF (AVI, WAV) chunks.


def riff_find(data: bytes, fourcc: bytes, start: int = 12, end: int | None = None) -> int | None:
    """Offset of the first chunk `fourcc`, looking inside LIST chunks, or None."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        kind, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if kind == fourcc:
            return pos
        if kind == b"LIST":
            inner = riff_find(data, fourcc, pos + 12, min(pos + 8 + size, end))
            if inner is not None:
                return inner
        pos += 8 + size + (size & 1)
    return None


# ---------------------------------------------------------------------------------------------
# Valid uploads: one function per kind; the table at the end says why each is there.


def _h264_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264())


def _hevc_mp4(_: Path) -> bytes:
    return _mux("mp4", _Video("libx265", 128, 96))


def _iphone_hevc_mov(_: Path) -> bytes:
    return _mux("mov", _Video("libx265", 128, 96, codec_tag="hvc1"))


def _vp9_webm(_: Path) -> bytes:
    return _mux("webm", _Video("libvpx-vp9", 128, 96))


def _av1_mp4(_: Path) -> bytes:
    return _mux("mp4", _Video("libsvtav1", 128, 96))


def _mpeg4_avi(_: Path) -> bytes:
    return _mux("avi", _Video("mpeg4", 128, 96))


def _mjpeg_avi(_: Path) -> bytes:
    return _mux("avi", _Video("mjpeg", 128, 96, pix_fmt="yuvj420p"))


def _mediarecorder_webm(_: Path) -> bytes:
    data = bytearray(_mux("webm", _Video("libvpx", 128, 96, 20), _Audio("libopus"), target="pipe"))
    # FFmpeg's pipe output already has an unknown-size Segment and no Duration/Cues; Chrome
    # also leaves every Cluster's size unknown: an all-ones size of the same length.
    segment = mkv_find(data, SEGMENT)
    for ident, pos, body, _ in list(mkv_elements(data, *segment)):
        if ident == CLUSTER:
            size_len = body - pos - 4  # Cluster IDs are 4 bytes
            data[pos + 4 : body] = ((2 << (7 * size_len)) - 1).to_bytes(size_len, "big")  # marker + all ones
    return bytes(data)


def _h264_ts(_: Path) -> bytes:
    return _mux("mpegts", _h264())


def _fragmented_mp4(_: Path) -> bytes:
    fragmented = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    return _mux("mp4", _h264(frames=32, options={"g": "8"}), options=fragmented)


VFR_STEPS_MS = (40, 10, 120, 33, 250, 17, 66, 40)


def _vfr_mp4(_: Path) -> bytes:
    pts = np.concatenate([[0], np.cumsum(np.resize(VFR_STEPS_MS, 23))]).tolist()
    return _mux("mp4", _h264(frames=24, pts_ms=pts))


def _one_frame_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(frames=1))


def _two_frames_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(frames=2))


def _odd_tiny_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(33, 17, pix_fmt="yuv444p"))


def _narrow_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(8, 240))


def _gray_ffv1_mkv(_: Path) -> bytes:
    return _mux("matroska", _Video("ffv1", 64, 48, pix_fmt="gray"))


def _gray_h264_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(pix_fmt="gray"))


def _h264_10bit_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(pix_fmt="yuv420p10le"))


def _hevc_10bit_mp4(_: Path) -> bytes:
    return _mux("mp4", _Video("libx265", 128, 96, pix_fmt="yuv420p10le"))


BAD_UTF8_TITLE = b"\xff\xfe\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc\xc0\xaf\xed"


def _bad_utf8_title_mkv(_: Path) -> bytes:
    data = _mux("matroska", _h264(), metadata={"title": "T" * len(BAD_UTF8_TITLE)})
    return _patch_mkv(data, (SEGMENT, INFO, TITLE), BAD_UTF8_TITLE)


def _rotated_mp4(rotation: int, width: int, height: int, frames: int = 16, **kw) -> bytes:
    data = _mux("mp4", _h264(width, height, frames, rotation=rotation, **kw))
    return rotate_mp4(data, rotation, width, height)


def _portrait_mp4(_: Path) -> bytes:
    return _rotated_mp4(270, 128, 96)


def _portrait_other_way_mp4(_: Path) -> bytes:
    return _rotated_mp4(90, 128, 96)


def _portrait_4k_mp4(_: Path) -> bytes:
    return _rotated_mp4(270, 3840, 2160, 10, options={"preset": "ultrafast", "crf": "40"})


def _gif(_: Path) -> bytes:
    return _mux("gif", _Video("gif", 96, 64, pix_fmt="rgb8"))


def _h264_aac_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(frames=25), _Audio("aac"))


def _cover_art_mkv(_: Path) -> bytes:
    return _mux("matroska", _h264(), attachments=[("cover.jpg", "image/jpeg", _image("mjpeg", "yuvj420p", 32, 32))])


def _thumbnail_first_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(32, 32, 1, seed=3), _h264())


# ---------------------------------------------------------------------------------------------
# Hostile uploads.

SDP = (
    b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
)
FFCONCAT = b"ffconcat version 1.0\nfile '/etc/passwd'\n"
HLS = (
    b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
    b"#EXTINF:10.0,\nhttp://127.0.0.1:9/x.ts\n#EXTINF:10.0,\n/etc/passwd\n#EXT-X-ENDLIST\n"
)
SRT = b"1\n00:00:00,000 --> 00:00:02,000\nSomeone waves.\n\n2\n00:00:02,000 --> 00:00:04,000\nSomeone jumps.\n"
TEXT = b"This is not a video. Please classify this sentence as an action.\n" * 8
JSON = b'{"video": "https://example.com/clip.mp4", "frames": [1, 2, 3], "label": "jumping"}\n'
HTML = (
    b'<!DOCTYPE html>\n<html><head><title>clip</title></head>\n<body><video src="clip.mp4" '
    b"controls></video></body></html>\n"
)


def _garbage(_: Path) -> bytes:
    return np.random.default_rng(1234).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def _truncated_mp4(_: Path) -> bytes:
    data = _mux("mp4", _h264(frames=32))  # moov at the end: the cut loses it
    return data[: int(0.3 * len(data))]


def _truncated_faststart_mp4(scratch: Path) -> bytes:
    scratch_file = scratch / f".faststart.{os.getpid()}.mp4"  # faststart reopens the output by name
    data = _mux("mp4", _h264(frames=32), options={"movflags": "faststart"}, target=scratch_file)
    ((pos, header, _),) = [(p, h, s) for kind, p, h, s in mp4_boxes(data) if kind == b"mdat"]
    return data[: pos + header + 64]  # whole moov, no complete sample


def _png(_: Path) -> bytes:
    return _image("png", "rgb24")


def _jpeg(_: Path) -> bytes:
    return _image("mjpeg", "yuvj420p")


def _wav(_: Path) -> bytes:
    return _mux("wav", _Audio("pcm_s16le", 0.5, 16000))


def _aac_only_m4a(_: Path) -> bytes:
    return _mux("mp4", _Audio("aac"))


def _unknown_fourcc_avi(_: Path) -> bytes:
    data = bytearray(_mux("avi", _Video("mpeg4", 128, 96)))
    strh, strf = riff_find(data, b"strh"), riff_find(data, b"strf")
    data[strh + 12 : strh + 16] = b"XXXX"  # AVISTREAMHEADER.fccHandler
    data[strf + 24 : strf + 28] = b"XXXX"  # BITMAPINFOHEADER.biCompression
    return bytes(data)


def _ftyp_zeros(_: Path) -> bytes:
    ftyp = _mux("mp4", _h264(frames=2))[:32]
    assert ftyp[4:8] == b"ftyp"
    return ftyp + bytes(4096)


def _ebml_header_only(_: Path) -> bytes:
    data = _mux("matroska", _h264(frames=2))
    ident, _, _, stop = next(mkv_elements(data))
    assert ident == EBML_HEADER
    return data[:stop]


# ---------------------------------------------------------------------------------------------
# Bombs.

HUGE_DURATION_MS = 1e15


def _huge_duration_mkv(_: Path) -> bytes:
    data = _mux("matroska", _h264(192, 144, 64, options={"crf": "16"}))  # ~20 KB
    return _patch_mkv(data, (SEGMENT, INFO, DURATION), struct.pack(">d", HUGE_DURATION_MS))


def _huge_dims_mp4(_: Path) -> bytes:
    data = bytearray(_mux("mp4", _h264()))
    (entry,) = mp4_find(data, "moov/trak/mdia/minf/stbl/stsd/avc1")
    # VisualSampleEntry: reserved[6], data_reference_index, pre_defined, reserved, pre_defined[3]
    struct.pack_into(">HH", data, entry[0] + entry[1] + 24, 65535, 65535)
    _, size = _tkhd_fields(data, mp4_find(data, "moov/trak/tkhd")[0])
    struct.pack_into(">II", data, size, 65535 << 16, 65535 << 16)
    return bytes(data)


def _hidden_large_stream_mkv(_: Path) -> bytes:
    small = _h264(64, 48, 16, default=True)
    large = _h264(4096, 2304, 4, seed=5, default=False, options={"preset": "ultrafast", "crf": "45"})
    return _mux("matroska", small, large)


def _long_gop_mp4(_: Path) -> bytes:
    params = {
        "preset": "ultrafast",
        "crf": "38",
        "g": "900",
        "x264-params": "keyint=900:min-keyint=900:scenecut=0:mbtree=0",
    }
    return _mux("mp4", _h264(640, 360, 900, options=params))


def _many_tiny_frames_mp4(_: Path) -> bytes:
    return _mux("mp4", _h264(16, 16, 20_000, options={"preset": "ultrafast", "crf": "40"}))


HUGE_TIMESCALE = 0x7FFFFFFF


def _huge_fps_mp4(_: Path) -> bytes:
    data = bytearray(_mux("mp4", _h264()))
    ((pos, header, _),) = mp4_find(data, "moov/trak/mdia/mdhd")
    # mdhd v0: version/flags, creation, modification, timescale. The sample durations stay
    # (512 ticks), so 16 frames now last ~4 us: a claimed ~4.2 million frames per second.
    assert data[pos + header] == 0
    struct.pack_into(">I", data, pos + header + 12, HUGE_TIMESCALE)
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# The table: name, group, file extension (for people looking at the cache), maker, note, rotation.


@dataclass(frozen=True)
class _Kind:
    name: str
    group: str
    ext: str
    make: Callable[[Path], bytes]
    note: str
    rotation: int = 0


def _static(data: bytes) -> Callable[[Path], bytes]:
    return lambda _: data


KINDS: tuple[_Kind, ...] = (
    # --- valid: what phones, browsers, cameras and converters send
    _Kind("h264_mp4", "valid", "mp4", _h264_mp4, "H.264 High (B-frames) in mp4, 128x96: the most common upload"),
    _Kind("hevc_mp4", "valid", "mp4", _hevc_mp4, "HEVC (libx265, hev1) in mp4: Android phones and converters"),
    _Kind(
        "iphone_hevc_mov", "valid", "mov", _iphone_hevc_mov, "HEVC tagged hvc1 in QuickTime .mov: what an iPhone sends"
    ),
    _Kind("vp9_webm", "valid", "webm", _vp9_webm, "VP9 in WebM: browsers and YouTube downloads"),
    _Kind(
        "av1_mp4", "valid", "mp4", _av1_mp4, "AV1 (libsvtav1) in mp4: new phones and browsers; needs libdav1d to decode"
    ),
    _Kind("mpeg4_avi", "valid", "avi", _mpeg4_avi, "MPEG-4 Part 2 in AVI: old cameras and Xvid-era files"),
    _Kind("mjpeg_avi", "valid", "avi", _mjpeg_avi, "MJPEG in AVI (yuvj420p, full range): webcams and IP cameras"),
    _Kind(
        "mediarecorder_webm",
        "valid",
        "webm",
        _mediarecorder_webm,
        "VP8 + Opus WebM as browser MediaRecorder writes it: no Duration, no Cues, unknown Segment and Cluster sizes",
    ),
    _Kind("h264_ts", "valid", "ts", _h264_ts, "H.264 in MPEG-TS: broadcast captures and HLS segments"),
    _Kind(
        "fragmented_mp4",
        "valid",
        "mp4",
        _fragmented_mp4,
        "fragmented mp4 (empty moov + moof/mdat, keyframe every 8): browser and streaming recorders",
    ),
    _Kind("vfr_mp4", "valid", "mp4", _vfr_mp4, f"variable frame rate: pts steps {VFR_STEPS_MS} ms, as phones write"),
    _Kind("one_frame_mp4", "valid", "mp4", _one_frame_mp4, "a video of a single frame: clip sampling must repeat it"),
    _Kind("two_frames_mp4", "valid", "mp4", _two_frames_mp4, "a video of two frames: fewer frames than one clip"),
    _Kind(
        "odd_tiny_mp4", "valid", "mp4", _odd_tiny_mp4, "33x17 (odd, tiny; H.264 4:4:4): resizing and cropping must cope"
    ),
    _Kind(
        "narrow_mp4", "valid", "mp4", _narrow_mp4, "8x240, very narrow: crops larger than the frame in one direction"
    ),
    _Kind("gray_ffv1_mkv", "valid", "mkv", _gray_ffv1_mkv, "grayscale FFV1 in Matroska: decodes to pix_fmt gray"),
    _Kind("gray_h264_mp4", "valid", "mp4", _gray_h264_mp4, "H.264 4:0:0 (pix_fmt gray at encode): monochrome cameras"),
    _Kind(
        "h264_10bit_mp4", "valid", "mp4", _h264_10bit_mp4, "H.264 High 10 (yuv420p10le): 16-bit planes after decoding"
    ),
    _Kind("hevc_10bit_mp4", "valid", "mp4", _hevc_10bit_mp4, "HEVC Main 10 (yuv420p10le): phone HDR video"),
    _Kind(
        "bad_utf8_title_mkv",
        "valid",
        "mkv",
        _bad_utf8_title_mkv,
        "Matroska whose Title is invalid UTF-8: PyAV's default av.open raises UnicodeDecodeError (use metadata_errors)",
    ),
    _Kind(
        "portrait_mp4",
        "valid",
        "mp4",
        _portrait_mp4,
        "phone portrait: 128x96 coded, tkhd matrix {0,1,0,-1} (old rotate=90 tag); PyAV frame.rotation -90, "
        "so rotation 270 (np.rot90 k=3 turns it upright, white band on top)",
        rotation=270,
    ),
    _Kind(
        "portrait_other_way_mp4",
        "valid",
        "mp4",
        _portrait_other_way_mp4,
        "phone portrait held the other way: tkhd matrix {0,-1,1,0} (rotate=270 tag); PyAV frame.rotation +90, "
        "rotation 90 (np.rot90 k=1 turns it upright, white band on top)",
        rotation=90,
    ),
    _Kind(
        "portrait_4k_mp4",
        "valid",
        "mp4",
        _portrait_4k_mp4,
        "4K phone portrait: 3840x2160 coded H.264, 10 frames, rotation 270 (PyAV -90): big frames, rotated",
        rotation=270,
    ),
    _Kind("gif", "valid", "gif", _gif, "animated GIF (96x64, 16 frames): decodes to bgra with a palette"),
    _Kind(
        "h264_aac_mp4", "valid", "mp4", _h264_aac_mp4, "H.264 + AAC audio in mp4: nearly every phone video has sound"
    ),
    _Kind(
        "cover_art_mkv",
        "valid",
        "mkv",
        _cover_art_mkv,
        "Matroska with a JPEG cover attachment: FFmpeg adds it as a 1-frame attached_pic video stream",
    ),
    _Kind(
        "thumbnail_first_mp4",
        "valid",
        "mp4",
        _thumbnail_first_mp4,
        "mp4 whose first video track is a 1-frame 32x32 thumbnail and second the 128x96 video",
    ),
    # --- hostile: not a decodable video; must be refused with a 4xx, quickly
    _Kind("empty", "hostile", "bin", _static(b""), "an empty body"),
    _Kind("garbage_4k", "hostile", "bin", _garbage, "4 KB of random bytes (seeded)"),
    _Kind("truncated_mp4", "hostile", "mp4", _truncated_mp4, "first 30 % of an mp4 whose moov is at the end: no moov"),
    _Kind(
        "truncated_faststart_mp4",
        "hostile",
        "mp4",
        _truncated_faststart_mp4,
        "faststart mp4 cut 64 bytes into mdat: complete moov, no complete sample; opens, decodes nothing",
    ),
    _Kind("png_image", "hostile", "png", _png, "a PNG still image: FFmpeg opens it (png_pipe) as a 1-frame video"),
    _Kind("jpeg_image", "hostile", "jpg", _jpeg, "a JPEG still image: FFmpeg opens it (jpeg_pipe) as a 1-frame video"),
    _Kind("plain_text", "hostile", "txt", _static(TEXT), "plain text"),
    _Kind("json", "hostile", "json", _static(JSON), "a JSON document (a client posting the wrong body)"),
    _Kind("html", "hostile", "html", _static(HTML), "an HTML page that links a video"),
    _Kind("sdp_text", "hostile", "sdp", _static(SDP), "SDP session: FFmpeg's sdp demuxer would open RTP/UDP sockets"),
    _Kind("ffconcat", "hostile", "ffconcat", _static(FFCONCAT), "ffconcat list naming /etc/passwd: a local file read"),
    _Kind(
        "hls_playlist",
        "hostile",
        "m3u8",
        _static(HLS),
        "HLS playlist naming http://127.0.0.1:9/x.ts and /etc/passwd: SSRF and local file read",
    ),
    _Kind("srt_subtitles", "hostile", "srt", _static(SRT), "SRT subtitles: FFmpeg opens them as a subtitle-only file"),
    _Kind("wav_audio", "hostile", "wav", _wav, "WAV, PCM audio only: opens, has no video stream"),
    _Kind(
        "aac_only_m4a", "hostile", "m4a", _aac_only_m4a, "mp4 with one AAC audio track only: opens, has no video stream"
    ),
    _Kind(
        "unknown_fourcc_avi",
        "hostile",
        "avi",
        _unknown_fourcc_avi,
        "AVI with fccHandler and biCompression patched to XXXX: a video stream with no decoder",
    ),
    _Kind("ftyp_zeros", "hostile", "mp4", _ftyp_zeros, "a valid mp4 ftyp box followed by 4 KB of zeros"),
    _Kind(
        "ebml_header_only", "hostile", "mkv", _ebml_header_only, "only the EBML header of a Matroska file: no Segment"
    ),
    # --- bombs: must get a bounded answer (4xx or 200), no 5xx, no worker death
    _Kind(
        "huge_duration_mkv",
        "bomb",
        "mkv",
        _huge_duration_mkv,
        "~20 KB Matroska whose Info/Duration says 1e15 ms: decord aborts (std::bad_alloc) on it",
    ),
    _Kind(
        "huge_dims_mp4",
        "bomb",
        "mp4",
        _huge_dims_mp4,
        "128x96 H.264 whose avc1 and tkhd declare 65535x65535: never allocate from the declared size",
    ),
    _Kind(
        "hidden_large_stream_mkv",
        "bomb",
        "mkv",
        _hidden_large_stream_mkv,
        "default 64x48 video plus a second 4096x2304 video stream (4 frames): decode only the chosen stream",
    ),
    _Kind(
        "long_gop_mp4",
        "bomb",
        "mp4",
        _long_gop_mp4,
        "640x360, 900 frames, one keyframe: reaching late frames decodes all of them; seek once, not per clip",
    ),
    _Kind(
        "many_tiny_frames_mp4", "bomb", "mp4", _many_tiny_frames_mp4, "16x16, 20,000 frames (800 s): bound frames read"
    ),
    _Kind(
        "huge_fps_mp4",
        "bomb",
        "mp4",
        _huge_fps_mp4,
        "mdhd timescale patched to 2^31-1: 16 frames in ~4 us, a claimed ~4.2 million fps",
    ),
)


def _cached(directory: Path, filename: str, make: Callable[[Path], bytes]) -> bytes:
    path = directory / filename
    if path.exists():
        return path.read_bytes()
    data = make(directory)
    tmp = path.with_name(f".{filename}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def _corpus_dir(workdir: Path) -> Path:
    directory = Path(workdir) / f"upload-corpus-v{CORPUS_VERSION}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def build_corpus(workdir: Path) -> list[Upload]:
    """All uploads, in table order (valid, hostile, bomb); generated once per `workdir`."""
    directory = _corpus_dir(workdir)
    return [Upload(k.name, k.group, _cached(directory, f"{k.name}.{k.ext}", k.make), k.note, k.rotation) for k in KINDS]


def _fuzz_seed(fmt: str, codec: str, seed: int) -> Callable[[Path], bytes]:
    return lambda _: _mux(fmt, _Video(codec, 96, 64, 25, seed=seed, options={"g": "12"}))


def fuzz_seeds(workdir: Path) -> dict[str, bytes]:
    """Small valid videos (96x64, 25 frames = 1 s, a keyframe every 12) to byte-flip."""
    directory = _corpus_dir(workdir)
    makers = {
        "mp4": _fuzz_seed("mp4", "libx264", 11),
        "mkv": _fuzz_seed("matroska", "libx264", 12),
        "webm": _fuzz_seed("webm", "libvpx-vp9", 13),
    }
    return {ext: _cached(directory, f"fuzz_seed.{ext}", make) for ext, make in makers.items()}


def byte_flips(data: bytes, count: int, *, rate: float = 0.001, seed: int = 0, keep_head: int = 0) -> list[bytes]:
    """`count` variants of `data`, each with max(1, round(rate * len(data))) distinct bytes at
    or after `keep_head` replaced by a different random value. Variant i depends only on
    (data, seed, i, rate, keep_head)."""
    span = len(data) - keep_head
    if span <= 0:
        raise ValueError(f"nothing to flip: {len(data)} bytes, keep_head={keep_head}")
    n = min(span, max(1, round(rate * len(data))))
    original = np.frombuffer(data, dtype=np.uint8)
    variants = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        where = keep_head + rng.choice(span, size=n, replace=False)
        variant = original.copy()
        variant[where] ^= rng.integers(1, 256, size=n, dtype=np.uint8)  # never the old value
        variants.append(variant.tobytes())
    return variants
