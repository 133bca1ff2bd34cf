"""Adaptive views: a video's test views evaluated coarse-to-fine, stopped by a calibrated rule.

The 10 x 3 test (`training/views.py`) runs the model on all 30 views of every video, while most
videos are decided after a few. Here the clips are taken in an order that spreads every prefix
over the video (`coarse_to_fine`), with all crops of a clip at a time, and after each clip the
running sum of the views' softmax probabilities (the video's score, as `average_view_scores`
makes it from all views) is checked against a `StoppingRule`:

  once at least `min_clips` clips are in, stop when
  - "certain": the top-1 class leads every other by more summed probability than there are
    views left (a view adds at most 1 to any class), so no remaining view can change the
    answer; or
  - "margin": the top-1 class's mean probability leads the second's by at least `margin`;
  and in any case after the last clip ("all").

Why the margin between the top two rather than the top-1 probability: the answer changes only
if the remaining views pull another class past the leader, and the lead is exactly what they
must overcome (with many classes a video can be decided at a top-1 probability of 0.4, or
undecided at 0.6 against a close second); its limit case is the certainty stop, so one number
says how much evidence the rule wants. `min_clips` guards against a single confident but
unrepresentative clip. Both are chosen on the run's training videos by `make export`
(export/adaptive.py) and stored in the manifest.

The server (serving/core.py) and calibration and offline evaluation (export/adaptive.py,
`python -m export evaluate --views adaptive`) all drive `AdaptiveViews`, so an adaptive answer
served equals the one evaluated offline (no train/serve skew).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STOPS = ("certain", "margin", "all")  # why an adaptive evaluation stopped


@dataclass(frozen=True)
class StoppingRule:
    """Stop after at least `min_clips` clips once the answer is certain or the top-1 mean
    probability leads the second by at least `margin` (None: only when certain)."""

    min_clips: int = 1
    margin: float | None = None

    def __post_init__(self):
        if self.min_clips < 1:
            raise ValueError(f"min_clips must be at least 1, got {self.min_clips}")
        if self.margin is not None and not 0.0 <= self.margin <= 1.0:
            raise ValueError(f"margin must be from 0 to 1 (or None), got {self.margin}")

    def to_dict(self) -> dict:
        return {"min_clips": self.min_clips, "margin": self.margin}

    @classmethod
    def from_dict(cls, record: dict) -> StoppingRule:
        return cls(
            min_clips=int(record["min_clips"]), margin=None if record.get("margin") is None else float(record["margin"])
        )


@lru_cache(maxsize=64)
def coarse_to_fine(clips: int) -> tuple[int, ...]:
    """An order of the clip indices 0..clips-1 (clip c centred at (c + 0.5) / clips of the video,
    `training.video.uniform_clip_indices`) in which every prefix is spread over the video.

    Greedy: each next clip is the one that most lowers the mean squared distance from a point of
    the video to its nearest evaluated clip (ties: the lower index). It starts at the centre and
    then fills the largest gaps; for 10 clips: 4, 8, 1, 6, 2, 0, 9, 3, 5, 7, whose first 3, 4
    and 5 clips cover the video as well as any 3, 4 or 5 of the 10 can (tests/test_adaptive_views.py)."""
    if clips < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")

    def cost(chosen: list[int]) -> int:
        # exact integers: positions in units of 1 / (2 * clips), clip c at 2c + 1, the video 0..2*clips;
        # 3 x the integral of the squared distance: an end segment of length a adds a^3, a gap
        # between two clips 2 (gap / 2)^3 (every gap is even: the positions are odd)
        points = sorted(2 * c + 1 for c in chosen)
        total = points[0] ** 3 + (2 * clips - points[-1]) ** 3
        return total + sum(2 * ((b - a) // 2) ** 3 for a, b in zip(points, points[1:], strict=False))

    order: list[int] = []
    rest = list(range(clips))
    while rest:
        best = min(rest, key=lambda c: (cost(order + [c]), c))
        order.append(best)
        rest.remove(best)
    return tuple(order)


def view_probabilities(logits: np.ndarray) -> np.ndarray:
    """(V, C) view logits -> (V, C) softmax probabilities in float64 (the running sums add
    them up without the rounding of float32)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def stop_reason(
    rule: StoppingRule, sums: np.ndarray, *, clips_seen: int, views_seen: int, views_total: int
) -> str | None:
    """Why the evaluation stops with these summed probabilities (C,) of `views_seen` views, or
    None to go on (the rule of the module docstring)."""
    if views_seen >= views_total:
        return "all"
    if clips_seen < rule.min_clips:
        return None
    top = np.sort(sums)[::-1]
    lead = float(top[0] - top[1]) if len(top) > 1 else float(top[0])
    if lead > views_total - views_seen:
        return "certain"
    if rule.margin is not None and lead >= rule.margin * views_seen:
        return "margin"
    return None


