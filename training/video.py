"""Decoding training video, and the frame indices each kind of clip needs.

decord reads what it reads well: H.264, HEVC, VP9, MPEG-4 and MJPEG in mp4/mov and AVI, without
a display rotation. It has known leaks and thread problems with many decoder threads, so every
reader is opened with a bounded `num_threads` and used by one worker only.

Everything else is read with PyAV (`PyAVVideo`), because decord 0.6 fails on it (measured on
the upload corpus of `tests/upload_corpus.py`): a display rotation, as every portrait phone video
has (its batch read fails with "from_size == to_size", its single frames are garbage), browser
MediaRecorder WebM, MPEG-TS, AV1 and GIF (it cannot open them), and Matroska with a huge
declared duration, on which it aborts the whole process (`std::bad_alloc`), which in training
would be the run. So one probe per video (`probe_video`: its container, codec and rotation, from
its first frame) picks the reader, and a file decord opens but then fails to decode falls back to
PyAV too. PyAV's frames are turned upright as the test views' are (`training/view_decode.py`):
a model trains on the picture it is tested and served on.
"""

from __future__ import annotations

import functools
import io
import os
import re
from dataclasses import dataclass
from types import EllipsisType

import numpy as np


class VideoDecodeError(Exception):
    """A video that cannot be opened or decoded; the message names the file and the cause."""


@functools.cache
def _quiet_decoder_logs() -> None:
    """FFmpeg logs to stderr about files it cannot read or frames it cannot decode ("moov atom not
    found", per-macroblock errors), many lines per damaged video; VideoDecodeError already names the
    file and the cause, so FFmpeg's logging is silenced, once per process. (decord's own one-line
    "ERROR opening" comes from a C++ logger that has no switch.)"""
    import decord

    decord.logging.set_level(decord.logging.QUIET)


def open_video(
    source: str | bytes,
    *,
    num_threads: int = 1,
    name: str | None = None,
    probe: VideoProbe | None | EllipsisType = ...,
    max_short_side: int | None = None,
) -> Video:
    """Open a video file path or in-memory bytes; raise VideoDecodeError if unreadable.

    `probe` is `probe_video(source)` when the caller has it already, None included (a video
    opened many times is probed once); left out, the video is probed here. With `max_short_side`, a video whose
    short side is larger is decoded scaled down to it (by the decoder, from its YUV frames): a
    1080p or 4K phone video is never turned into full-size RGB for a 56-pixel crop."""
    import decord  # imported lazily: it starts native threads on import

    _quiet_decoder_logs()
    label = name or (source if isinstance(source, str) else "<upload>")
    handle: io.BytesIO | str
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise VideoDecodeError(f"{label}: empty file (0 bytes)")
        handle = io.BytesIO(source)
    else:
        if not os.path.exists(source):
            raise VideoDecodeError(f"{label}: no such file")
        if os.path.getsize(source) == 0:
            raise VideoDecodeError(f"{label}: empty file (0 bytes)")
        handle = source
    if probe is ...:
        probe = probe_video(source)
    size = probe.decode_size(max_short_side) if probe is not None else None
    if probe is not None and not probe.decord_reads:
        return PyAVVideo(source, probe, name=label, size=size)
    # decord's -1: the coded size (an unprobed video is decoded as it is)
    width, height = size or (-1, -1)
    try:
        reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=num_threads, width=width, height=height)
        if len(reader) == 0:
            raise VideoDecodeError(f"{label}: the video stream has no frames")
    except (RuntimeError, decord.DECORDError, VideoDecodeError) as exc:
        if probe is not None:  # PyAV decoded its first frame: PyAV reads it
            return PyAVVideo(source, probe, name=label, size=size)
        if isinstance(exc, VideoDecodeError):
            raise
        reason = _first_line(exc)
        if "cannot find video stream" in reason:  # decord's words for a file of audio or data tracks only
            reason = "it has no video track, perhaps sound only"
        raise VideoDecodeError(f"{label}: not a readable video ({reason})") from exc
    return DecordVideo(reader, source, probe, name=label, size=size)


