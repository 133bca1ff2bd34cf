"""Server-agnostic inference core: uploaded video bytes -> top-k labels of the exported student.

The request path, in order:
  1. `parse_request`: the video bytes and the options (topk, clips, crops, views) from the
     fields a server hands over (raw body or multipart field `data`, form fields or
     X-Topk/X-Clips/X-Crops/X-Views headers), checked against their bounds.
  2. `InferenceCore.prepare`: the upload's bytes are parsed only by
     `training.view_decode.read_view_crops` (PyAV under the input policy; the decoder offline
     evaluation uses too), in one of the handler's isolated helper processes
     (`serving.isolation.DecodePool`) or in-process when no pool is given; its uint8 crops
     become the normalized model input with `training.views.crops_to_views`.
  3. `InferenceCore.predict_prepared`: the views of every request in a batch go through the
     runtime backend together, in chunks of at most `max_views`, and each request's view
     scores are averaged (`average_view_scores`) into its answer. A request with adaptive views
     (`training.adaptive_views`) sends its clips in coarse-to-fine order, a step at a time, until
     the export's calibrated stopping rule holds; every view is decoded either way (decoding is
     cheap next to the model), so what it saves is model time.
Every problem with a request is a `RequestError` carrying its HTTP status and a JSON body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from serving.backends import DEFAULT_MAX_VIEWS, select_backend
from serving.isolation import DecodePool, RejectedUpload
from serving.manifest import load_manifest, spec_from_manifest
from training.adaptive_views import AdaptiveViews, StoppingRule
from training.view_decode import UPLOAD_FORMATS, DecodeLimits, VideoRejected, read_view_crops
from training.views import average_view_scores, crops_to_views, geometry

log = logging.getLogger(__name__)

DEFAULT_TOPK = 5  # capped at the number of classes
MAX_CLIPS = 10  # or the manifest's test_clips where that is larger
MAX_CROPS = 3  # 3 crops already cover the long side (start, centre, end)
MAX_UPLOAD_BYTES = 100 * 2**20  # TorchServe's max_request_size refuses larger bodies before the handler
VIDEO_FIELDS = ("body", "data")  # TorchServe: raw request body -> "body", multipart field -> its name
OPTION_FIELDS = ("topk", "clips", "crops", "views")
OPTION_HEADERS = {"x-topk": "topk", "x-clips": "clips", "x-crops": "crops", "x-views": "views"}
VIEW_MODES = ("all", "adaptive")  # every clip x crop view, or coarse-to-fine until the stopping rule holds


class RequestError(Exception):
    """A request answered with an error: its HTTP `status` (4xx for bad input), a short `code`
    and a `detail` sentence that names the problem."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    def body(self) -> dict:
        return {"error": self.code, "detail": self.detail}


@dataclass(frozen=True)
class Options:
    topk: int
    clips: int
    crops: int
    views: str = "all"  # one of VIEW_MODES


@dataclass
class Prepared:
    """One request's normalized views, ready for the backend."""

    views: np.ndarray  # (clips*crops, 3, T, S, S) float32, normalized
    options: Options
    frames: int  # frames in the video
    decode_ms: float
    preprocess_ms: float


def _as_text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def parse_int(name: str, value, low: int, high: int) -> int:
    text = _as_text(value).strip()
    try:
        number = int(text)
    except ValueError:
        raise RequestError(
            400, "invalid_option", f"{name} must be an integer from {low} to {high}, got {text[:40]!r}"
        ) from None
    if not low <= number <= high:
        raise RequestError(400, "invalid_option", f"{name} must be from {low} to {high}, got {number}")
    return number


