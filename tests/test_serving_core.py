"""The server-agnostic inference core on a real export of the tiny run: request parsing and
bounds, decoding real video files from memory, every bad-upload path, batching and chunking,
backend selection, and equality with offline evaluation of the same ONNX model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import psutil
import pytest
import torch

from serving.backends import BackendError, fastest, openvino_cpu_precisions, select_backend
from serving.core import MAX_CLIPS, InferenceCore, Options, RequestError, iter_chunks, parse_request
from tests.served_answers import bad_uploads, offline_scores, val_videos
from tests.videofiles import encode
from training.view_decode import DecodeLimits


@pytest.fixture(scope="module")
def run(tiny_export) -> Path:
    return tiny_export


@pytest.fixture(scope="module")
def core(run) -> InferenceCore:
    return InferenceCore(run / "export", backend="onnxruntime", threads=2)  # what the offline reference runs


@pytest.fixture(scope="module")
def manifest(run) -> dict:
    return json.loads((run / "export" / "manifest.json").read_text())


# ----------------------------------------------------------------------------- parsing
def parse(fields, headers=None):
    return parse_request(fields, headers, num_classes=3, default_clips=2, default_crops=3)


def test_raw_body_and_multipart_fields_and_headers():
    video, options = parse({"body": bytearray(b"abc")})
    assert bytes(video) == b"abc" and options == Options(topk=3, clips=2, crops=3)  # topk 5 capped at 3 classes
    video, options = parse({"data": b"abc", "topk": bytearray(b"2"), "clips": b" 7 ", "crops": "1"})
    assert video == b"abc" and options == Options(topk=2, clips=7, crops=1)
    _, options = parse({"body": b"abc"}, {"X-Topk": "1", "x-clips": "4", "Host": "x"})
    assert options == Options(topk=1, clips=4, crops=3)
    _, options = parse({"data": b"abc", "topk": b"2"}, {"X-Topk": "1"})
    assert options.topk == 2  # a form field wins over a header


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"body": b"v", "topk": b"0"}, "topk must be from 1 to 3, got 0"),
        ({"body": b"v", "topk": b"4"}, "topk must be from 1 to 3, got 4"),
        ({"body": b"v", "clips": str(MAX_CLIPS + 1).encode()}, f"clips must be from 1 to {MAX_CLIPS}"),
        ({"body": b"v", "clips": b"0"}, "clips must be from 1 to"),
        ({"body": b"v", "crops": b"4"}, "crops must be from 1 to 3, got 4"),
        ({"body": b"v", "crops": b"two"}, "crops must be an integer from 1 to 3, got 'two'"),
        ({"body": b"v", "topk": b"1.5"}, "topk must be an integer"),
    ],
)
def test_out_of_range_and_malformed_options_are_400(fields, message):
    with pytest.raises(RequestError) as info:
        parse(fields)
    assert info.value.status == 400 and info.value.code == "invalid_option" and message in info.value.detail
    assert info.value.body() == {"error": "invalid_option", "detail": info.value.detail}


def test_out_of_range_header_option_is_400():
    with pytest.raises(RequestError, match="clips must be from 1"):
        parse({"body": b"v"}, {"X-Clips": "99"})


@pytest.mark.parametrize(
    "fields, status, code, message",
    [
        ({"body": b""}, 400, "empty_body", "empty file (0 bytes)"),
        ({"data": bytearray()}, 400, "empty_body", "empty file"),
        ({}, 400, "missing_video", "multipart form field 'data'"),
        ({"\x00\x00 ftypisom": b"", "x264 core": b"1"}, 400, "missing_video", "URL-encoded form"),
        ({"file": b"abc"}, 400, "missing_video", "got fields ['file']"),
        ({"data": b"abc", "top_k": b"2"}, 400, "unknown_field", "unknown form field(s) ['top_k']"),
        ({"body": {"video": "x"}}, 400, "invalid_body", "decoded as dict"),
    ],
)
def test_missing_empty_or_misnamed_video_is_400(fields, status, code, message):
    with pytest.raises(RequestError) as info:
        parse(fields)
    assert (info.value.status, info.value.code) == (status, code) and message in info.value.detail


def test_iter_chunks_keeps_every_row_in_order_and_bounds_the_chunk():
    arrays = [np.arange(n * 2).reshape(n, 2) + 100 * i for i, n in enumerate((5, 1, 7, 3))]
    chunks = list(iter_chunks(arrays, 4))
    assert [len(c) for c in chunks] == [4, 4, 4, 4]
    assert np.array_equal(np.concatenate(chunks), np.concatenate(arrays))
    assert [len(c) for c in iter_chunks([np.zeros((3, 1))], 30)] == [3]
    assert list(iter_chunks([], 4)) == []


# ----------------------------------------------------------------------------- predictions
def test_answer_equals_offline_evaluation_of_the_same_onnx_model(run, core, manifest):
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    for path, _label in val_videos(run):
        answer = core.predict(path.read_bytes())
        expected = offline_scores(path, run / "export", core.spec, session)
        served = np.zeros(len(core.classes))
        for p in answer["predictions"]:
            served[p["index"]] = p["score"]
            assert core.classes[p["index"]] == p["label"]
        assert len(answer["predictions"]) == 3  # topk 5 capped at the 3 classes
        np.testing.assert_allclose(served, expected, atol=1e-6, rtol=0)
        assert answer["predictions"][0]["index"] == int(expected.argmax())
        assert [p["score"] for p in answer["predictions"]] == sorted(served, reverse=True)
        assert answer["views"] == {"clips": 2, "crops": 3, "count": 6}  # the tiny run's test views
        assert answer["frames"] == 20  # the synthetic videos' length
    assert answer["model"] == {
        "name": "action",
        "version": manifest["model_version"],
        "sha256": manifest["sha256"]["model.onnx"],
    }
    assert answer["backend"] == "onnxruntime-cpu"
    timings = answer["timings_ms"]
    assert set(timings) == {"decode", "preprocess", "inference", "total"} and all(v >= 0 for v in timings.values())
    assert timings["total"] == pytest.approx(timings["decode"] + timings["preprocess"] + timings["inference"], abs=0.01)


def test_topk_clips_and_crops_change_the_views_used(run, core):
    path = val_videos(run)[0][0]
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    answer = core.predict(path.read_bytes(), topk=1, clips=5, crops=1)
    assert answer["views"] == {"clips": 5, "crops": 1, "count": 5} and len(answer["predictions"]) == 1
    expected = offline_scores(path, run / "export", core.spec, session, clips=5, crops=1)
    assert answer["predictions"][0]["score"] == pytest.approx(float(expected.max()), abs=1e-6)


def test_batched_and_chunked_requests_equal_each_request_alone(run):
    core = InferenceCore(run / "export", threads=2, max_views=4)  # chunks cut across requests
    videos = [p.read_bytes() for p, _ in val_videos(run)[:3]]
    options = [Options(3, 2, 3), Options(2, 1, 1), Options(3, 3, 2)]
    prepared = [core.prepare(v, o) for v, o in zip(videos, options, strict=True)]
    together = core.predict_prepared(prepared)
    for v, o, answer in zip(videos, options, together, strict=True):
        alone = core.predict(v, topk=o.topk, clips=o.clips, crops=o.crops)
        assert answer["views"] == alone["views"] and answer["views"]["count"] == o.clips * o.crops
        assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in alone["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in answer["predictions"]], [p["score"] for p in alone["predictions"]], atol=1e-6
        )
    assert core.predict_prepared([]) == []


def test_video_shorter_than_one_clip_is_answered_with_wrap_around(core):
    frames = np.stack([np.full((36, 40, 3), 40 * i, np.uint8) for i in range(3)])  # one clip spans 7 frames
    answer = core.predict(encode(frames))
    assert answer["frames"] == 3 and answer["views"]["count"] == 6
    assert sum(p["score"] for p in answer["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_every_bad_upload_gets_its_4xx_and_the_core_keeps_answering(run, core):
    good = val_videos(run)[0][0].read_bytes()
    for name, (data, status, code) in bad_uploads(good).items():
        with pytest.raises(RequestError) as info:
            core.predict(data)
        assert (info.value.status, info.value.code) == (status, code), (name, info.value.detail)
        assert info.value.detail
        assert core.predict(good)["views"]["count"] == 6


def test_frames_larger_than_full_hd_are_answered_and_the_frame_limit_is_its_own_code(run, core):
    data = encode(np.zeros((2, 1088, 1920, 3), np.uint8))  # refused by the old 1920x1080 check
    assert core.predict(data, clips=1, crops=1)["views"]["count"] == 1
    small = InferenceCore(run / "export", backend="onnxruntime", threads=2, limits=DecodeLimits(max_pixels=1920 * 1080))
    with pytest.raises(RequestError) as info:
        small.predict(data)
    assert (info.value.status, info.value.code) == (422, "video_too_large") and "1920x1088" in info.value.detail


def test_memory_stays_flat_over_many_good_and_bad_requests(run, core):
    good = [p.read_bytes() for p, _ in val_videos(run)]
    bad = [data for data, _, _ in bad_uploads(good[0]).values()]
    me = psutil.Process()

    def requests(n):
        for i in range(n):
            core.predict(good[i % len(good)])
            with pytest.raises(RequestError):
                core.predict(bad[i % len(bad)])

    requests(20)  # warm-up: allocator pools, decoder and runtime caches
    before = me.memory_info().rss
    requests(60)
    grown_mib = (me.memory_info().rss - before) / 2**20
    assert grown_mib < 20, f"RSS grew by {grown_mib:.1f} MiB over 120 requests"


# ----------------------------------------------------------------------------- backends
def test_fastest_keeps_the_earlier_backend_unless_a_later_one_is_clearly_faster():
    assert fastest({"onnxruntime": 1.0, "torch": 0.95}) == "onnxruntime"  # within the 10 % margin
    assert fastest({"onnxruntime": 1.0, "torch": 0.85}) == "torch"
    assert fastest({"tensorrt": 0.2, "onnxruntime": 1.0, "torch": 0.1}) == "torch"
    assert fastest({"tensorrt": 0.2, "onnxruntime": 0.1, "torch": 0.095}) == "onnxruntime"
    assert fastest({"torch": 3.0}) == "torch"
    with pytest.raises(ValueError, match="no timings"):
        fastest({})


def test_auto_backend_is_the_one_measured_fastest(run, manifest):
    backend = select_backend(run / "export", manifest, threads=1)
    # the CPU runtimes run here, each OpenVINO precision the export offers on its own: each was
    # timed on one default request's views, in the order auto prefers them
    here = openvino_cpu_precisions()
    openvino = [
        f"openvino-cpu-{p}" for p in ("fp32", "bf16", "int8") if p in manifest["openvino"]["offered"] and p in here
    ]
    assert list(backend.timings) == ["onnxruntime-cpu", "torch-cpu", *openvino]
    assert backend.name == fastest(backend.timings)
    assert select_backend(run / "export", manifest, prefer="onnxruntime", threads=1).timings == {}


def test_torch_backend_agrees_with_onnxruntime(run, manifest):
    export_dir = run / "export"
    core = InferenceCore(export_dir, backend="onnxruntime", threads=2)
    torch_core = InferenceCore(export_dir, backend="torch", threads=2)
    assert torch_core.backend.name == "torch-cpu"
    assert torch_core.model_info["sha256"] == manifest["sha256"]["student.pt2"]
    for path, _ in val_videos(run)[:3]:
        data = path.read_bytes()
        a, b = core.predict(data), torch_core.predict(data)
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]], atol=1e-4
        )


def test_auto_falls_back_to_torch_without_onnx_and_refuses_a_tampered_artifact(run, manifest, tmp_path):
    export_dir = Path(shutil.copytree(run / "export", tmp_path / "export"))
    for name in ("model.onnx", "model.xml", "model.bin"):
        (export_dir / name).unlink()
    assert select_backend(export_dir, manifest, threads=1).name == "torch-cpu"
    (export_dir / "student.pt2").write_bytes(b"tampered")
    with pytest.raises(BackendError, match="student.pt2 has sha256 .* the manifest says"):
        select_backend(export_dir, manifest, prefer="torch")
    with pytest.raises(BackendError, match="no runtime backend can run this export"):
        select_backend(export_dir, manifest)
    with pytest.raises(BackendError, match="unknown backend 'tvm'"):
        select_backend(export_dir, manifest, prefer="tvm")


def test_tensorrt_backend_is_refused_with_the_reason_where_it_cannot_run(run, manifest):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available() and (manifest.get("tensorrt") or {}).get("file"):
            pytest.skip("TensorRT runs here: covered by test_tensorrt_backend_matches_onnxruntime")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="TensorRT engine|tensorrt is not installed|no CUDA GPU"):
        select_backend(run / "export", manifest, prefer="tensorrt")


@pytest.mark.gpu
def test_tensorrt_backend_matches_onnxruntime(run, core, manifest):
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available() or not (manifest.get("tensorrt") or {}).get("file"):
        pytest.skip("needs a CUDA GPU and an export with a TensorRT engine")
    trt_core = InferenceCore(run / "export", backend="tensorrt")
    assert trt_core.backend.name.startswith("tensorrt-cuda-")
    for path, _ in val_videos(run):
        a, b = core.predict(path.read_bytes()), trt_core.predict(path.read_bytes())
        assert a["predictions"][0]["index"] == b["predictions"][0]["index"]
        np.testing.assert_allclose(a["predictions"][0]["score"], b["predictions"][0]["score"], atol=2e-2)


def test_missing_export_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json in"):
        InferenceCore(tmp_path)
