"""What a served answer is checked against: the validation videos of a run's synthetic data,
the offline evaluation of one video (the way export's accuracy check scores it, over every view
or with adaptive views), and the bad uploads with the status and error code each must get."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import torch

from tests.videofiles import encode
from training.adaptive_views import StoppingRule, adaptive_answer
from training.views import InputSpec, average_view_scores, decode_test_views, normalize


def val_videos(run: Path) -> list[tuple[Path, str]]:
    """(path, class) of every validation video of the run's synthetic data, classes by name."""
    import yaml

    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    videos = [(p, p.parent.name) for p in sorted((root / "val").glob("*/*.mp4"))]
    assert videos, f"no validation videos under {root / 'val'}"
    return videos


def offline_scores(path: Path, export_dir: Path, spec: InputSpec, session: ort.InferenceSession, **views) -> np.ndarray:
    """Offline evaluation of one video: decode_test_views from its path + normalize + ONNX
    Runtime + average_view_scores, the way the export's accuracy check scores it."""
    x = normalize(decode_test_views(str(path), spec, **views).views, spec).numpy()
    return average_view_scores(torch.from_numpy(session.run(None, {"clips": x})[0])).numpy()


def offline_adaptive(path: Path, spec: InputSpec, session: ort.InferenceSession, rule: StoppingRule):
    """Offline: decode_test_views from the file + normalize + ONNX Runtime on every view +
    adaptive_answer."""
    x = normalize(decode_test_views(str(path), spec).views, spec).numpy()
    return adaptive_answer(session.run(None, {"clips": x})[0], rule, clips=spec.test_clips, crops=spec.test_crops)


def audio_only() -> bytes:
    """An AAC track in an mp4 container, and no video stream."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


def bad_uploads(good: bytes) -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, expected status, expected error code) for every bad-video case."""
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (24, 48, 64, 3), dtype=np.uint8)
    faststart = encode(noisy, faststart=True)
    mdat = faststart.find(b"mdat")
    zeroed = faststart[: mdat + 4] + bytes(len(faststart) - mdat - 4)  # index intact, every frame gone
    return {
        "empty": (b"", 400, "empty_body"),
        "text": (b"this is not a video\n" * 50, 422, "not_a_video"),
        "random_bytes": (rng.bytes(20000), 422, "not_a_video"),
        "truncated": (good[: len(good) // 2], 422, "not_a_video"),  # index (moov) at the end: cut off
        "truncated_faststart": (faststart[: mdat + 200], 422, "undecodable_video"),
        "audio_only": (audio_only(), 422, "no_video_stream"),
        "zero_decodable_frames": (zeroed, 422, "undecodable_video"),
    }
