"""TorchServe handler: a thin adapter from TorchServe's batch of requests to `serving.core`.

The model archive holds this file, the exported artifacts and manifest.json; the inference
code comes from the installed `serving` package. Environment (set by `python -m serving start`):
SERVING_BACKEND = auto | tensorrt | onnxruntime | torch | openvino[-int8|-bf16|-fp32],
SERVING_THREADS = intra-op threads (0 = the runtime's default), SERVING_MAX_VIEWS = views per
backend call, SERVING_VIEWS = all | adaptive: the views of a request that does not choose
(`start --adaptive-views`; adaptive needs the export's calibrated stopping rule).
Uploads are decoded in a pool of isolated helper processes owned by the handler
(`serving.isolation`): SERVING_DECODERS = helpers (2), SERVING_DECODE_TIMEOUT = seconds one
decode may take (30), SERVING_DECODE_MEMORY_MB = a helper's address space (3072),
SERVING_DECODE_QUEUE = seconds a request waits for a free helper before its 503 (10).
SERVING_STATUS_DIR = where each worker records its backend and device (`worker-<pid>.json`,
read by `python -m serving health`).

A request that fails is answered on its own with its 4xx/5xx status and a JSON
{"error", "detail"} body; the others of the batch are answered normally.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from pathlib import Path

from serving.core import VIDEO_FIELDS, InferenceCore, Prepared, RequestError
from serving.isolation import DecodePool, HelperLimits
from training.view_decode import DecodeLimits

log = logging.getLogger(__name__)


def env_number(name: str, default: float, kind: type = int):
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None


def env_int(name: str, default: int) -> int:
    return env_number(name, default, int)


def decode_pool_from_env() -> DecodePool:
    seconds = env_number("SERVING_DECODE_TIMEOUT", 30.0, float)
    limits = HelperLimits(
        memory_mb=env_int("SERVING_DECODE_MEMORY_MB", 3072),
        cpu_seconds=int(2 * seconds) + 1,
        wall_seconds=seconds + 5.0,
        decode=DecodeLimits(max_seconds=seconds),
    )
    return DecodePool(
        env_int("SERVING_DECODERS", 2), limits=limits, queue_seconds=env_number("SERVING_DECODE_QUEUE", 10.0, float)
    )


def upload_size(request: dict) -> int:
    for key in VIDEO_FIELDS:
        value = request.get(key) if isinstance(request, dict) else None
        if isinstance(value, (bytes, bytearray, str)):
            return len(value)
    return 0


def write_status(folder: str, status: dict) -> None:
    """This worker's status as `folder/worker-<pid>.json` (written whole, then renamed)."""
    if not folder:
        return
    path = Path(folder) / f"worker-{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**status, "pid": os.getpid()}))
    tmp.replace(path)


class ActionHandler:
    """initialize -> (preprocess -> inference -> postprocess) per batch."""

    def __init__(self):
        self.core: InferenceCore | None = None
        self.pool: DecodePool | None = None
        self.threads: ThreadPoolExecutor | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        properties = context.system_properties
        self.pool = decode_pool_from_env()  # started first: the helpers import while the model loads
        atexit.register(self.pool.close)
        self.threads = ThreadPoolExecutor(len(self.pool.pids()), thread_name_prefix="decode")
        self.core = InferenceCore(
            Path(properties["model_dir"]),
            decoder=self.pool,
            backend=os.environ.get("SERVING_BACKEND", "auto") or "auto",
            threads=env_int("SERVING_THREADS", 0),
            max_views=env_int("SERVING_MAX_VIEWS", 30),
            views=os.environ.get("SERVING_VIEWS", "").strip() or "all",
            gpu_id=properties.get("gpu_id") or 0,
        )  # TorchServe's GPU for this worker
        self.core.warm_up()
        self.pool.wait_ready()
        write_status(os.environ.get("SERVING_STATUS_DIR", "").strip(), self.core.status())
        self.initialized = True

    def prepare_one(self, request: dict, headers) -> Prepared | RequestError:
        try:
            assert self.core is not None  # set by initialize
            video, options = self.core.parse(request, headers)
            return self.core.prepare(video, options)
        except RequestError as exc:
            return exc
        except Exception as exc:  # one broken request must not fail the others of its batch
            log.exception("a request failed while it was prepared")
            return RequestError(
                500, "internal_error", f"preparing the request failed unexpectedly: {type(exc).__name__}"
            )

    def preprocess(self, data: list[dict], context) -> list[Prepared | RequestError]:
        """Each request's views, or the error it gets answered with; the uploads of a batch are
        decoded concurrently, one per helper."""
        headers = [context.get_all_request_header(idx) for idx in range(len(data))]
        assert self.threads is not None  # set by initialize
        prepared = list(self.threads.map(self.prepare_one, data, headers))
        for request, result in zip(data, prepared, strict=True):
            if isinstance(result, RequestError):  # one line per refusal; never the upload's bytes
                log.info(
                    "refused request: status=%d code=%s bytes=%d", result.status, result.code, upload_size(request)
                )
        return prepared

    def inference(self, prepared: list[Prepared | RequestError]) -> list[dict | RequestError]:
        """The good requests of the batch go through the model together."""
        good = [p for p in prepared if isinstance(p, Prepared)]
        assert self.core is not None  # set by initialize
        try:
            answers = iter(self.core.predict_prepared(good))
        except Exception as exc:  # answer every request of the batch instead of TorchServe's bare 503
            log.exception("inference failed for a batch of %d requests", len(good))
            failed = RequestError(500, "inference_failed", f"the model failed on this batch: {exc}")
            return [p if isinstance(p, RequestError) else failed for p in prepared]
        return [p if isinstance(p, RequestError) else next(answers) for p in prepared]

    def postprocess(self, results: list[dict | RequestError], context) -> list[dict]:
        """JSON bodies; errors also set their request's status code."""
        bodies = []
        for idx, result in enumerate(results):
            context.set_response_content_type(idx, "application/json")
            if isinstance(result, RequestError):
                context.set_response_status(result.status, HTTPStatus(result.status).phrase, idx)
                bodies.append(result.body())
            else:
                bodies.append(result)
        return bodies

    def handle(self, data: list[dict], context) -> list[dict]:
        return self.postprocess(self.inference(self.preprocess(data, context)), context)
