"""`python -m benchmarks.supervised`: what one R3D-18 learns of a motion family when every video is labeled.

The generalization benchmark trains the whole method from 4 labels per class. This is the fully
supervised reference beside it: given *every* training label (64 per class by default, 16 times
the benchmark's) and nothing else to learn, how well does the recipe's network tell a family's
motions apart from RGB frames, and how well from temporal gradient (TG)? It says which of the
two a family lacks: labels (the TG network learns it here but the method's teacher does not
from 4 per class) or the network itself (it does not learn it here either). It is not a bound
on the method: unlabeled videos and the method's other losses regularize a network that, alone
on a few hundred labeled videos, overfits.

Each (family, input) trains one network of the own-data default as it resolves for the family's
videos on this machine (`training.own_data.resolve_own_data`: the small R3D-18 on a CPU, the full
one on a GPU; --set on top, as for `make train`) with the cross-entropy alone, `optim.batch_labeled`
clips a step at the recipe's lr, warm-up and schedule. The family's cluttered videos are generated
(training/synthetic.py, all labeled), and the training videos decoded once into memory, so a
step costs the network's compute and little else; a clip is drawn as training's loader draws
it (`training.data.training_clip_rows` and `augment_training_clip`, then `split_modalities`).
At every quarter of the run the validation videos get training's own 30-view test
(`training.scoring.score_videos`).

    python -m benchmarks.supervised                                         # this machine's recipe
    python -m benchmarks.supervised --set model.width=32 optim.steps=4800   # a wider network, longer
    python -m benchmarks.supervised --width 170 --height 128                # on a GPU: the full R3D-18 at 112 px

Results: benchmarks/results/supervised-[<tag>-]<machine>-<date>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.machine import describe_machine, machine_slug
from training.augment import split_modalities
from training.config import Config, ConfigError
from training.data import VideoItem, augment_training_clip, resolve_splits, training_clip_rows
from training.distributed import training_device
from training.models import r3d18_from_config
from training.own_data import resolve_own_data
from training.schedule import learning_rate, resolve_schedule, scaled_lr
from training.scoring import accuracy_metrics, score_videos
from training.synthetic import FAMILIES, generate
from training.video import VideoDecodeError, open_video, read_frames
from training.views import normalize

RESULTS_DIR = Path(__file__).resolve().parent / "results"
INPUTS = ("rgb", "tg")
# turns and the generalization benchmark's three families: none of them chose the recipe
DEFAULT_FAMILIES = ("turns", "paths", "periodic", "accelerating")
CHECKS = 4  # 30-view validations per run, the last at its end


@dataclass
class Videos:
    """Training videos decoded into memory: each one's frames (T, H, W, 3) uint8 and its label."""

    frames: list[np.ndarray]
    labels: np.ndarray


def decode_videos(root: Path, items: list[VideoItem]) -> Videos:
    """Every frame of every video, with the training decoder (a generated dataset: all readable)."""
    frames = []
    for item in items:
        path = str(root / item.path)
        try:
            reader = open_video(path)
            frames.append(read_frames(reader, np.arange(len(reader)), name=path))
        except VideoDecodeError as exc:
            raise SystemExit(f"supervised: {exc}") from exc
    return Videos(frames, np.array([item.label for item in items]))


