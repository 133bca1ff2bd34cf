"""Small real video files for tests, written with PyAV: to a path, or as the bytes of an upload."""

from __future__ import annotations

import tempfile
from pathlib import Path

import av
import numpy as np
import torch

from tests.upload_corpus import rotate_mp4


def write_video(path: Path, frames: np.ndarray, fps: int = 25, *, keyframe_every: int | None = None) -> Path:
    """Encode (N, H, W, 3) uint8 frames as an mp4 (libx264, near-lossless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "threads": "1"}
        if keyframe_every:
            stream.options = {**stream.options, "g": str(keyframe_every), "keyint_min": str(keyframe_every)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def portrait_phone_video(path: Path, rotation: int, frames: int = 60) -> Path:
    """An upright 48 x 64 (W x H) portrait video stored as phones store it: frames turned by
    -rotation, a display rotation in the mp4 header. Frame i is flat 3*i under a white band on
    top; a key frame every 8 frames, so reading a late frame seeks."""
    upright = frame_coded(frames, height=64, width=48)
    upright[:, :6] = 255
    coded = np.ascontiguousarray(np.rot90(upright, -(rotation // 90), axes=(1, 2)))
    write_video(path, coded, keyframe_every=8)
    path.write_bytes(rotate_mp4(path.read_bytes(), rotation, coded.shape[2], coded.shape[1]))
    return path


def frame_coded(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is a flat image of value 3*i (so a decoded frame tells its index)."""
    values = (np.arange(num_frames) * 3).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_frames, height, width, 3)).copy()


def decoded_index(frame_values: torch.Tensor | np.ndarray) -> int:
    """Index of a frame written by `frame_coded`, from its mean value."""
    return int(round(float(np.asarray(frame_values, dtype=np.float64).mean()) / 3))


def encode(frames: np.ndarray, *, faststart: bool = False, pix_fmt: str = "yuv420p") -> bytes:
    """(N, H, W, 3) uint8 -> mp4 bytes (libx264); `faststart` puts the index before the frames
    (a second pass over the file, so it is written to disk)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        return path.read_bytes()