def parse_request(
    fields_: Mapping,
    headers: Mapping | None,
    *,
    num_classes: int,
    default_clips: int,
    default_crops: int,
    default_views: str = "all",
) -> tuple[bytes, Options]:
    """(video bytes, options) from one request's fields and headers; RequestError when either
    is missing or out of bounds.

    `fields_` is what the server decoded from the body: {"body": bytes} for a raw body,
    {"data": bytes, "topk": b"3", ...} for a multipart form. Options may also come as headers
    (X-Topk, X-Clips, X-Crops, X-Views), since TorchServe drops a POST's query string; a form
    field wins.
    """
    video_keys = [k for k in VIDEO_FIELDS if k in fields_]
    if not video_keys:
        raise RequestError(
            400,
            "missing_video",
            "no video in the request: send the file as the raw body with "
            "'Content-Type: application/octet-stream' or as multipart form field 'data' (a body sent "
            f"as a URL-encoded form is split into fields; got fields {sorted(str(k)[:24] for k in fields_)[:8]})",
        )
    unknown = sorted(str(k)[:24] for k in fields_ if k not in VIDEO_FIELDS and k not in OPTION_FIELDS)
    if unknown:
        raise RequestError(
            400, "unknown_field", f"unknown form field(s) {unknown[:8]}; accepted: data, " + ", ".join(OPTION_FIELDS)
        )
    video = fields_[video_keys[0]]
    if not isinstance(video, (bytes, bytearray)):
        raise RequestError(
            400,
            "invalid_body",
            f"the video arrived decoded as {type(video).__name__} (a JSON or text "
            "Content-Type): send it as 'application/octet-stream' or as multipart field 'data'",
        )
    if len(video) == 0:
        raise RequestError(400, "empty_body", "the request carries an empty file (0 bytes)")
    if len(video) > MAX_UPLOAD_BYTES:
        raise RequestError(
            413, "upload_too_large", f"the upload has {len(video)} bytes, more than the limit of {MAX_UPLOAD_BYTES}"
        )

    raw = {
        OPTION_HEADERS[k.lower()]: v
        for k, v in (headers or {}).items()
        if isinstance(k, str) and k.lower() in OPTION_HEADERS
    }
    raw.update({k: fields_[k] for k in OPTION_FIELDS if k in fields_})
    # bytes or bytearray (TorchServe's multipart fields): the decoders read either alike
    return cast(bytes, video), parse_options(
        raw,
        num_classes=num_classes,
        default_clips=default_clips,
        default_crops=default_crops,
        default_views=default_views,
    )


def parse_options(
    raw: Mapping, *, num_classes: int, default_clips: int, default_crops: int, default_views: str = "all"
) -> Options:
    """Options from {"topk"|"clips"|"crops"|"views": text or bytes}; absent ones take their
    defaults (topk 5 capped at the number of classes, the manifest's clips and crops, the
    server's views)."""
    max_clips = max(MAX_CLIPS, default_clips)
    return Options(
        topk=parse_int("topk", raw["topk"], 1, num_classes) if "topk" in raw else min(DEFAULT_TOPK, num_classes),
        clips=parse_int("clips", raw["clips"], 1, max_clips) if "clips" in raw else default_clips,
        crops=parse_int("crops", raw["crops"], 1, MAX_CROPS) if "crops" in raw else default_crops,
        views=parse_views(raw["views"]) if "views" in raw else default_views,
    )


def parse_views(value) -> str:
    text = _as_text(value).strip().lower()
    if text not in VIEW_MODES:
        raise RequestError(400, "invalid_option", f"views must be one of {', '.join(VIEW_MODES)}, got {text[:40]!r}")
    return text


def adaptive_rule(manifest: dict) -> StoppingRule | None:
    """The stopping rule `make export` calibrated for adaptive views, or None (an export
    without one: adaptive views not calibrated, or made before they existed)."""
    record = (manifest.get("adaptive_views") or {}).get("rule")
    return None if record is None else StoppingRule.from_dict(record)


def unavailable_reason(manifest: dict) -> str:
    record = manifest.get("adaptive_views")
    return "an export made before adaptive views" if record is None else record.get("reason") or "none recorded"


