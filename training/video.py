"""Decoding video with decord, and the frame indices each kind of clip needs.

decord has known leaks and thread problems with many decoder threads, so every reader is
opened with a bounded `num_threads` and used by one worker only.
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


def open_video(source: str | bytes, *, num_threads: int = 1, name: str | None = None):
    """Open a video file path or in-memory bytes with decord; raise VideoDecodeError if unreadable."""
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
        frames = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as exc:  # decord raises its own DECORDError or RuntimeError subclasses
        raise VideoDecodeError(f"{name}: decoding failed ({_first_line(exc)})") from exc
    if frames.ndim != 4 or frames.shape[0] != len(unique):
        raise VideoDecodeError(f"{name}: decoder returned {frames.shape[0]} of {len(unique)} frames")
    return frames[inverse]


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
