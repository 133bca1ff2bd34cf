"""The multi-view test: every video's scores averaged over its views, and their accuracy.

Shared by training's validation and final test, `python -m training evaluate`, the robustness
test (training/robustness.py) and export's accuracy check.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from training.augment import temporal_gradient
from training.data import EvalClips, VideoItem, collate_skipping, worker_init
from training.distributed import DistInfo, gather_objects
from training.views import InputSpec, average_view_scores, normalize


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Top-1, Top-5 and mean class accuracy (%) of video scores (N, C) against labels (N,)."""
    if len(labels) == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_class": float("nan"), "videos": 0}
    k = min(5, num_classes)
    topk = np.argsort(-scores, axis=1)[:, :k]
    top1 = topk[:, 0] == labels
    top5 = (topk == labels[:, None]).any(axis=1)
    per_class = [top1[labels == c].mean() for c in range(num_classes) if (labels == c).any()]
    # plain floats: these go into checkpoints, which are loaded with weights_only=True
    return {
        "top1": float(100.0 * top1.mean()),
        "top5": float(100.0 * top5.mean()),
        "mean_class": float(100.0 * np.mean(per_class)),
        "videos": int(len(labels)),
    }


def network_input(
    batch: dict,
    spec: InputSpec,
    *,
    modality: str,
    perturb: Callable[[torch.Tensor, int], torch.Tensor] | None,
    video_index: int,
) -> torch.Tensor:
    """One video's normalized views (V, 3, T, S, S), or their temporal gradient for a TG model,
    after the optional corruption of the decoded frames."""
    views = batch["views"][0].float()  # (V, 3, T, S, S) 0-255
    if perturb is not None:
        views = perturb(views, video_index)
    if modality == "tg":
        successors = batch["successors"][0].float()
        if perturb is not None:
            successors = perturb(successors, video_index)
        views = temporal_gradient(views, successors)
    return normalize(views, spec)


@torch.no_grad()
def score_videos(
    model: nn.Module,
    items: list[VideoItem],
    root: Path,
    spec: InputSpec,
    *,
    modality: str,
    tg_stride: int,
    device: torch.device,
    quick: bool = False,
    batch_views: int = 30,
    num_workers: int = 0,
    info: DistInfo = DistInfo(),
    perturb: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    average: str = "prob",
    tg_spread: bool = False,
) -> tuple[np.ndarray, np.ndarray, list]:
    """Average view scores of every video -> (scores (N, C), labels (N,), skipped videos);
    `average` is the rule over views (`average_view_scores`: prob or score).

    RGB models see the views; TG models see the temporal gradient of the same views. Videos
    are sharded over processes and gathered back in the original order. `perturb(views,
    video_index)` changes the decoded 0-255 views (and TG successor frames) before anything
    else: the robustness test's corruptions (training/robustness.py)."""
    model.eval()
    mine = list(range(info.rank, len(items), info.world_size))
    dataset = EvalClips(
        [items[i] for i in mine],
        root,
        spec,
        tg_stride=tg_stride if modality == "tg" else None,
        quick=quick,
        tg_spread=tg_spread,
    )
    loader = DataLoader(
        dataset, batch_size=1, num_workers=num_workers, collate_fn=collate_skipping, worker_init_fn=worker_init
    )
    results, skipped = {}, []
    for local_i, batch in enumerate(loader):
        skipped += batch["skipped"]
        if "views" not in batch:
            continue
        x = network_input(batch, spec, modality=modality, perturb=perturb, video_index=mine[local_i])
        logits = torch.cat(
            [model(x[i : i + batch_views].to(device)).float().cpu() for i in range(0, len(x), batch_views)]
        )
        results[mine[local_i]] = (average_view_scores(logits, average).numpy(), items[mine[local_i]].label)
    merged = {}
    for part in gather_objects(results, info):
        merged.update(part)
    skipped = [s for part in gather_objects(skipped, info) for s in part]
    order = sorted(merged)
    if not order:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), skipped
    return np.stack([merged[i][0] for i in order]), np.array([merged[i][1] for i in order]), skipped