def iter_chunks(arrays: list[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive rows of `arrays` (as if concatenated) in chunks of at most `size` rows,
    without ever concatenating more than one chunk."""
    pending, count = [], 0
    for array in arrays:
        start = 0
        while start < len(array):
            take = min(size - count, len(array) - start)
            pending.append(array[start : start + take])
            count += take
            start += take
            if count == size:
                yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending, count = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


class InferenceCore:
    """The exported student behind a runtime backend, with the manifest's labels and input spec.

    `backend` is "auto" (the fastest of TensorRT, ONNX Runtime, PyTorch and OpenVINO that runs
    here) or one of `serving.backends.BACKEND_CHOICES`; `threads` bounds the intra-op threads of
    ONNX Runtime, torch and OpenVINO (0 = their defaults); at most `max_views` views go through
    the model at once; `gpu_id` is the GPU used where one is visible. Uploads are decoded in
    `decoder`'s isolated helpers (the TorchServe handler's pool), or in this process when it is
    None (trusted callers: tests, benchmarks), under `limits` either way. `views` is what a
    request that does not say gets: "all" (clips x crops) or "adaptive" (the manifest's stopping
    rule; ValueError when the export has none).
    """

    def __init__(
        self,
        export_dir: Path,
        *,
        backend: str = "auto",
        threads: int = 0,
        max_views: int = DEFAULT_MAX_VIEWS,
        gpu_id: int = 0,
        decoder: DecodePool | None = None,
        limits: DecodeLimits = DecodeLimits(),
        views: str = "all",
    ):
        if max_views < 1:
            raise ValueError(f"max_views must be at least 1, got {max_views}")
        if views not in VIEW_MODES:
            raise ValueError(f"views must be one of {', '.join(VIEW_MODES)}, got {views!r}")
        self.export_dir = Path(export_dir)
        self.manifest = load_manifest(self.export_dir)
        self.spec = spec_from_manifest(self.manifest)
        self.classes = list(self.manifest["classes"])
        self.rule = adaptive_rule(self.manifest)
        if views == "adaptive" and self.rule is None:
            raise ValueError(
                f"adaptive views by default, but {self.export_dir} has no calibrated stopping rule "
                f"({unavailable_reason(self.manifest)}); re-export the run"
            )
        self.default_views = views
        if threads > 0:
            torch.set_num_threads(threads)  # the normalization in crops_to_views runs on torch
        self.decoder, self.limits = decoder, limits
        self.backend = select_backend(
            self.export_dir, self.manifest, prefer=backend, threads=threads, max_views=max_views, gpu_id=gpu_id
        )
        # the sha256 of the artifact this backend runs (verified against the manifest on load)
        self.model_info = {
            "name": self.manifest["model_name"],
            "version": self.manifest["model_version"],
            "sha256": self.manifest["sha256"][self.backend.path.name],
        }
        log.info(
            "serving %s %s with backend %s on %s (%d classes, %dx%d views of %d frames at %d px; %s views by "
            "default, adaptive rule %s)",
            self.model_info["name"],
            self.model_info["version"],
            self.backend.name,
            self.backend.device,
            len(self.classes),
            self.spec.test_clips,
            self.spec.test_crops,
            self.spec.clip_len,
            self.spec.test_crop,
            self.default_views,
            self.rule,
        )

    def status(self) -> dict:
        """What serves and where: the worker's record for `python -m serving health`."""
        return {
            "model": dict(self.model_info),
            "backend": self.backend.name,
            "device": self.backend.device,
            "parity_checked": getattr(self.backend, "parity_checked", True),
            "timings_ms": dict(getattr(self.backend, "timings", {})),
        }

    def warm_up(self) -> None:
        """Zero views through the backend, so that the first request does not pay for the
        runtime's lazy initialization: one view, and on a GPU also the batch sizes the usual
        requests send (an adaptive step's crops, a default request's views up to `max_views`),
        since ONNX Runtime's cuDNN algorithm search runs again for each new batch size."""
        s = self.spec
        sizes = {1}
        if str(getattr(self.backend, "device", "cpu")).startswith("cuda"):
            sizes |= {min(n, self.backend.max_views) for n in (s.test_crops, s.test_clips * s.test_crops)}
        for n in sorted(sizes):
            self.backend(np.zeros((n, 3, s.clip_len, s.test_crop, s.test_crop), dtype=np.float32))

    def parse(self, fields_: Mapping, headers: Mapping | None = None) -> tuple[bytes, Options]:
        video, options = parse_request(
            fields_,
            headers,
            num_classes=len(self.classes),
            default_clips=self.spec.test_clips,
            default_crops=self.spec.test_crops,
            default_views=self.default_views,
        )
        if options.views == "adaptive" and self.rule is None:
            raise RequestError(
                400,
                "adaptive_views_unavailable",
                "this model has no calibrated stopping rule for "
                f"adaptive views ({unavailable_reason(self.manifest)}); send views=all",
            )
        return video, options

    def prepare(self, video: bytes, options: Options) -> Prepared:
        """Decode and preprocess one upload; RequestError when it is not a usable video."""
        g = geometry(self.spec, clips=options.clips, crops=options.crops)
        spent = {}

        def to_views(crops: np.ndarray) -> np.ndarray:  # uint8 crops -> normalized float32 views
            t = time.perf_counter()
            views = crops_to_views(crops, g, self.spec).numpy()
            spent["views"] = time.perf_counter() - t
            return views

        t0 = time.perf_counter()
        try:
            if self.decoder is not None:  # the crops stay in shared memory while they are converted
                views, info = self.decoder.decode(video, g, to_views)
                frames = int(info.get("num_frames", 0))
            else:
                decoded = read_view_crops(video, g, limits=self.limits, formats=UPLOAD_FORMATS)
                views, frames = to_views(decoded.crops), decoded.info.num_frames
        except (RejectedUpload, VideoRejected) as exc:
            raise RequestError(exc.status, exc.code, exc.detail) from None
        decode_s = time.perf_counter() - t0 - spent["views"]  # through the pool: the crossing too
        return Prepared(
            views=views, options=options, frames=frames, decode_ms=decode_s * 1e3, preprocess_ms=spent["views"] * 1e3
        )

    def forward(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Logits (sum of rows, C) of the rows of `arrays`, at most `max_views` per backend call."""
        return np.concatenate([self.backend(chunk) for chunk in iter_chunks(arrays, self.backend.max_views)])

    def predict_prepared(self, batch: list[Prepared]) -> list[dict]:
        """Answers for several prepared requests whose views go through the model together.

        In rounds: the first sends every view of each "all" request and the first step of each
        adaptive one; each later round the next clip of every adaptive request not yet decided.
        A request's `inference` time is that of the rounds it took part in."""
        # prepare() refuses adaptive requests when the manifest has no rule
        adaptive = [
            AdaptiveViews(cast(StoppingRule, self.rule), clips=p.options.clips, crops=p.options.crops)
            if p.options.views == "adaptive"
            else None
            for p in batch
        ]
        logits: list[np.ndarray | None] = [None] * len(batch)
        inference_s = [0.0] * len(batch)
        pending = list(range(len(batch)))
        while pending:
            rows = [
                batch[i].views if (a := adaptive[i]) is None else batch[i].views[a.view_rows(a.next_clips())]
                for i in pending
            ]
            t0 = time.perf_counter()
            out = self.forward(rows)
            spent = time.perf_counter() - t0
            start, still = 0, []
            for i, part in zip(pending, rows, strict=True):
                step, start = out[start : start + len(part)], start + len(part)
                inference_s[i] += spent
                a = adaptive[i]
                if a is None:
                    logits[i] = step
                elif not a.add(step):
                    still.append(i)
            pending = still
        return [self.answer(p, logits[i], adaptive[i], inference_s[i] * 1e3) for i, p in enumerate(batch)]

    def answer(
        self, p: Prepared, logits: np.ndarray | None, adaptive: AdaptiveViews | None, inference_ms: float
    ) -> dict:
        """A request's answer from the logits of all its views, or from its finished adaptive
        evaluation (the views it used, in order, and why it stopped)."""
        views: dict[str, Any] = {"clips": p.options.clips, "crops": p.options.crops}
        if adaptive is None:
            assert logits is not None  # a request with all its views has their logits
            scores = average_view_scores(torch.from_numpy(logits)).numpy()
            views["count"] = int(len(logits))
        else:
            scores = adaptive.scores
            views.update(count=adaptive.views_used, mode="adaptive", clips_used=list(adaptive.used), stop=adaptive.stop)
        order = np.argsort(-scores, kind="stable")[: p.options.topk]
        ms = {"decode": p.decode_ms, "preprocess": p.preprocess_ms, "inference": inference_ms}
        ms["total"] = sum(ms.values())
        return {
            "predictions": [{"label": self.classes[i], "index": int(i), "score": float(scores[i])} for i in order],
            "model": dict(self.model_info),
            "backend": self.backend.name,
            "views": views,
            "frames": int(p.frames),
            "timings_ms": {k: round(v, 3) for k, v in ms.items()},
        }

    def predict(
        self,
        video: bytes,
        *,
        topk: int | None = None,
        clips: int | None = None,
        crops: int | None = None,
        views: str | None = None,
    ) -> dict:
        """One video's answer for in-process callers, with a request's defaults, bounds and
        errors (RequestError)."""
        given = {
            k: str(v)
            for k, v in (("topk", topk), ("clips", clips), ("crops", crops), ("views", views))
            if v is not None
        }
        return self.predict_prepared([self.prepare(*self.parse({"body": video, **given}))])[0]
