"""The TorchServe handler in-process: a batch of requests in the shapes TorchServe hands them
over (raw body, multipart fields, headers), each answered with its own status and JSON body.

The context is TorchServe's own `ts.context.Context` with one `RequestProcessor` per request,
set up the way `ts.service.Service.predict` does before it calls a handler."""

from __future__ import annotations

import numpy as np
import pytest
from ts.context import Context, RequestProcessor

from serving.handler import ActionHandler
from tests.served_answers import bad_uploads, val_videos


def make_context(run, headers: list[dict]) -> Context:
    context = Context(
        "action", str(run / "export"), manifest=None, batch_size=len(headers), gpu=None, mms_version="0.12.0"
    )
    context.request_processor = [RequestProcessor(h) for h in headers]
    return context


def handle(handler: ActionHandler, run, requests: list[dict], headers: list[dict] | None = None):
    """-> (bodies, [(status, content type)]) for one batch."""
    context = make_context(run, headers or [{} for _ in requests])
    bodies = handler.handle(requests, context)
    return bodies, [
        (context.get_response_status(i)[0], context.get_response_content_type(i)) for i in range(len(requests))
    ]


@pytest.fixture(scope="module")
def run(tiny_export):
    return tiny_export


@pytest.fixture(scope="module")
def handler(run) -> ActionHandler:
    h = ActionHandler()
    h.initialize(make_context(run, [{}]))
    # auto: the fastest here
    assert h.initialized and h.core.backend.name in (
        "onnxruntime-cpu",
        "torch-cpu",
        "openvino-cpu-fp32",
        "openvino-cpu-bf16",
    )
    return h


@pytest.fixture(scope="module")
def videos(run) -> list[bytes]:
    return [p.read_bytes() for p, _ in val_videos(run)]


def scores(body: dict) -> dict[int, float]:
    return {p["index"]: p["score"] for p in body["predictions"]}


def test_a_batch_of_several_requests_is_answered_request_by_request(handler, run, videos):
    requests = [
        {"body": bytearray(videos[0])},  # raw body
        {"data": bytearray(videos[1]), "topk": bytearray(b"1"), "crops": bytearray(b"1")},  # multipart form
        {"body": bytearray(b"not a video at all" * 20)},
        {"body": bytearray(videos[2])},  # options as headers
    ]
    headers = [{}, {}, {}, {"X-Clips": "1", "X-Topk": "2"}]
    bodies, statuses = handle(handler, run, requests, headers)
    assert [s for s, _ in statuses] == [200, 200, 422, 200]
    assert all(ct == "application/json" for _, ct in statuses)
    assert bodies[0]["views"] == {"clips": 2, "crops": 3, "count": 6} and len(bodies[0]["predictions"]) == 3
    assert bodies[1]["views"] == {"clips": 2, "crops": 1, "count": 2} and len(bodies[1]["predictions"]) == 1
    assert bodies[2]["error"] == "not_a_video" and "not a readable video" in bodies[2]["detail"]
    assert bodies[3]["views"] == {"clips": 1, "crops": 3, "count": 3} and len(bodies[3]["predictions"]) == 2
    # every answer of the batch equals the same request sent alone
    for request, header, body in (
        (requests[0], {}, bodies[0]),
        (requests[1], {}, bodies[1]),
        (requests[3], headers[3], bodies[3]),
    ):
        (alone,), (status,) = handle(handler, run, [request], [header])
        assert status[0] == 200 and scores(alone).keys() == scores(body).keys()
        np.testing.assert_allclose(list(scores(alone).values()), list(scores(body).values()), atol=1e-6)