def train_batch(
    videos: Videos, cfg: Config, modality: str, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`optim.batch_labeled` clips, each a random clip of a random video, drawn and augmented as
    training's loader does (`TrainClips`) -> (normalized RGB or TG input, labels)."""
    spec, stride, spread = cfg.input, cfg.tg.stride, cfg.tg.slow == "spread" and cfg.tg.stride > 1
    chosen = rng.integers(0, len(videos.labels), cfg.optim.batch_labeled)
    clips = []
    for i in chosen:
        video = videos.frames[i]
        rows = training_clip_rows(len(video), spec, rng, tg_stride=stride, tg_spread=spread)
        clips.append(augment_training_clip(video[np.concatenate(rows)], len(rows), spec, rng))  # (K, 3, T, S, S)
    rgb, tg = split_modalities(torch.stack(clips))
    return normalize(rgb if modality == "rgb" else tg, cfg.input), torch.from_numpy(videos.labels[chosen])


def train_one(
    train: Videos, val: list[VideoItem], root: Path, cfg: Config, modality: str, classes: int, device: torch.device
) -> dict:
    """Train one network on `modality` with the cross-entropy alone -> its 30-view Top-1 at each
    check, the training loss of the last quarter and the time it took. An epoch is one pass over
    the training videos, so the lr follows the recipe's schedule as a run on them would."""
    torch.manual_seed(cfg.train.seed)
    rng = np.random.default_rng(cfg.train.seed)
    net = r3d18_from_config(cfg, classes).to(device)
    base_lr = scaled_lr(cfg, world_size=1)
    o = cfg.optim
    opt = torch.optim.SGD(net.parameters(), lr=base_lr, momentum=o.momentum, weight_decay=o.weight_decay)
    schedule = resolve_schedule(cfg, len(train.labels), world_size=1)
    steps = schedule.total_steps
    checks = {round(steps * (k + 1) / CHECKS) for k in range(CHECKS)}
    curve, losses, started = [], [], time.perf_counter()
    for it in range(steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(it, base_lr=base_lr, schedule=schedule, cfg=cfg)
        x, y = train_batch(train, cfg, modality, rng)
        loss = F.cross_entropy(net(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad:
            torch.nn.utils.clip_grad_norm_(net.parameters(), o.clip_grad)
        opt.step()
        losses.append(loss.item())
        if it + 1 in checks:
            window = losses[-max(1, steps // CHECKS) :]
            point = {
                "step": it + 1,
                "train_loss": round(float(np.mean(window)), 3),
                "val_top1": top1(net, val, root, cfg, modality, classes, device),
            }
            curve.append(point)
            print(
                f"  {modality} step {it + 1}: training loss {point['train_loss']:.3f}, "
                f"val top-1 {point['val_top1']:.1f} %",
                flush=True,
            )
            net.train()
    return {
        "curve": curve,
        "val_top1": curve[-1]["val_top1"],
        "train_loss": curve[-1]["train_loss"],
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 1),
    }


def top1(
    net: torch.nn.Module,
    val: list[VideoItem],
    root: Path,
    cfg: Config,
    modality: str,
    classes: int,
    device: torch.device,
) -> float:
    """The 30-view Top-1 (%) of the validation videos: training's own test (`score_videos`)."""
    scores, labels, _ = score_videos(
        net,
        val,
        root,
        cfg.input,
        modality=modality,
        tg_stride=cfg.tg.stride,
        device=device,
        batch_views=cfg.train.eval_batch_views,
        average=cfg.train.test_average,
        tg_spread=cfg.tg.slow == "spread",
    )
    return accuracy_metrics(scores, labels, classes)["top1"]


def make_data(root: Path, family: str, args: argparse.Namespace) -> Path:
    """The family's dataset, every training video labeled, in a folder named by its shape."""
    shape = f"{args.per_class}-{args.val_per_class}-{args.width}x{args.height}x{args.frames}-seed{args.data_seed}"
    folder = root / f"{family}-{shape}"
    generate(
        folder,
        num_classes=0,
        family=family,
        train_per_class=args.per_class,
        labeled_per_class=args.per_class,
        val_per_class=args.val_per_class,
        frames=args.frames,
        width=args.width,
        height=args.height,
        seed=args.data_seed,
        clutter=True,
    )
    return folder


def describe(cfg: Config) -> dict:
    spec, o = cfg.input, cfg.optim
    return {
        "width": cfg.model.width,
        "clip": f"{spec.clip_len}x{spec.crop_size}^2, interval {spec.interval}",
        "short_side": spec.short_side,
        "test": f"{spec.test_clips}x{spec.test_crops} views of {spec.test_crop}^2",
        "batch": o.batch_labeled,
        "lr": scaled_lr(cfg, world_size=1),
        "seed": cfg.train.seed,
    }


def markdown(results: dict) -> str:
    m = results["machine"]
    gpu = (m.get("gpu") or {}).get("name")
    lines = [
        f"# What one R3D-18 learns with every label: {results['slug']}, {results['created'][:10]}",
        "",
        "`python -m benchmarks.supervised " + " ".join(results["argv"]) + "`",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores"
        + (f", {gpu}" if gpu else ", no GPU")
        + f"; trained on {results['device']}.",
        f"- Data per family: {results['data']}.",
        "- Each row: one network, the cross-entropy alone on every training video's label; Top-1 is the "
        "30-view test of the validation videos (chance "
        f"{results['chance']:.0f} %); the training loss is the mean over the last quarter of the steps "
        f"(chance ln {results['classes']} = {np.log(results['classes']):.2f}).",
        "",
        "| family | input | network | clip | steps | Top-1 by quarter of the run (%) | training loss | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        c = r["config"]
        curve = " / ".join(f"{p['val_top1']:.1f}" for p in r["curve"])
        lines.append(
            f"| {r['family']} | {r['input'].upper()} | width {c['width']} | {c['clip']} | {r['steps']} | "
            f"{curve} | {r['train_loss']:.2f} | {r['seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.supervised",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--families",
        nargs="+",
        default=list(DEFAULT_FAMILIES),
        metavar="NAME",
        help=f"default: {' '.join(DEFAULT_FAMILIES)}; known: {', '.join(FAMILIES)}",
    )
    p.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS, help="the modalities, one network each")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides on the own-data default")
    p.add_argument("--per-class", type=int, default=64, help="training videos per class, all labeled (default 64)")
    p.add_argument("--val-per-class", type=int, default=16, help="validation videos per class (default 16)")
    p.add_argument("--width", type=int, default=128, help="the videos' size (default 128 x 96)")
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--root", type=Path, default=Path("runs/supervised"), help="where the datasets are generated")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON and markdown go")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--tag", default="", help="a word for the results' file name, e.g. width32: supervised-width32-<machine>-<date>"
    )
    args = p.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    if args.tag and not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", args.tag):
        p.error(f"--tag {args.tag!r}: lower-case letters, digits and single hyphens only (it goes into a file name)")
    if args.per_class < 1 or args.val_per_class < 1:
        p.error("--per-class and --val-per-class must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine, created = describe_machine(), datetime.now(timezone.utc)
    runs, device_name, chance, classes = [], "cpu", 0.0, 0
    for family in args.families:
        try:
            folder = make_data(args.root, family, args)
            cfg, _ = resolve_own_data(str(folder), args.set)
        except (ConfigError, ValueError) as exc:  # the generator's arguments, a --set key
            print(f"supervised: {exc}", file=sys.stderr)
            return 2
        device_name = training_device(cfg.train.device)
        device = torch.device(device_name)
        splits = resolve_splits(cfg.data, None, is_main=False)  # every training video is labeled
        train = decode_videos(splits.root, splits.labeled)
        classes = len(splits.classes)
        chance = 100.0 / classes
        print(
            f"[{family}] {len(splits.labeled)} training videos (all labeled), {len(splits.val)} validation: "
            f"{describe(cfg)}",
            flush=True,
        )
        for modality in args.inputs:
            result = train_one(train, splits.val, splits.root, cfg, modality, classes, device)
            runs.append({"family": family, "input": modality, "config": describe(cfg), **result})
    slug = machine_slug(machine, device_name)
    results = {
        "argv": list(sys.argv[1:] if argv is None else argv),
        "created": created.isoformat(timespec="seconds"),
        "machine": machine,
        "slug": slug,
        "device": device_name,
        "classes": classes,
        "chance": chance,
        "data": f"{args.per_class} training videos per class (all labeled), {args.val_per_class} validation, "
        f"{args.width}x{args.height}, {args.frames} frames, clutter on, generator seed {args.data_seed}",
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "-".join(filter(None, ("supervised", args.tag, slug, f"{created:%Y-%m-%d}")))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
