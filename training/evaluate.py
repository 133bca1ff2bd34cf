"""Evaluation of a run folder, and PreciseBN.

`python -m training evaluate --run RUN` evaluates any run folder's last checkpoint with the
30-view test of training/scoring.py (or its quick 1-clip validation).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from training.config import Config, config_from_dict
from training.data import DataSplits, EvalClips, VideoItem, collate_skipping, resolve_splits, worker_init
from training.distributed import DEVICES, DistInfo
from training.models import r3d18_from_config
from training.robustness import evaluate_robustness
from training.scoring import accuracy_metrics, score_videos
from training.views import InputSpec

log = logging.getLogger(__name__)


def precise_bn_loader(
    items: list[VideoItem],
    root: Path,
    spec: InputSpec,
    *,
    batch_size: int,
    seed: int,
    info: DistInfo = DistInfo(),
    num_workers: int = 0,
) -> DataLoader:
    """PreciseBN's batches: training videos with eval preprocessing (1 clip, centre crop), each
    process its own shard of one seeded shuffle (a distributed sampler, as the authors' loader),
    so N processes see N times as many distinct clips. The same clips every time it runs."""
    dataset = EvalClips(items, root, spec, tg_stride=None, quick=True)
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_skipping,
        worker_init_fn=worker_init,
        drop_last=True,
    )
    if not info.enabled:  # one process: the seeded shuffle earlier runs used, so they repeat exactly
        return DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(seed), **common)
    sampler: DistributedSampler = DistributedSampler(
        dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True
    )
    return DataLoader(dataset, sampler=sampler, **common)


def precise_bn_batch_size(asked: int, num_videos: int, world_size: int = 1) -> int:
    """PreciseBN's clips per batch: `asked`, or all of a process's share of a smaller set."""
    return max(1, min(asked, num_videos // world_size))


@torch.no_grad()
def precise_bn(
    model: nn.Module, batches, *, num_batches: int, device: torch.device, info: DistInfo = DistInfo()
) -> int:
    """Recompute BatchNorm running statistics as exact averages over `num_batches` batches of
    eval-preprocessed training clips (METHOD.md: PreciseBN); returns the batches used."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    momenta = [m.momentum for m in bns]
    was_training = model.training
    model.train()
    used = 0
    for x in batches:
        if used >= num_batches:
            break
        if not used:  # reset only once there is a batch: no batch keeps the running statistics
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average = the exact mean over the batches seen
        model(x.to(device))
        used += 1
    for m, momentum in zip(bns, momenta, strict=True):
        m.momentum = momentum
    if info.enabled:
        _average_over_ranks_with_batches(bns, has_batches=used > 0)
    model.train(was_training)
    return used


def _average_over_ranks_with_batches(bns: list[nn.modules.batchnorm._BatchNorm], *, has_batches: bool) -> None:
    """Every process takes part (a process whose clips were all unreadable has no batch): the
    statistics become the mean over the processes that had batches, or stay as they were on
    every process when none had."""
    buffers: list[torch.Tensor] = [b for m in bns for b in (m.running_mean, m.running_var) if b is not None]
    count = torch.tensor([1.0 if has_batches else 0.0], device=buffers[0].device)
    torch.distributed.all_reduce(count)
    if not count.item():
        return
    for b in buffers:
        contribution = b if has_batches else torch.zeros_like(b)
        torch.distributed.all_reduce(contribution)
        b.copy_(contribution / count)


def main(argv: list[str] | None = None) -> int:
    """Evaluate a run folder's last checkpoint with the 30-view test (or --quick)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    run = Path(args.run)
    ckpt, cfg = load_checkpoint(run, clips=args.clips, crops=args.crops)
    splits = resolve_splits(cfg.data, run)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    report, nets, results = score_checkpoint(ckpt, cfg, splits, device, quick=args.quick, num_workers=args.workers)
    views = "1 clip x 1 crop" if args.quick else f"{cfg.input.test_clips} clips x {cfg.input.test_crops} crops"
    report["views"] = views
    report["score_average"] = cfg.train.test_average
    if args.robustness and "student" in nets:
        report["robustness"] = {
            "student": evaluate_robustness(
                nets["student"],
                splits.val,
                splits.root,
                cfg.input,
                num_classes=len(splits.classes),
                device=device,
                seed=args.seed,
                num_workers=args.workers,
            )
        }
    if args.figures:
        from training.figures import write_figures

        report["figures"] = [
            str(p)
            for p in write_figures(
                run,
                history=ckpt.get("history", []),
                items=splits.val,
                root=splits.root,
                classes=splits.classes,
                spec=cfg.input,
                scores=results,
                views=views,
            )
        ]
    print(json.dumps(report, indent=2))
    (run / ("eval_quick.json" if args.quick else "eval.json")).write_text(json.dumps(report, indent=2))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training evaluate", description=main.__doc__)
    parser.add_argument("--run", required=True, help="run folder holding config.yaml and last.pt")
    parser.add_argument("--quick", action="store_true", help="1 clip, centre crop instead of 30 views")
    parser.add_argument("--clips", type=int, default=None)
    parser.add_argument("--crops", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--figures",
        action="store_true",
        help="write RUN/figures/: RGB vs fast/slow TG frames, training curves, confusion matrices",
    )
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="also test the student under contrast, brightness and grayscale corruptions (Table 5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the robustness corruptions")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA where present")
    return parser.parse_args(argv)


def load_checkpoint(run: Path, *, clips: int | None, crops: int | None) -> tuple[dict, Config]:
    """The run's last checkpoint and its config, with `clips` x `crops` test views where given."""
    ckpt_path = run / "last.pt"
    if not ckpt_path.is_file():
        raise SystemExit(f"error: no checkpoint at {ckpt_path}")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    if clips:
        cfg.input.test_clips = clips
    if crops:
        cfg.input.test_crops = crops
    return ckpt, cfg


def score_checkpoint(
    ckpt: dict, cfg: Config, splits: DataSplits, device: torch.device, *, quick: bool, num_workers: int
) -> tuple[dict, dict[str, nn.Module], dict[str, tuple]]:
    """The validation accuracy of the checkpoint's student (on RGB) and teacher (on TG), where it
    has them -> (report, {name: network}, {name: (scores, labels)})."""
    report: dict[str, dict] = {}
    nets: dict[str, nn.Module] = {}
    results: dict[str, tuple] = {}
    for name, modality in (("student", "rgb"), ("teacher", "tg")):
        if ckpt["model"].get(name) is None:
            continue
        net = r3d18_from_config(cfg, len(splits.classes))
        net.load_state_dict(ckpt["model"][name])
        net.to(device)
        scores, labels, skipped = score_videos(
            net,
            splits.val,
            splits.root,
            cfg.input,
            modality=modality,
            tg_stride=cfg.tg.stride,
            device=device,
            quick=quick,
            num_workers=num_workers,
            average=cfg.train.test_average,
            tg_spread=cfg.tg.slow == "spread",
        )
        report[name] = accuracy_metrics(scores, labels, len(splits.classes))
        report[name]["skipped_videos"] = len(skipped)
        nets[name], results[name] = net, (scores, labels)
    return report, nets, results
