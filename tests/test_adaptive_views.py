"""Adaptive views: the coarse-to-fine clip order, the stopping rule on hand-made logits, the
calibration on synthetic scores, the manifest's record, and the served answer against the
offline adaptive answer of the same export."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.adaptive import ScoredVideos, adaptive_record, calibrate, spread
from serving.core import InferenceCore, Options, RequestError, parse_request
from tests.served_answers import offline_adaptive, val_videos
from training.adaptive_views import (
    AdaptiveViews,
    StoppingRule,
    adaptive_answer,
    coarse_to_fine,
    stop_reason,
    view_probabilities,
)
from training.data import VideoItem


# ----------------------------------------------------------------------------- the clip order
def covering_radius(chosen, clips: int) -> float:
    """The largest distance from a point of the video to its nearest chosen clip centre."""
    points = sorted((c + 0.5) / clips for c in chosen)
    return max([points[0], 1 - points[-1]] + [(b - a) / 2 for a, b in zip(points, points[1:], strict=False)])


@pytest.mark.parametrize("clips", range(1, 13))
def test_the_order_is_a_permutation_whose_every_prefix_is_spread(clips):
    order = coarse_to_fine(clips)
    assert sorted(order) == list(range(clips))
    assert order[0] == (clips - 1) // 2  # the centre clip first (the lower of two)
    for k in range(1, clips + 1):
        best = min(covering_radius(s, clips) for s in itertools.combinations(range(clips), k))
        # within 2x of the best k clips could do (a nested order cannot be best at every k: after
        # the centre, the best 2 would be the quartiles)
        assert covering_radius(order[:k], clips) <= 2 * best + 1e-12, (order, k)


def test_the_ten_clip_order_covers_the_video_at_3_4_and_5_clips_as_well_as_any():
    order = coarse_to_fine(10)
    assert order == (4, 8, 1, 6, 2, 0, 9, 3, 5, 7)
    for k in (3, 4, 5):
        best = min(covering_radius(s, 10) for s in itertools.combinations(range(10), k))
        assert covering_radius(order[:k], 10) == pytest.approx(best)
    assert sorted(order[:3]) == [1, 4, 8]  # ~ the uniform 3-clip sampling (1.2, 4.5, 7.8)


# ----------------------------------------------------------------------------- the stopping rule
def clip_logits(
    per_clip: dict[int, list[float]], *, clips: int = 10, crops: int = 3, default: list[float] | None = None
) -> np.ndarray:
    """Clip-major (clips * crops, C) logits whose views of clip c all have softmax per_clip[c]."""
    rows = []
    for c in range(clips):
        probs = np.asarray(per_clip.get(c, default), dtype=np.float64)
        rows += [np.log(probs)] * crops
    return np.stack(rows)


def test_it_stops_at_the_first_clip_where_the_margin_holds():
    order = coarse_to_fine(10)  # 4, 8, 1, ...
    logits = clip_logits(
        {order[0]: [0.4, 0.3, 0.2, 0.1], order[1]: [0.9, 0.05, 0.03, 0.02], order[2]: [0.9, 0.05, 0.03, 0.02]},
        default=[0.25, 0.25, 0.25, 0.25],
    )
    # running margins of the mean: 0.1 after 1 clip, 0.475 after 2, 0.6 after 3
    for margin, clips_used in ((0.05, 1), (0.4, 2), (0.5, 3)):
        state = adaptive_answer(logits, StoppingRule(min_clips=1, margin=margin), clips=10, crops=3)
        assert (state.stop, state.used, state.views_used) == ("margin", list(order[:clips_used]), 3 * clips_used)
        rows = np.concatenate([np.arange(3 * c, 3 * c + 3) for c in order[:clips_used]])
        np.testing.assert_allclose(state.scores, view_probabilities(logits)[rows].mean(axis=0))


def test_it_never_stops_before_the_minimum():
    logits = clip_logits({}, default=[0.97, 0.01, 0.01, 0.01])  # decided by any single view
    for min_clips in (1, 2, 3, 5):
        state = adaptive_answer(logits, StoppingRule(min_clips=min_clips, margin=0.0), clips=10, crops=3)
        assert (state.stop, state.views_used) == ("margin", 3 * min_clips)
    assert (
        stop_reason(
            StoppingRule(min_clips=3, margin=0.0), np.array([6.0, 0.0]), clips_seen=2, views_seen=6, views_total=30
        )
        is None
    )


def test_it_falls_back_to_every_view_when_nothing_decides():
    logits = clip_logits({}, default=[0.25, 0.25, 0.25, 0.25])
    state = adaptive_answer(logits, StoppingRule(min_clips=1, margin=0.1), clips=10, crops=3)
    assert (state.stop, state.views_used, state.used) == ("all", 30, list(coarse_to_fine(10)))
    np.testing.assert_allclose(state.scores, 0.25)
    # fewer clips than the minimum: all of them
    state = adaptive_answer(
        clip_logits({}, clips=2, default=[0.9, 0.1]), StoppingRule(min_clips=3, margin=0.0), clips=2, crops=3
    )
    assert (state.stop, state.views_used) == ("all", 6)


def test_it_stops_when_the_views_left_cannot_change_the_answer():
    logits = np.tile(np.array([[50.0, 0.0, 0.0, 0.0]]), (30, 1))  # every view all-in on class 0
    state = adaptive_answer(logits, StoppingRule(min_clips=1, margin=None), clips=10, crops=3)
    # after k clips class 0 leads by 3k summed probability with 30 - 3k views left: certain at k = 6
    assert (state.stop, state.views_used) == ("certain", 18)
    adversarial = logits.copy()
    rest = np.concatenate([np.arange(3 * c, 3 * c + 3) for c in coarse_to_fine(10)[6:]])
    adversarial[rest] = [0.0, 50.0, 0.0, 0.0]  # the 12 views it skipped all-in on class 1
    assert np.argmax(view_probabilities(adversarial).sum(axis=0)) == 0  # the full answer did not change
    assert adaptive_answer(adversarial, StoppingRule(1, None), clips=10, crops=3).views_used == 18


def test_the_servers_step_by_step_evaluation_equals_the_replay():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(0, 3, (30, 5))
        rule = StoppingRule(min_clips=int(rng.integers(1, 4)), margin=float(rng.choice([0.1, 0.3, 0.6])))
        state = AdaptiveViews(rule, clips=10, crops=3)
        while not state.done:
            state.add(logits[state.view_rows(state.next_clips())])  # what serving.core does
        offline = adaptive_answer(logits, rule, clips=10, crops=3)
        assert (state.used, state.stop) == (offline.used, offline.stop)
        np.testing.assert_array_equal(state.scores, offline.scores)


def test_view_rows_follow_the_clip_major_views_and_rules_are_checked():
    state = AdaptiveViews(StoppingRule(min_clips=2), clips=10, crops=3)
    assert state.next_clips() == [4, 8]
    assert state.view_rows([4, 8]).tolist() == [12, 13, 14, 24, 25, 26]
    with pytest.raises(ValueError, match="expected the 6 views"):
        state.add(np.zeros((3, 4)))
    for bad in ({"min_clips": 0}, {"margin": 1.5}, {"margin": -0.1}):
        with pytest.raises(ValueError):
            StoppingRule(**bad)
    rule = StoppingRule(min_clips=2, margin=0.3)
    assert StoppingRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    assert StoppingRule.from_dict({"min_clips": 1, "margin": None}).margin is None


# ----------------------------------------------------------------------------- calibration
def synthetic_scores() -> ScoredVideos:
    """90 easy videos (every view: class 0 ahead by a margin from 0.65 to 0.95) and 10 tricky ones
    whose first clip in the order says class 1 (margin 0.55) while every other says class 0."""
    order = coarse_to_fine(10)
    videos = []
    for margin in np.linspace(0.65, 0.95, 90):
        p0 = (1 + margin) / 2
        videos.append(view_probabilities(clip_logits({}, default=[p0 - 1e-3, 1 - p0, 1e-3])))
    for _ in range(10):
        videos.append(view_probabilities(clip_logits({order[0]: [0.2, 0.75, 0.05]}, default=[0.8, 0.1, 0.1])))
    return ScoredVideos(videos, np.zeros(100, dtype=np.int64), clips=10, crops=3)


def test_calibration_picks_the_cheapest_rule_that_keeps_the_agreement():
    videos = synthetic_scores()
    rule, report = calibrate(videos, target=0.99)
    # a margin above the tricky first clip's 0.55 sends those on (to 7 clips: certain), below the
    # easy videos' 0.65 stops those at one clip; of those equally cheap margins, the most cautious
    assert rule == StoppingRule(min_clips=1, margin=0.64)
    assert report["top1_agreement"] == 1.0 and report["mean_views"] == pytest.approx((90 * 3 + 10 * 21) / 100)
    assert report["stops"] == {"certain": 10, "margin": 90, "all": 0} and report["candidates"] == 3 * 52
    # allowed to miss 10 %: every video stops at its first clip
    rule, report = calibrate(videos, target=0.9)
    assert rule == StoppingRule(min_clips=1, margin=0.54)
    assert (report["mean_views"], report["top1_agreement"]) == (3.0, 0.9)
    assert report["top1"] == 90.0 and report["full_top1"] == 100.0 and report["top1_diff"] == -10.0


def test_the_record_holds_the_rule_and_its_figures_or_why_there_is_none():
    videos = synthetic_scores()
    record = adaptive_record(videos, videos, target=0.99, scored_with="onnxruntime-cpu")
    assert record["rule"] == {"min_clips": 1, "margin": 0.64} and record["order"] == list(coarse_to_fine(10))
    assert record["calibration"]["target_agreement"] == 0.99 and record["validation"]["videos"] == 100
    assert json.loads(json.dumps(record)) == record
    empty = ScoredVideos([], np.zeros(0, dtype=np.int64), clips=10, crops=3)
    assert adaptive_record(empty, videos, target=0.99, scored_with="x")["rule"] is None
    none = adaptive_record(None, None, target=0.99, scored_with="x", reason="not calibrated (--adaptive-videos 0)")
    assert none["rule"] is None and none["reason"].startswith("not calibrated")
    items = [VideoItem(f"{i}.mp4", i // 10) for i in range(40)]
    assert [i.label for i in spread(items, 4)] == [0, 1, 2, 3] and spread(items, 50) == items


# ----------------------------------------------------------------------------- export and serving
@pytest.fixture(scope="module")
def run(tiny_export) -> Path:
    return tiny_export


@pytest.fixture(scope="module")
def manifest(run) -> dict:
    return json.loads((run / "export" / "manifest.json").read_text())


def test_make_export_records_the_calibrated_rule_and_its_validation(manifest):
    record = manifest["adaptive_views"]
    assert record["reason"] is None and record["order"] == [0, 1]  # the tiny run: 2 clips x 3 crops
    rule = StoppingRule.from_dict(record["rule"])
    assert rule.min_clips in (1, 2)
    cal, val = record["calibration"], record["validation"]
    assert cal["data"] == "labeled training videos" and cal["videos"] == 6  # 3 classes x 2 labeled
    assert cal["top1_agreement"] >= cal["target_agreement"] == 0.99
    assert val["data"] == "validation videos" and val["videos"] == 6 and val["of_views"] == 6
    assert 3 <= val["mean_views"] <= 6 and 0 <= val["top1_agreement"] <= 1
    assert sum(val["stops"].values()) == 6 and val["top1_diff"] == pytest.approx(val["top1"] - val["full_top1"])
    assert record["scored_with"] in ("openvino-cpu-fp32", "onnxruntime-cpu")


@pytest.mark.parametrize("rule", [None, StoppingRule(1, 0.0), StoppingRule(1, None), StoppingRule(2, 0.0)])
def test_the_served_adaptive_answer_equals_the_offline_one(run, rule):
    core = InferenceCore(run / "export", backend="onnxruntime", threads=2, views="adaptive")
    if rule is not None:
        core.rule = rule  # None: the manifest's calibrated rule
    session = ort.InferenceSession(str(run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    for path, _ in val_videos(run):
        answer = core.predict(path.read_bytes(), topk=3)
        offline = offline_adaptive(path, core.spec, session, core.rule)
        assert answer["views"] == {
            "clips": 2,
            "crops": 3,
            "count": offline.views_used,
            "mode": "adaptive",
            "clips_used": offline.used,
            "stop": offline.stop,
        }
        order = np.argsort(-offline.scores, kind="stable")
        assert [p["index"] for p in answer["predictions"]] == order.tolist()
        np.testing.assert_allclose([p["score"] for p in answer["predictions"]], offline.scores[order], atol=1e-6)
    if rule == StoppingRule(1, 0.0):
        assert answer["views"]["count"] == 3 and answer["views"]["stop"] == "margin"


def test_adaptive_and_all_view_requests_batched_together_equal_each_alone(run):
    core = InferenceCore(run / "export", backend="onnxruntime", threads=2, max_views=4)
    core.rule = StoppingRule(1, 0.0)
    videos = [p.read_bytes() for p, _ in val_videos(run)[:3]]
    options = [Options(3, 2, 3, "adaptive"), Options(3, 2, 3), Options(2, 2, 1, "adaptive")]
    together = core.predict_prepared([core.prepare(v, o) for v, o in zip(videos, options, strict=True)])
    for v, o, answer in zip(videos, options, together, strict=True):
        alone = core.predict(v, topk=o.topk, clips=o.clips, crops=o.crops, views=o.views)
        assert answer["views"] == alone["views"]
        assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in alone["predictions"]]
        np.testing.assert_allclose(
            [p["score"] for p in answer["predictions"]], [p["score"] for p in alone["predictions"]], atol=1e-6
        )
    assert [a["views"]["count"] for a in together] == [3, 6, 1]
    assert "mode" not in together[1]["views"]  # all views: the answer as before


def test_views_option_as_field_or_header_and_its_errors(run, tmp_path):
    parse = lambda fields, headers=None, **kw: parse_request(  # noqa: E731
        fields,
        headers,
        num_classes=3,
        default_clips=2,  # noqa
        default_crops=3,
        **kw,
    )[1]
    assert parse({"body": b"v"}).views == "all"
    assert parse({"body": b"v"}, default_views="adaptive").views == "adaptive"
    assert parse({"data": b"v", "views": b"adaptive"}).views == "adaptive"
    assert parse({"body": b"v"}, {"X-Views": "Adaptive"}).views == "adaptive"
    assert parse({"data": b"v", "views": b"all"}, {"X-Views": "adaptive"}, default_views="adaptive").views == "all"
    with pytest.raises(RequestError) as info:
        parse({"body": b"v"}, {"X-Views": "some"})
    assert (info.value.status, info.value.code) == (400, "invalid_option") and "all, adaptive" in info.value.detail

    export = tmp_path / "export"  # the export without a rule (an export made before adaptive views)
    shutil.copytree(run / "export", export)
    manifest = json.loads((export / "manifest.json").read_text())
    del manifest["adaptive_views"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    core = InferenceCore(export, backend="onnxruntime", threads=2)
    with pytest.raises(RequestError) as info:
        core.parse({"body": b"v", "views": b"adaptive"})
    assert (info.value.status, info.value.code) == (400, "adaptive_views_unavailable")
    assert core.parse({"body": b"v"})[1].views == "all"
    with pytest.raises(ValueError, match="no calibrated stopping rule"):
        InferenceCore(export, backend="onnxruntime", threads=2, views="adaptive")


def test_offline_evaluation_answers_with_adaptive_views(run, tmp_path):
    from export.evaluate import evaluate_onnx

    run = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("serve", "logs")))
    report = evaluate_onnx(run, views="adaptive", threads=2)
    record = json.loads((run / "export" / "manifest.json").read_text())["adaptive_views"]
    assert report["adaptive"]["rule"] == record["rule"] and report["views"] == "2 clips x 3 crops, adaptive"
    # the export's validation record: the same rule on the same videos
    assert report["adaptive"]["mean_views"] == pytest.approx(record["validation"]["mean_views"])
    assert report["adaptive"]["top1_agreement_with_all_views"] == pytest.approx(record["validation"]["top1_agreement"])
    assert report["top1"] == pytest.approx(record["validation"]["top1"])
    assert (run / "eval_onnx_adaptive.json").is_file()
