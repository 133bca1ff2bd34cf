"""Decoding the frames of the test views with PyAV, under an input policy.

The server decodes strangers' uploads with this module (inside its bounded helper processes,
`serving/isolation.py`), and offline evaluation (`make evaluate`, export's parity check,
`python -m export evaluate`) decodes with it too, so a served answer equals offline evaluation.
The training loaders keep decord (fast random access on trusted files).

Why PyAV and not decord for this path (measured on uploads): decord 0.6.0 bundles FFmpeg 4.1.6,
aborts the whole process on a Matroska file with a huge declared duration (an uncaught
`std::bad_alloc` while it reserves fps x duration frames), cannot open browser MediaRecorder
WebM, MPEG-TS, AV1 or 8-px-wide frames, and prints the raw bytes of files it cannot open.
PyAV (FFmpeg 8) decodes all of those, takes the frame count from the packets rather than the
header, and lets the caller bound what FFmpeg may open.

The policy, for uploads (`UPLOAD_FORMATS`):
- only the container demuxers people send are probed to the end: mp4/mov/3gp, Matroska/WebM,
  AVI, MPEG-TS and GIF (FFmpeg's `format_whitelist`: an SDP, ffconcat or HLS text never reaches
  its demuxer, which would open sockets or files);
- no protocol at all (`protocol_whitelist` empty): the bytes in memory are the only input;
- the first video stream that is not a cover picture is the one checked and the one decoded;
- limits on source frame size, aspect ratio, frame count and duration (from the packets, not
  the header) and decode time, each refused with its own code;
- frames are scaled while they are converted (swscale, straight from the decoder's YUV to the
  short side of the test size): a 4K or 8K frame is never materialized as RGB at full size;
- the container's rotation (portrait phone videos) is applied, on the small frames;
- the crops are cut from each frame as soon as it is converted, so very wide frames stay cheap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from training.video import (
    VideoDecodeError,
    frame_rotation,
    main_video_stream,
    open_pyav,
    tg_frame_pairs,
    uniform_clip_indices,
)

# FFmpeg demuxer names for format_whitelist ("mov" is the demuxer of mp4/mov/3gp/m4a,
# "matroska" that of mkv and webm)
UPLOAD_FORMATS = ("mov", "matroska", "avi", "mpegts", "gif")
FORMAT_NAMES = "mp4/mov/3gp, Matroska/WebM, AVI, MPEG-TS or GIF"


class VideoRejected(VideoDecodeError):
    """A video refused by the input policy or that cannot be decoded: `status` (HTTP, 4xx),
    a short `code` and a message that names the problem."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class DecodeLimits:
    """What one video may cost. The defaults answer a 10-minute 8K phone video and refuse more."""

    max_pixels: int = 8192 * 4320  # one coded frame (8K); larger frames: video_too_large
    max_aspect: float = 64.0  # long side / short side of a frame: aspect_ratio
    max_frames: int = 36_000  # packets of the video stream (20 min at 30 fps): too_many_frames
    max_duration_s: float = 1_200.0  # from the packets' timestamps: video_too_long
    max_seconds: float = 30.0  # wall time of the decode: decode_timeout


@dataclass
class VideoInfo:
    container: str
    codec: str
    width: int  # coded size
    height: int
    rotation: int  # clockwise degrees applied for display: 0, 90, 180, 270
    num_frames: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ViewCrops:
    """The uint8 crops of the test views, before any float conversion."""

    crops: np.ndarray  # (clips*T, crops, S, S, 3) uint8, frame-major: frame f of clip c at c*T + f
    # same shape: the frames `tg_stride` later (temporal gradient). With `tg_spread`, `crops` and
    # `successors` are the first and second frames of each slow-TG frame (`tg_frame_pairs`).
    successors: np.ndarray | None
    info: VideoInfo


@dataclass(frozen=True)
class ViewGeometry:
    """Which frames and which crops a set of views needs."""

    clips: int
    crops: int
    clip_len: int
    interval: int
    short_side: int
    crop: int
    tg_stride: int | None = None
    tg_spread: bool = False  # slow TG spread over the clip (the authors'), with tg_stride > 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.clips * self.clip_len, self.crops, self.crop, self.crop, 3)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * (1 if self.tg_stride is None else 2)


