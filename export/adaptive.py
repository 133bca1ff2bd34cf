"""Adaptive views at export: the stopping rule calibrated on the run's labeled training videos
and evaluated on its validation videos, recorded in the manifest as "adaptive_views".

Every view of each video is scored once by the exported model (fp32), then every candidate rule
is replayed on those scores with `training.adaptive_views.replay`, the code the server runs, so
the figures are what the server would answer. Calibration picks the cheapest rule (fewest views
per video on average) whose Top-1 agrees with the all-views answer on at least `target` of the
training videos; ties go to the more cautious rule (higher agreement, then larger margin).
Validation reports the chosen rule's mean views and its Top-1 agreement with all views, and the
Top-1 accuracy of both against the labels.

The training videos are ones the model was fitted to, so its scores on them are more confident
than on new videos and the rule can stop sooner there than it should; the validation figures
say what it does on videos it has not seen (and the server answers with them in the manifest).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.parity import decoded_views
from training.adaptive_views import STOPS, StoppingRule, coarse_to_fine, replay, view_probabilities
from training.data import VideoItem
from training.views import InputSpec

log = logging.getLogger(__name__)

DEFAULT_TARGET = 0.99  # Top-1 agreement with all views on the training videos
DEFAULT_VIDEOS = 200  # at most this many training and validation videos each (full size: ~2-8 s per video)
CANDIDATE_MIN_CLIPS = (1, 2, 3)
CANDIDATE_MARGINS = tuple(i / 50 for i in range(51)) + (None,)  # 0, 0.02, ..., 1, and "only when certain"
RULE_TEXT = (
    "clips in coarse-to-fine order, all crops of a clip at a time; after at least min_clips clips, "
    "stop once the running mean softmax's top-1 leads the second by at least margin, or once the views "
    "left cannot change the top-1; otherwise after the last clip"
)


@dataclass
class ScoredVideos:
    """Every view's softmax probabilities of a set of videos, with their labels."""

    probabilities: list[np.ndarray]  # per video (clips * crops, C), clip-major
    labels: np.ndarray  # (N,)
    clips: int
    crops: int

    def __len__(self) -> int:
        return len(self.probabilities)