class AdaptiveViews:
    """One video's adaptive evaluation over `clips` x `crops` clip-major views (view = clip *
    crops + crop, as `training.views.crops_to_views` orders them): run the model on the views
    `view_rows(next_clips())` and hand their logits to `add`, until `done`; then `scores`.

    The first step takes the first `min_clips` clips at once (nothing is checked before), each
    later step one clip."""

    def __init__(self, rule: StoppingRule, *, clips: int, crops: int):
        self.rule, self.clips, self.crops = rule, clips, crops
        self.order = coarse_to_fine(clips)
        self.used: list[int] = []  # clips evaluated, in order
        self.sums: np.ndarray | None = None  # (C,) summed view probabilities
        self.stop: str | None = None

    @property
    def done(self) -> bool:
        return self.stop is not None

    @property
    def views_used(self) -> int:
        return len(self.used) * self.crops

    @property
    def scores(self) -> np.ndarray:
        """(C,) the mean softmax probability of the views used."""
        if self.sums is None:
            raise ValueError("no views were added yet")
        return self.sums / self.views_used

    def next_clips(self) -> list[int]:
        if self.done:
            return []
        take = max(1, self.rule.min_clips - len(self.used))
        return list(self.order[len(self.used) : len(self.used) + take])

    def view_rows(self, clips: list[int]) -> np.ndarray:
        """The rows of those clips' views in the clip-major views."""
        return (np.asarray(clips, dtype=np.int64)[:, None] * self.crops + np.arange(self.crops)).reshape(-1)

    def add(self, logits: np.ndarray) -> bool:
        """The logits (len(next_clips()) * crops, C) of the next step's views; returns `done`."""
        return self.add_probabilities(view_probabilities(logits))

    def add_probabilities(self, probabilities: np.ndarray) -> bool:
        clips = self.next_clips()
        if not clips:
            raise ValueError("the evaluation has already stopped")
        if len(probabilities) != len(clips) * self.crops:
            raise ValueError(f"expected the {len(clips) * self.crops} views of clips {clips}, got {len(probabilities)}")
        step = probabilities.sum(axis=0)
        self.sums = step if self.sums is None else self.sums + step
        self.used += clips
        self.stop = stop_reason(
            self.rule,
            self.sums,
            clips_seen=len(self.used),
            views_seen=self.views_used,
            views_total=self.clips * self.crops,
        )
        return self.done


def replay(probabilities: np.ndarray, rule: StoppingRule, *, clips: int, crops: int) -> AdaptiveViews:
    """The adaptive evaluation of a video whose every view is already scored: (clips * crops, C)
    clip-major probabilities, taken step by step as the server takes them; the views after
    the stop are ignored."""
    state = AdaptiveViews(rule, clips=clips, crops=crops)
    while not state.done:
        state.add_probabilities(probabilities[state.view_rows(state.next_clips())])
    return state


def adaptive_answer(logits: np.ndarray, rule: StoppingRule, *, clips: int, crops: int) -> AdaptiveViews:
    """`replay` from the logits of every view (offline evaluation)."""
    return replay(view_probabilities(logits), rule, clips=clips, crops=crops)