def open_container(source: str | Path | bytes, formats: tuple[str, ...] | None = UPLOAD_FORMATS):
    """An FFmpeg input that can read nothing but `source`; `formats` = the accepted demuxers
    (None: any demuxer, for trusted local files)."""
    if isinstance(source, (bytes, bytearray, memoryview)) and len(source) == 0:
        raise VideoRejected(400, "empty_body", "the file is empty (0 bytes)")
    try:
        # metadata text is not ours to judge: a title in invalid UTF-8 must not refuse the video
        return open_pyav(source, formats)
    except av.error.ArgumentError:  # EINVAL: the probed format is not on format_whitelist
        raise VideoRejected(
            415,
            "unsupported_format",
            f"the file is not a video container this service accepts (accepted: {FORMAT_NAMES})",
        ) from None
    except av.error.FileNotFoundError:
        raise VideoRejected(404, "no_such_file", f"{source!s}: no such file") from None
    except (av.error.FFmpegError, EOFError, UnicodeDecodeError) as exc:
        raise VideoRejected(
            422, "not_a_video", f"the file is not a readable video (truncated, or not a video at all): {_reason(exc)}"
        ) from None


def video_stream(container):
    """The video stream to check and decode (`main_video_stream`: the one training reads)."""
    stream = main_video_stream(container)
    if stream is not None:
        return stream
    kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    raise VideoRejected(422, "no_video_stream", f"the file has no video stream (it holds: {', '.join(kinds)})")