def read_frames(reader: Video, indices: np.ndarray, *, name: str = "<video>") -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed) -> (len(indices), H, W, 3) uint8."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    frames = reader.get_batch(unique.tolist())
    if frames.ndim != 4 or frames.shape[0] != len(unique):
        raise VideoDecodeError(f"{name}: decoder returned {frames.shape[0]} of {len(unique)} frames")
    return frames[inverse]


# FFmpeg demuxers and codecs decord reads correctly (module docstring)
DECORD_CONTAINERS = ("mov,mp4,m4a,3gp,3g2,mj2", "avi")
DECORD_CODECS = ("h264", "hevc", "vp9", "vp8", "mpeg4", "mjpeg", "ffv1")


@dataclass(frozen=True)
class VideoProbe:
    """What picks a video's reader, and what PyAV needs to read it without a second look."""

    container: str  # FFmpeg's demuxer name
    codec: str
    rotation: int  # clockwise degrees that display it upright
    fps: float
    frames: int  # the header's count, else the packets'
    video_streams: int  # besides cover pictures: decord might pick another one than the test views
    width: int  # coded, before the rotation
    height: int

    def decode_size(self, max_short_side: int | None) -> tuple[int, int] | None:
        """(width, height) to decode at, coded orientation, so the short side is at most
        `max_short_side`; None: the coded size."""
        short = min(self.width, self.height)
        if not max_short_side or short <= max_short_side:
            return None
        scale = max_short_side / short
        return max(2, round(self.width * scale)), max(2, round(self.height * scale))

    @property
    def decord_reads(self) -> bool:
        return (
            self.rotation == 0
            and self.video_streams == 1
            and self.container in DECORD_CONTAINERS
            and self.codec in DECORD_CODECS
        )


def frame_rotation(frame) -> int:
    """Clockwise degrees that display a PyAV frame upright (PyAV reports FFmpeg's counter-clockwise
    angle of the display matrix: -90 for a portrait phone video)."""
    return int(round(-(frame.rotation or 0) / 90.0)) % 4 * 90


def main_video_stream(container):
    """The video stream a video is: the first one marked default, else the first one, passing
    over attached (cover) pictures; None when there is none. Training and the test views agree."""
    import av

    streams = [s for s in container.streams.video if not _is_cover(s)]
    return next((s for s in streams if s.disposition & av.stream.Disposition.default), streams[0] if streams else None)


def _is_cover(stream) -> bool:
    import av

    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def open_pyav(source: str | os.PathLike | bytes | bytearray | memoryview, formats: tuple[str, ...] | None = None):
    """A PyAV input that can read nothing but `source` (bytes: no protocol at all; a path: the
    file protocol only, so a playlist or concat list opens no socket); `formats`: the accepted
    demuxers (None: any). Metadata text in invalid UTF-8 is replaced, not refused."""
    import av

    target: io.BytesIO | str
    if isinstance(source, (bytes, bytearray, memoryview)):
        target, options = io.BytesIO(source), {"protocol_whitelist": ""}
    else:
        target, options = str(source), {"protocol_whitelist": "file"}
    if formats is not None:
        options["format_whitelist"] = ",".join(formats)
    return av.open(target, mode="r", options=options, metadata_errors="replace")


def probe_video(source: str | bytes) -> VideoProbe | None:
    """Container, codec, rotation, frame rate and frame count of a video; None when PyAV cannot
    decode its first frame (decord then tries, and names the problem if it cannot either).

    It decodes that frame (2 ms for a 128 x 96 video, 18 ms for a 1080p HEVC phone video,
    measured) and, where the header has no frame count (Matroska, WebM, MPEG-TS), demuxes the
    packets without decoding them; so a video opened many times is probed once (`TrainClips`)."""
    import av

    try:
        with open_pyav(source) as container:
            stream = main_video_stream(container)
            if stream is None:
                return None
            rotation, packets, size = None, 0, (0, 0)
            for packet in container.demux(stream):
                packets += 1 if packet.size else 0
                if rotation is None:
                    for frame in packet.decode():
                        rotation, size = frame_rotation(frame), (frame.width, frame.height)
                        break
                if rotation is not None and stream.frames:
                    break
            if rotation is None:  # a decoder that holds frames back gives them up at the end
                frame = next(iter(stream.codec_context.decode(None)), None)
                if frame is None:
                    return None
                rotation, size = frame_rotation(frame), (frame.width, frame.height)
            rate = stream.average_rate or stream.guessed_rate
            return VideoProbe(
                container=container.format.name,
                codec=stream.codec_context.name,
                rotation=rotation,
                fps=float(rate) if rate else 0.0,
                frames=int(stream.frames or packets),
                video_streams=sum(1 for v in container.streams.video if not _is_cover(v)),
                width=size[0],
                height=size[1],
            )
    except (av.error.FFmpegError, EOFError, OSError, UnicodeDecodeError, ValueError):
        return None


