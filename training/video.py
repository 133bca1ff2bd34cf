"""Decoding training video with decord, and the frame indices each kind of clip needs.

decord has known leaks and thread problems with many decoder threads, so every reader is
opened with a bounded `num_threads` and used by one worker only.

Phone recordings store the sensor's frames and a display rotation (90 or 270 degrees for a
portrait video, 180 for one filmed upside down). decord 0.6 cannot decode those reliably: its
batch read fails ("from_size == to_size") and its single frames are garbage, for 90 and 270
degrees and for some 180-degree files (measured). Every rotated video is read with PyAV instead
(`UprightVideo`) and turned upright, as the test views are (`training/view_decode.py`), so a
model trains on the picture it is tested and served on.
"""

from __future__ import annotations

import functools
import io
import os

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


def open_video(source: str | bytes, *, num_threads: int = 1, name: str | None = None, rotation: int | None = None):
    """Open a video file path or in-memory bytes; raise VideoDecodeError if unreadable.

    decord reads it unless it has a display rotation (`UprightVideo` then).
    `rotation` is that rotation when the caller knows it already (`video_rotation`)."""
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
    if rotation is None:
        rotation = video_rotation(source)
    if rotation in PYAV_ROTATIONS:
        return UprightVideo(source, rotation, name=label)
    try:
        reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as exc:
        raise VideoDecodeError(f"{label}: not a readable video ({_first_line(exc)})") from exc
    if len(reader) == 0:
        raise VideoDecodeError(f"{label}: the video stream has no frames")
    return reader


def read_frames(reader, indices: np.ndarray, *, name: str = "<video>") -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed) -> (len(indices), H, W, 3) uint8."""
    unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    try:
        batch = reader.get_batch(unique.tolist())
        frames = batch if isinstance(batch, np.ndarray) else batch.asnumpy()  # UprightVideo / decord
    except VideoDecodeError:
        raise
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError subclasses
        raise VideoDecodeError(f"{name}: decoding failed ({_first_line(exc)})") from exc
    if frames.ndim != 4 or frames.shape[0] != len(unique):
        raise VideoDecodeError(f"{name}: decoder returned {frames.shape[0]} of {len(unique)} frames")
    return frames[inverse]


# display rotations decord cannot decode (module docstring)
PYAV_ROTATIONS = (90, 180, 270)


def frame_rotation(frame) -> int:
    """Clockwise degrees that display a PyAV frame upright (PyAV reports FFmpeg's counter-clockwise
    angle of the display matrix: -90 for a portrait phone video)."""
    return int(round(-(frame.rotation or 0) / 90.0)) % 4 * 90


def _open_local(source: str | bytes):
    """A PyAV input for a training video: a local file or bytes, no other protocol."""
    import av

    if isinstance(source, (bytes, bytearray)):
        return av.open(io.BytesIO(source), options={"protocol_whitelist": ""}, metadata_errors="replace")
    return av.open(source, options={"protocol_whitelist": "file"}, metadata_errors="replace")


def video_rotation(source: str | bytes) -> int:
    """The display rotation of a video's first frame, clockwise degrees (0 when PyAV cannot read
    it: the decoder that opens it next then names the problem). It decodes that frame: 2 ms for a
    128 x 96 video, 18 ms for a 1080p HEVC phone video (measured), so callers that open a video
    many times probe it once (`TrainClips`)."""
    import av

    try:
        with _open_local(source) as container:
            for frame in container.decode(video=0):
                return frame_rotation(frame)
    except (av.error.FFmpegError, IndexError, EOFError, OSError, UnicodeDecodeError):
        pass
    return 0


class UprightVideo:
    """A video with a display rotation (90, 180 or 270 degrees), read with PyAV and turned upright.

    It offers what training uses of decord's VideoReader: `len()`, `[i]`, `get_batch(indices)`
    (an (N, H, W, 3) uint8 array) and `get_avg_fps()`. A batch seeks to the key frame before its
    first index, found by timestamp at the average frame rate, and decodes forward from there, so
    a clip late in a long video does not decode the whole video. The frames of a batch are
    consecutive decoded frames; on variable-frame-rate video its first one can be a few frames
    off the i-th (3 in 80 frames, measured), which shifts a random training clip and nothing
    else."""

    def __init__(self, source: str | bytes, rotation: int, *, name: str) -> None:
        import av

        self.source, self.rotation, self.name = source, rotation, name
        try:
            with _open_local(source) as container:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 0.0
                # the header's count, else the packets' (demuxed, not decoded)
                self.frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        except (av.error.FFmpegError, IndexError, EOFError, OSError) as exc:
            raise VideoDecodeError(f"{name}: not a readable video ({_first_line(exc)})") from exc
        if self.frames == 0:
            raise VideoDecodeError(f"{name}: the video stream has no frames")

    def __len__(self) -> int:
        return self.frames

    def get_avg_fps(self) -> float:
        return self.fps

    def __getitem__(self, index: int) -> np.ndarray:
        return self.get_batch([index])[0]

    def get_batch(self, indices) -> np.ndarray:
        import av

        wanted = sorted({int(i) for i in indices})
        got: dict[int, np.ndarray] = {}
        try:
            with _open_local(self.source) as container:
                stream = container.streams.video[0]
                self._decode(container, stream, wanted, got, seek=wanted[0] > 0)
                if wanted[0] not in got and wanted[0] > 0:  # the timestamps misled the seek
                    got.clear()
                    container.seek(0)
                    self._decode(container, stream, wanted, got, seek=False)
        except (av.error.FFmpegError, EOFError, OSError) as exc:
            if not got:
                raise VideoDecodeError(f"{self.name}: decoding failed ({_first_line(exc)})") from exc
        if not got:
            raise VideoDecodeError(f"{self.name}: no frame could be decoded")
        # frames past the last one decoded (a header that counts more than the stream holds)
        # repeat the last one, as a short video's clip wraps
        decoded = sorted(got)
        pick = {i: got[i] if i in got else got[decoded[max(0, np.searchsorted(decoded, i) - 1)]] for i in wanted}
        return np.stack([pick[int(i)] for i in indices])

    def _decode(self, container, stream, wanted: list[int], got: dict[int, np.ndarray], *, seek: bool) -> None:
        start = stream.start_time or 0
        seek = bool(seek and self.fps and stream.time_base)
        if seek:
            container.seek(start + int(wanted[0] / self.fps / stream.time_base), stream=stream, backward=True)
        index: int | None = None if seek else -1
        last, want = wanted[-1], set(wanted)
        for frame in container.decode(stream):
            if index is None:  # after a seek: the frame's number from its timestamp
                if frame.pts is None:
                    return
                index = round(float((frame.pts - start) * stream.time_base) * self.fps)
                if index > wanted[0]:
                    return
            else:
                index += 1
            if index in want:
                rgb = frame.to_ndarray(format="rgb24")
                got[index] = np.ascontiguousarray(np.rot90(rgb, k=-self.rotation // 90))
            if index >= last:
                return


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
