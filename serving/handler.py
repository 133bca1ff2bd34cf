"""TorchServe handler: a thin adapter from TorchServe's batch of requests to `serving.core`.

The model archive holds this file, the exported artifacts and manifest.json; the inference
code comes from the installed `serving` package. Environment (set by `python -m serving start`):
SERVING_BACKEND = auto | tensorrt | onnxruntime | torch, SERVING_THREADS = intra-op threads
(0 = the runtime's default), SERVING_MAX_VIEWS = views per backend call.

A request that fails is answered on its own with its 4xx/5xx status and a JSON
{"error", "detail"} body; the others of the batch are answered normally.
"""
from __future__ import annotations

import logging
import os
from http import HTTPStatus
from pathlib import Path

from serving.core import InferenceCore, Prepared, RequestError

log = logging.getLogger(__name__)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


class ActionHandler:
    """initialize -> (preprocess -> inference -> postprocess) per batch."""

    def __init__(self):
        self.core: InferenceCore | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        properties = context.system_properties
        self.core = InferenceCore(Path(properties["model_dir"]),
                                  backend=os.environ.get("SERVING_BACKEND", "auto") or "auto",
                                  threads=env_int("SERVING_THREADS", 0), max_views=env_int("SERVING_MAX_VIEWS", 30),
                                  gpu_id=properties.get("gpu_id") or 0)  # TorchServe's GPU for this worker
        self.core.warm_up()
        self.initialized = True

    def preprocess(self, data: list[dict], context) -> list[Prepared | RequestError]:
        """Each request's views, or the error it gets answered with."""
        prepared = []
        for idx, request in enumerate(data):
            try:
                video, options = self.core.parse(request, context.get_all_request_header(idx))
                prepared.append(self.core.prepare(video, options))
            except RequestError as exc:
                prepared.append(exc)
            except Exception as exc:  # one broken request must not fail the others of its batch
                log.exception("request %d of the batch failed while decoding", idx)
                prepared.append(RequestError(500, "internal_error", f"decoding failed unexpectedly: {exc}"))
        return prepared

    def inference(self, prepared: list[Prepared | RequestError]) -> list[dict | RequestError]:
        """The good requests of the batch go through the model together."""
        good = [p for p in prepared if isinstance(p, Prepared)]
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