class DecordVideo:
    """A decord reader, with the interface training uses (`len()`, `[i]`, `get_batch(indices)` as
    an (N, H, W, 3) uint8 array, `get_avg_fps()`). A batch decord fails to decode is read with
    PyAV (`PyAVVideo`) where PyAV can read the video, and so is every later one."""

    def __init__(
        self, reader, source: str | bytes, probe: VideoProbe | None, *, name: str, size: tuple[int, int] | None
    ) -> None:
        self.reader, self.source, self.probe, self.name, self.size = reader, source, probe, name, size
        self.fallback: PyAVVideo | None = None

    def __len__(self) -> int:
        return len(self.fallback) if self.fallback is not None else len(self.reader)

    def get_avg_fps(self) -> float:
        return float(self.reader.get_avg_fps())

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]

    def get_batch(self, indices) -> np.ndarray:
        if self.fallback is not None:
            return self.fallback.get_batch(indices)
        try:
            return self.reader.get_batch(list(indices)).asnumpy()
        except Exception as exc:  # decord raises its own DECORDError or RuntimeError subclasses
            if self.probe is None:
                raise VideoDecodeError(f"{self.name}: decoding failed ({_first_line(exc)})") from exc
        self.fallback = PyAVVideo(self.source, self.probe, name=self.name, size=self.size)
        return self.fallback.get_batch(indices)


class PyAVVideo:
    """A video read with PyAV and turned upright, with DecordVideo's interface.

    A batch seeks to the key frame before its first index, found by timestamp at the average
    frame rate, and decodes forward from there, so a clip late in a long video does not decode
    the whole video. The frames of a batch are consecutive decoded frames; on variable-frame-rate
    video its first one can be a few frames off the i-th (3 in 80 frames, measured), which shifts
    a random training clip and nothing else."""

    def __init__(
        self, source: str | bytes, probe: VideoProbe, *, name: str, size: tuple[int, int] | None = None
    ) -> None:
        self.source, self.probe, self.name = source, probe, name
        self.scale = {"width": size[0], "height": size[1], "interpolation": "AREA"} if size else {}
        if probe.frames == 0:
            raise VideoDecodeError(f"{name}: the video stream has no frames")

    def __len__(self) -> int:
        return self.probe.frames

    def get_avg_fps(self) -> float:
        return self.probe.fps

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]

    def get_batch(self, indices) -> np.ndarray:
        import av

        wanted = sorted({int(i) for i in indices})
        got: dict[int, np.ndarray] = {}
        try:
            with open_pyav(self.source) as container:
                stream = main_video_stream(container)
                self._decode(container, stream, wanted, got, seek=wanted[0] > 0)
                if wanted[0] not in got and wanted[0] > 0:  # the timestamps misled the seek
                    got.clear()
                    container.seek(0)
                    self._decode(container, stream, wanted, got, seek=False)
        except (av.error.FFmpegError, EOFError, OSError, ValueError) as exc:
            if not got:
                raise VideoDecodeError(f"{self.name}: decoding failed ({_first_line(exc)})") from exc
        if not got:
            raise VideoDecodeError(f"{self.name}: no frame could be decoded")
        # an index past the last frame decoded (a header that counts more frames than the stream
        # holds) gets the last frame before it
        decoded = sorted(got)
        pick = {i: got[i] if i in got else got[decoded[max(0, int(np.searchsorted(decoded, i)) - 1)]] for i in wanted}
        return np.stack([pick[int(i)] for i in indices])

    def _decode(self, container, stream, wanted: list[int], got: dict[int, np.ndarray], *, seek: bool) -> None:
        start, fps = stream.start_time or 0, self.probe.fps
        seek = bool(seek and fps and stream.time_base)
        if seek:
            container.seek(start + int(wanted[0] / fps / stream.time_base), stream=stream, backward=True)
        index: int | None = None if seek else -1
        last, want, turn = wanted[-1], set(wanted), -self.probe.rotation // 90
        for frame in container.decode(stream):
            if index is None:  # after a seek: the frame's number from its timestamp
                if frame.pts is None:
                    return
                index = round(float((frame.pts - start) * stream.time_base) * fps)
                if index > wanted[0]:
                    return
            else:
                index += 1
            if index in want:
                rgb = frame.to_ndarray(format="rgb24", **self.scale)
                got[index] = np.ascontiguousarray(np.rot90(rgb, k=turn))
            if index >= last:
                return