def spread(items: list[VideoItem], limit: int) -> list[VideoItem]:
    """At most `limit` items taken evenly over the list (lists are often sorted by class)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def score_videos(
    items: list[VideoItem], root: Path, spec: InputSpec, backend: Callable[[np.ndarray], np.ndarray]
) -> ScoredVideos:
    """Decode every view of each video (the server's decoder and crops) and score them."""
    probabilities, labels = [], []
    for item, views in decoded_views(items, root, spec):
        probabilities.append(view_probabilities(backend(views)))
        labels.append(item.label)
    return ScoredVideos(probabilities, np.array(labels, dtype=np.int64), spec.test_clips, spec.test_crops)


def evaluate_rule(rule: StoppingRule, videos: ScoredVideos) -> dict:
    """The rule replayed on every video: mean views, Top-1 agreement with all views, how each
    evaluation stopped, and (for labeled videos) Top-1 accuracy of both answers."""
    views, agree, adaptive_right, full_right = [], 0, 0, 0
    stops: dict[str, int] = dict.fromkeys(STOPS, 0)
    for probabilities, label in zip(videos.probabilities, videos.labels, strict=True):
        state = replay(probabilities, rule, clips=videos.clips, crops=videos.crops)
        answer, full = int(np.argmax(state.scores)), int(np.argmax(probabilities.sum(axis=0)))
        views.append(state.views_used)
        assert state.stop is not None  # replay runs until the rule stops
        stops[state.stop] += 1
        agree += answer == full
        adaptive_right += answer == label
        full_right += full == label
    n = len(videos)
    report: dict[str, Any] = {
        "videos": n,
        "mean_views": float(np.mean(views)) if n else None,
        "of_views": videos.clips * videos.crops,
        "top1_agreement": agree / n if n else None,
        "stops": stops,
    }
    labeled = n and bool((videos.labels >= 0).all())
    report.update(
        top1=100.0 * adaptive_right / n if labeled else None, full_top1=100.0 * full_right / n if labeled else None
    )
    report["top1_diff"] = None if report["top1"] is None else report["top1"] - report["full_top1"]
    return report


def candidates(clips: int) -> list[StoppingRule]:
    return [
        StoppingRule(min_clips=m, margin=margin)
        for m in CANDIDATE_MIN_CLIPS
        if m <= clips
        for margin in CANDIDATE_MARGINS
    ]


def calibrate(
    videos: ScoredVideos, *, target: float = DEFAULT_TARGET, rules: list[StoppingRule] | None = None
) -> tuple[StoppingRule, dict]:
    """The cheapest rule whose Top-1 agreement with all views is at least `target` on these
    videos, and its report (with "candidates": how many rules were tried)."""
    if not len(videos):
        raise ValueError("no videos to calibrate on")
    rules = candidates(videos.clips) if rules is None else rules
    reports = [(rule, evaluate_rule(rule, videos)) for rule in rules]
    passing = [(rule, r) for rule, r in reports if r["top1_agreement"] >= target]
    if not passing:  # all views always agree with themselves
        rule = StoppingRule(min_clips=videos.clips)
        passing = [(rule, evaluate_rule(rule, videos))]
    caution = lambda rule: 2.0 if rule.margin is None else rule.margin  # noqa: E731 (None: the most cautious)
    rule, report = min(
        passing,
        key=lambda pair: (pair[1]["mean_views"], -pair[1]["top1_agreement"], -caution(pair[0]), pair[0].min_clips),
    )
    return rule, {**report, "target_agreement": target, "candidates": len(rules)}


def adaptive_record(
    train: ScoredVideos | None, val: ScoredVideos | None, *, target: float, scored_with: str, reason: str | None = None
) -> dict:
    """The manifest's "adaptive_views": the rule (None, with the reason, when there is none),
    the clip order, its calibration on `train` and its evaluation on `val`."""
    record: dict[str, Any] = {
        "rule": None,
        "reason": reason,
        "description": RULE_TEXT,
        "scored_with": scored_with,
        "calibration": None,
        "validation": None,
    }
    if reason is None and (train is None or not len(train)):
        record["reason"] = "no labeled training video could be decoded to calibrate the rule on"
    if record["reason"] is not None:
        return record
    assert train is not None  # else the reason above was set
    rule, calibration = calibrate(train, target=target)
    record.update(
        rule=rule.to_dict(),
        order=list(coarse_to_fine(train.clips)),
        clips=train.clips,
        crops=train.crops,
        calibration={"data": "labeled training videos", **calibration},
    )
    if val is not None and len(val):
        record["validation"] = {"data": "validation videos", **evaluate_rule(rule, val)}
    return record


def describe(record: dict) -> str:
    """One line for the export's log and summary."""
    if record["rule"] is None:
        return f"no rule, {record['reason']}"
    rule, cal, val = record["rule"], record["calibration"], record["validation"]
    margin = "only when certain" if rule["margin"] is None else f"margin {rule['margin']:.2f}"
    text = (
        f"min {rule['min_clips']} clips, {margin}; training ({cal['videos']} videos): "
        f"{cal['mean_views']:.1f} of {cal['of_views']} views, Top-1 agreement {cal['top1_agreement']:.3f}"
    )
    if val is not None:
        text += (
            f"; validation ({val['videos']} videos): {val['mean_views']:.1f} views, Top-1 agreement "
            f"{val['top1_agreement']:.3f}"
        )
        if val["top1_diff"] is not None:
            text += f", Top-1 {val['top1']:.2f} % vs {val['full_top1']:.2f} % with all views"
    return text


def adaptive_views(
    labeled: list[VideoItem],
    val: list[VideoItem],
    root: Path,
    spec: InputSpec,
    scorer: Callable[[np.ndarray], np.ndarray],
    *,
    scored_with: str,
    videos: int = DEFAULT_VIDEOS,
    target: float = DEFAULT_TARGET,
) -> dict:
    """The manifest's "adaptive_views" for a run: up to `videos` labeled training videos and as
    many validation videos, each spread over its list, scored by `scorer` (views -> logits);
    `videos` 0: no rule."""
    if videos == 0:
        return adaptive_record(
            None, None, target=target, scored_with=scored_with, reason="not calibrated (--adaptive-videos 0)"
        )
    train = score_videos(spread(labeled, videos), root, spec, scorer)
    checked = score_videos(spread(val, videos), root, spec, scorer)
    return adaptive_record(train, checked, target=target, scored_with=scored_with)