@pytest.mark.parametrize(
    "request_, headers, status, code",
    [
        ({"body": bytearray()}, {}, 400, "empty_body"),
        ({}, {}, 400, "missing_video"),
        ({"data": bytearray(b"x"), "size": bytearray(b"3")}, {}, 400, "unknown_field"),
        ({"data": "VIDEO", "topk": bytearray(b"9")}, {}, 400, "invalid_option"),
        ({"data": "VIDEO", "clips": bytearray(b"11")}, {}, 400, "invalid_option"),
        ({"data": "VIDEO", "crops": bytearray(b"0")}, {}, 400, "invalid_option"),
        ({"body": "VIDEO"}, {"X-Topk": "zero"}, 400, "invalid_option"),
    ],
)
def test_request_errors_get_their_status_and_json_body(handler, run, videos, request_, headers, status, code):
    request_ = {k: (bytearray(videos[0]) if v == "VIDEO" else v) for k, v in request_.items()}
    (body,), ((got, content_type),) = handle(handler, run, [request_], [headers])
    assert (got, body["error"]) == (status, code) and set(body) == {"error", "detail"} and body["detail"]
    assert content_type == "application/json"


def test_every_bad_video_gets_its_4xx_and_the_next_request_succeeds(handler, run, videos):
    for name, (data, status, code) in bad_uploads(videos[0]).items():
        (body,), ((got, _),) = handle(handler, run, [{"body": bytearray(data)}])
        assert (got, body["error"]) == (status, code), (name, body)
    (body,), ((got, _),) = handle(handler, run, [{"body": bytearray(videos[0])}])
    assert got == 200 and body["views"]["count"] == 6


def test_a_failing_model_answers_500_for_its_batch_and_the_next_batch_works(handler, run, videos, monkeypatch):
    def broken(views):
        raise RuntimeError("device lost")

    monkeypatch.setattr(handler.core, "forward", broken)
    bodies, statuses = handle(handler, run, [{"body": bytearray(videos[0])}, {"body": bytearray()}])
    assert [s for s, _ in statuses] == [500, 400]
    assert bodies[0] == {"error": "inference_failed", "detail": "the model failed on this batch: device lost"}
    assert bodies[1]["error"] == "empty_body"
    monkeypatch.undo()
    (body,), ((got, _),) = handle(handler, run, [{"body": bytearray(videos[0])}])
    assert got == 200 and body["predictions"]


def test_an_unexpected_error_in_one_request_spares_the_rest_of_the_batch(handler, run, videos, monkeypatch):
    prepare = handler.core.prepare

    def flaky(video, options):
        if options.clips == 1:
            raise MemoryError("simulated")
        return prepare(video, options)

    monkeypatch.setattr(handler.core, "prepare", flaky)
    bodies, statuses = handle(
        handler, run, [{"data": bytearray(videos[0]), "clips": bytearray(b"1")}, {"body": bytearray(videos[1])}]
    )
    assert [s for s, _ in statuses] == [500, 200]
    assert bodies[0]["error"] == "internal_error" and bodies[1]["views"]["count"] == 6


def test_backend_and_threads_come_from_the_environment(run, monkeypatch):
    monkeypatch.setenv("SERVING_BACKEND", "torch")
    monkeypatch.setenv("SERVING_THREADS", "2")
    h = ActionHandler()
    h.initialize(make_context(run, [{}]))
    assert h.core.backend.name == "torch-cpu"
    monkeypatch.setenv("SERVING_THREADS", "two")
    with pytest.raises(ValueError, match="SERVING_THREADS must be an integer, got 'two'"):
        ActionHandler().initialize(make_context(run, [{}]))


def test_adaptive_views_by_default_from_the_environment_and_views_all_per_request(run, videos, monkeypatch):
    monkeypatch.setenv("SERVING_VIEWS", "adaptive")  # what `python -m serving start --adaptive-views` sets
    h = ActionHandler()
    h.initialize(make_context(run, [{}]))
    bodies, statuses = handle(
        h,
        run,
        [
            {"body": bytearray(videos[0])},
            {"body": bytearray(videos[0])},
            {"data": bytearray(videos[0]), "views": bytearray(b"all")},
        ],
        [{}, {"X-Views": "all"}, {}],
    )
    assert [s for s, _ in statuses] == [200, 200, 200]
    assert bodies[0]["views"]["mode"] == "adaptive" and bodies[0]["views"]["count"] in (3, 6)
    assert bodies[1]["views"] == bodies[2]["views"] == {"clips": 2, "crops": 3, "count": 6}
    monkeypatch.setenv("SERVING_VIEWS", "some")
    with pytest.raises(ValueError, match="views must be one of all, adaptive"):
        ActionHandler().initialize(make_context(run, [{}]))