Video = DecordVideo | PyAVVideo


def clip_span(clip_len: int, interval: int) -> int:
    """Raw frames covered by one clip."""
    return (clip_len - 1) * interval + 1


def train_clip_indices(
    num_frames: int, *, clip_len: int, interval: int, rng: np.random.Generator, tail: int = 0
) -> np.ndarray:
    """One random clip: `clip_len` frames every `interval` frames; wraps around in short videos.

    `tail` extra frames are kept free after the clip (the TG successor of its last frame)."""
    span = clip_span(clip_len, interval) + tail
    start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else int(rng.integers(0, num_frames))
    return (start + np.arange(clip_len) * interval) % num_frames


def uniform_clip_indices(num_frames: int, *, clip_len: int, interval: int, num_clips: int) -> np.ndarray:
    """`num_clips` clips spread uniformly over the video -> (num_clips, clip_len) frame indices.

    Each clip starts at the centre of its equal share of the valid start positions; a video
    shorter than one clip wraps around, as training does.
    """
    span = clip_span(clip_len, interval)
    if num_frames >= span:
        share = (num_frames - span + 1) / num_clips
        starts = (share * (np.arange(num_clips) + 0.5)).astype(np.int64)
    else:
        starts = (np.arange(num_clips) * num_frames / num_clips).astype(np.int64)
    return (starts[:, None] + np.arange(clip_len)[None, :] * interval) % num_frames


def successor_indices(indices: np.ndarray, *, stride: int, num_frames: int) -> np.ndarray:
    """The frame `stride` after each index, for temporal gradient.

    At the end of a video the frame itself is used (a zero gradient) rather than wrapping to
    the first frame, which would difference two unrelated frames.
    """
    nxt = indices + stride
    return np.where(nxt < num_frames, nxt, indices)


def tg_frame_pairs(
    indices: np.ndarray, *, stride: int, num_frames: int, spread: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The two frames each temporal-gradient frame of a clip is taken from: (first, second), each
    shaped like `indices` ((T,) or (clips, T)); TG_t = (first_t - second_t + 255) / 2.

    Fast TG (stride 1) and slow TG with `spread` off: each sampled frame and the frame `stride`
    after it (`successor_indices`). Slow TG with `spread` (the authors' SampleFrames_WithDiff):
    T + 1 frames spread evenly, rounded, from the clip's first to its last sampled frame, and TG
    between neighbours: 7 frames apart for 8 frames at interval 8, in the clip's own span."""
    indices = np.asarray(indices)
    if not (spread and stride > 1):
        return indices, successor_indices(indices, stride=stride, num_frames=num_frames)
    clips = indices.reshape(-1, indices.shape[-1])
    t = clips.shape[1]
    points = np.stack([np.round(np.linspace(c[0], c[-1], t + 1)).astype(np.int64) for c in clips])
    return points[:, :-1].reshape(indices.shape), points[:, 1:].reshape(indices.shape)


# decord's messages start with a time and its source line, and may carry a failed check first:
# "[19:36:25] /…/video_reader.cc:151: Check failed: st_nb >= 0 (… vs. 0) ERROR cannot find video stream …"
_DECORD_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: (?:Check failed: .*?\) (?=ERROR ))?")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _DECORD_PREFIX.sub("", text[0]).removeprefix("ERROR ")[:200] if text else type(exc).__name__