def check_frame_size(width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        return  # not declared: the decoded frames are checked
    if width * height > limits.max_pixels:
        raise VideoRejected(
            422, "video_too_large", f"frames of {width}x{height} exceed the limit of {limits.max_pixels} pixels (8K)"
        )
    if max(width, height) > limits.max_aspect * min(width, height):
        raise VideoRejected(
            422,
            "aspect_ratio",
            f"frames of {width}x{height} are more than {limits.max_aspect:g} "
            "times wider than high (or higher than wide)",
        )


def check_declared_duration(container, stream, limits: DecodeLimits) -> None:
    """Refuse a header that declares a duration past the limit. The frame count never comes
    from the header, but a file that declares years of video is malformed or hostile (such a
    header made decord reserve fps x duration frames and abort the process)."""
    declared = []
    if container.duration is not None:
        declared.append(container.duration / av.time_base)
    if stream.duration is not None and stream.time_base is not None:
        declared.append(float(stream.duration * stream.time_base))
    seconds = max(declared, default=0.0)
    if seconds > limits.max_duration_s:
        raise VideoRejected(
            422,
            "video_too_long",
            f"the file declares a duration of {seconds:.3g} s, more than the limit of {limits.max_duration_s:g} s",
        )


def count_frames(container, stream, limits: DecodeLimits, deadline: float) -> int:
    """The video stream's frame count from its packets (no decoding), checked against the
    frame and duration limits. A header's frame count or duration is never trusted."""
    count, low, high = 0, None, None
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        count += 1
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is not None:
            low = ts if low is None else min(low, ts)
            high = ts if high is None else max(high, ts)
        if count > limits.max_frames:
            raise VideoRejected(422, "too_many_frames", f"the video has more than {limits.max_frames} frames")
        if count % 256 == 0 and time.monotonic() > deadline:
            raise VideoRejected(422, "decode_timeout", f"reading the video took longer than {limits.max_seconds:g} s")
    if low is not None and stream.time_base is not None and count > 1:
        seconds = float((high - low) * stream.time_base)
        if seconds > limits.max_duration_s:
            raise VideoRejected(
                422,
                "video_too_long",
                f"the video lasts {seconds:.0f} s, more than the limit of {limits.max_duration_s:g} s",
            )
    if count == 0:
        raise VideoRejected(422, "undecodable_video", "the video stream holds no frames")
    return count


def scaled_size(width: int, height: int, rotation: int, short_side: int) -> tuple[int, int]:
    """(width, height) to convert a coded frame to so that, once rotated for display, its short
    side is `short_side` (aspect ratio kept)."""
    if rotation in (90, 270):
        width, height = height, width
    scale = short_side / min(width, height)
    w, h = max(short_side, round(width * scale)), max(short_side, round(height * scale))
    return (h, w) if rotation in (90, 270) else (w, h)


def crop_offsets(length: int, crop: int, num_crops: int) -> list[int]:
    """Start positions of `num_crops` crops along one axis: 1 = centre, 3 = start/centre/end."""
    if num_crops == 1:
        return [(length - crop) // 2]
    return [round(i * (length - crop) / (num_crops - 1)) for i in range(num_crops)]


def cut_crops(frame: np.ndarray, crop: int, num_crops: int, out: np.ndarray) -> None:
    """(H, W, 3) frame with short side >= crop -> `out` (num_crops, crop, crop, 3), the crops
    along the long side (centred across it)."""
    h, w = frame.shape[:2]
    if w >= h:
        top = (h - crop) // 2
        for k, left in enumerate(crop_offsets(w, crop, num_crops)):
            out[k] = frame[top : top + crop, left : left + crop]
    else:
        left = (w - crop) // 2
        for k, top in enumerate(crop_offsets(h, crop, num_crops)):
            out[k] = frame[top : top + crop, left : left + crop]


class CropCutter:
    """Scales, rotates and cuts the crops of each wanted frame into its slot of `out`. The first
    frame taken fixes the scaled size and the rotation for the whole video."""

    def __init__(self, wanted: np.ndarray, geometry: ViewGeometry, out: np.ndarray, limits: DecodeLimits) -> None:
        self.position = {int(f): i for i, f in enumerate(wanted)}  # frame index -> slot of `out`
        self.geometry, self.out, self.limits = geometry, out, limits
        # one reformatter for the whole video: it keeps its swscale context between frames, where
        # VideoFrame.reformat builds a new one per frame (measured: 5x slower for 320x240 frames)
        self.reformatter = VideoReformatter()
        self.size: tuple[int, int] | None = None
        self.rotation = 0
        self.last_good: int | None = None  # the slot of the last frame cut

    def take(self, frame, index: int, coded: tuple[int, int]) -> None:
        """Cut frame number `index`; `coded` is the size of the video's first decoded frame."""
        if self.size is None:
            check_frame_size(frame.width, frame.height, self.limits)
            self.rotation = frame_rotation(frame)
            self.size = scaled_size(frame.width, frame.height, self.rotation, self.geometry.short_side)
        elif (frame.width, frame.height) != coded:
            check_frame_size(frame.width, frame.height, self.limits)  # a mid-stream size change
        rgb = self.reformatter.reformat(
            frame, width=self.size[0], height=self.size[1], format="rgb24", interpolation="BILINEAR"
        ).to_ndarray()
        if self.rotation:
            rgb = np.rot90(rgb, k=-self.rotation // 90)
        slot = self.position[index]
        cut_crops(rgb, self.geometry.crop, self.geometry.crops, self.out[slot])
        self.last_good = slot


def decode_crops(
    container,
    stream,
    wanted: np.ndarray,
    geometry: ViewGeometry,
    out: np.ndarray,
    limits: DecodeLimits,
    deadline: float,
) -> tuple[int, int, int]:
    """Decode the stream in order and cut the crops of the frames whose index is in `wanted`
    (sorted, unique) into `out[i]`. Returns (rotation, width, height) of the coded frames.

    Frames are counted as the decoder outputs them: a corrupt packet is skipped, and wanted
    frames past the last decoded one (fewer frames than packets) take its crops; a video with
    no decodable frame is refused."""
    cutter = CropCutter(wanted, geometry, out, limits)
    last_wanted = int(wanted[-1])
    index, errors = 0, 0
    coded: tuple[int, int] | None = None
    for packet in container.demux(stream):
        if time.monotonic() > deadline:
            raise VideoRejected(422, "decode_timeout", f"decoding took longer than {limits.max_seconds:g} s")
        try:
            frames = stream.decode(packet)  # a size-0 packet flushes the decoder
        except MemoryError:
            raise
        except (av.error.FFmpegError, UnicodeDecodeError):
            errors += 1  # a corrupt packet: skip it, as players do
            continue
        for frame in frames:
            if coded is None:
                coded = (frame.width, frame.height)
            if index in cutter.position:
                cutter.take(frame, index, coded)
            index += 1
            if index > last_wanted:
                return cutter.rotation, coded[0], coded[1]
    last_good = cutter.last_good
    if last_good is None:
        raise VideoRejected(
            422,
            "undecodable_video",
            "the file has a video stream but none of its frames could be "
            f"decoded (truncated or corrupt?; {errors} packets failed)",
        )
    for missing in range(last_good + 1, len(wanted)):  # fewer frames than packets
        out[missing] = out[last_good]
    assert coded is not None  # set by the first decoded frame, and one was (last_good)
    return cutter.rotation, coded[0], coded[1]


def wanted_frames(geometry: ViewGeometry, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The views' frame indices (flat), and the frame index of every row of crops to cut: the
    views' frames, then with `tg_stride` the temporal gradient's successor frames."""
    idx = uniform_clip_indices(
        num_frames, clip_len=geometry.clip_len, interval=geometry.interval, num_clips=geometry.clips
    ).reshape(-1)
    if geometry.tg_stride is None:
        wanted_rows = idx
    else:
        first, second = tg_frame_pairs(
            idx.reshape(geometry.clips, geometry.clip_len),
            stride=geometry.tg_stride,
            num_frames=num_frames,
            spread=geometry.tg_spread,
        )
        wanted_rows = np.concatenate([first.reshape(-1), second.reshape(-1)])
    return idx, wanted_rows


def read_view_crops(
    source: str | Path | bytes,
    geometry: ViewGeometry,
    *,
    limits: DecodeLimits = DecodeLimits(),
    formats: tuple[str, ...] | None = UPLOAD_FORMATS,
    out: np.ndarray | None = None,
    threads: int = 1,
) -> ViewCrops:
    """Decode the frames that `geometry`'s views need from a video (path or bytes) and cut their
    crops; VideoRejected when the policy refuses it or nothing can be decoded.

    `out`, when given, receives the crops (shape `geometry.shape`, uint8; with `tg_stride`, twice
    that many rows: views then successors), e.g. a shared-memory buffer."""
    deadline = time.monotonic() + limits.max_seconds
    with open_container(source, formats) as container:
        stream = video_stream(container)
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg knows no decoder for the stream's codec (e.g. an unknown FourCC)
            raise VideoRejected(422, "unsupported_codec", "the video stream's codec is unknown: no decoder for it")
        check_frame_size(ctx.width, ctx.height, limits)
        check_declared_duration(container, stream, limits)
        num_frames = count_frames(container, stream, limits, deadline)
        info = VideoInfo(
            container=container.format.name.split(",")[0],
            codec=ctx.name or "unknown",
            width=ctx.width,
            height=ctx.height,
            rotation=0,
            num_frames=num_frames,
        )
    if not _has_decoder(info.codec):
        raise VideoRejected(422, "unsupported_codec", f"no decoder for the video codec {info.codec!r}")
    idx, wanted_rows = wanted_frames(geometry, num_frames)
    unique, inverse = np.unique(wanted_rows, return_inverse=True)
    frames = np.empty((len(unique), *geometry.shape[1:]), dtype=np.uint8)
    with open_container(source, formats) as container:  # a second pass from the start, no seeking
        stream = video_stream(container)  # the same choice as the first pass
        stream.thread_type, stream.thread_count = "AUTO", max(1, threads)
        try:
            info.rotation, info.width, info.height = decode_crops(
                container, stream, unique, geometry, frames, limits, deadline
            )
        except (MemoryError, BlockingIOError):  # BlockingIOError: a decoder thread could not be created
            raise VideoRejected(
                422, "decode_memory_limit", "decoding the video needed more memory than allowed"
            ) from None
    rows = np.take(frames, inverse, axis=0, out=None if out is None else out.reshape(len(inverse), *frames.shape[1:]))
    n = len(idx)
    return ViewCrops(crops=rows[:n], successors=rows[n:] if geometry.tg_stride is not None else None, info=info)


def _has_decoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "r")
        return True
    except (av.error.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
        return False


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason in a line, without the file name or any text from the file."""
    text = getattr(exc, "strerror", None) or type(exc).__name__
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))[:120]
