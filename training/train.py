"""`python -m training train`: semi-supervised training of the RGB student with the TG teacher.

Reads top to bottom: config and run folder -> distributed init -> data -> model -> optimizer
-> resume -> epoch loop (train, checkpoint, PreciseBN, quick validation) -> 30-view test.
Re-running the same command resumes from the run folder's `last.pt`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.config import (
    Config,
    ConfigError,
    config_from_dict,
    diff_configs,
    load_config,
    parse_overrides,
    save_config,
)
from training.data import (
    DataSplits,
    SeededSampler,
    TrainClips,
    VideoItem,
    collate_skipping,
    resolve_splits,
    worker_init,
)
from training.distributed import DistInfo, barrier, cleanup, gather_objects, init_distributed, training_device
from training.evaluate import precise_bn, precise_bn_batch_size, precise_bn_loader
from training.losses import DistributionAlignment
from training.models import TwoStreamNet, two_stream_from_config
from training.schedule import Schedule, learning_rate, resolve_schedule, scaled_lr
from training.scoring import accuracy_metrics, score_videos
from training.step import total_loss, training_step
from training.views import normalize

if TYPE_CHECKING:  # imported where a writer is made: tensorboard is slow to import
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("training")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "synthetic.yaml"


# ----------------------------------------------------------------------------- loop
def make_loader(
    items, root, cfg: Config, sampler: SeededSampler, batch: int, *, pin_memory: bool = False, persistent: bool = True
) -> DataLoader:
    """A training loader. Its worker processes live for the whole run (`persistent`): a small
    labeled set is passed over every few steps, and respawning workers (each importing torch and
    opening its videos) on every pass cost more than the steps themselves (measured in the
    training benchmark group). Samples draw their augmentation from per-sample seeds
    (SeededSampler), so long-lived workers do not change what is trained. The workers' base
    seed comes from the loader's own generator, not torch's global one: a DataLoader draws it
    when it starts its workers, which long-lived workers do once per run (not once per pass), and
    that draw would shift the global stream that the strong views and dropout use, so a resumed
    run would diverge from an uninterrupted one."""
    workers = cfg.data.num_workers
    dataset = TrainClips(
        items,
        root,
        cfg.input,
        tg_stride=cfg.tg.stride,
        decode_threads=cfg.data.decode_threads,
        tg_spread=cfg.tg.slow == "spread",
    )
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping,
        drop_last=True,
        worker_init_fn=worker_init,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def cycle_batches(loader: DataLoader, sampler: SeededSampler, epoch: int):
    """The labeled loader cycles within an epoch; each pass is reshuffled deterministically."""
    passes = 0
    while True:
        sampler.set_epoch(epoch * 100_000 + passes)
        yield from loader
        passes += 1


class SkipLog:
    """Unreadable videos met during training: counted, logged once each, saved with checkpoints.

    `events` is the merged total over processes; `_new` counts this process's events since the
    last merge, so merging every epoch never counts an event twice."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.paths: dict[str, str] = dict(state.get("paths", {}))
        self.events = int(state.get("events", 0))
        self._new = 0

    def add(self, skipped: list) -> None:
        for path, error in skipped:
            self._new += 1
            if path not in self.paths:
                self.paths[path] = error
                log.warning("skipped unreadable video: %s", error)

    def merge(self, info: DistInfo) -> None:
        for part in gather_objects({"paths": self.paths, "new": self._new}, info):
            self.paths.update(part["paths"])
            self.events += part["new"]
        self._new = 0

    def state(self) -> dict:
        return {"paths": self.paths, "events": self.events + self._new}

    def summary(self) -> dict:
        return {
            "count": len(self.paths),
            "events": self.events + self._new,
            "videos": dict(list(self.paths.items())[:100]),
        }


@dataclass
class Loaders:
    """The two training loaders and their samplers (which reshuffle them every epoch)."""

    unlabeled: DataLoader
    labeled: DataLoader
    unlabeled_sampler: SeededSampler
    labeled_sampler: SeededSampler


@dataclass
class TrainState:
    """What the epoch loop works on, built once by `run_training` and carried from epoch to epoch."""

    cfg: Config
    net: nn.Module  # what the step runs: DistributedDataParallel around net_without_ddp when distributed
    net_without_ddp: TwoStreamNet  # what is checkpointed, PreciseBN'd and tested
    optimizer: torch.optim.Optimizer
    loaders: Loaders
    schedule: Schedule
    base_lr: float
    device: torch.device
    info: DistInfo
    writer: SummaryWriter | None = None  # TensorBoard, on the main process only
    skips: SkipLog = field(default_factory=SkipLog)
    history: list[dict] = field(default_factory=list)  # per epoch: the means and the quick validation
    dist_align: DistributionAlignment | None = None  # its running means are checkpointed


def train_one_epoch(state: TrainState, epoch: int) -> dict[str, float]:
    """One pass over the unlabeled set -> the mean of each logged value over its steps and processes."""
    unlabeled = iter(state.loaders.unlabeled)
    labeled = cycle_batches(state.loaders.labeled, state.loaders.labeled_sampler, epoch)
    state.net.train()
    use_unlabeled = epoch >= state.schedule.sup_warmup_epochs
    strong = use_unlabeled or state.cfg.train.forward_strong_in_warmup
    n_streams = 2 if state.cfg.loss.streams == "both" else 1
    progress = EpochProgress(state, epoch)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for step, batch_u in enumerate(unlabeled):
        if step >= state.schedule.steps_per_epoch:
            break
        batch_l = next(labeled)
        state.skips.add(batch_u["skipped"] + batch_l["skipped"])
        values, lr, grad_norm = optimizer_step(
            state, batch_l, batch_u, epoch=epoch, step=step, use_unlabeled=use_unlabeled
        )
        row = {k: v for k, v in values.items() if not math.isnan(v)}  # NaN: no confident known-label clip
        for k, v in row.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        clips = (
            state.info.world_size * n_streams * (len(batch_l["label"]) + len(batch_u["label"]) * (2 if strong else 1))
        )
        progress.update(step, clips=clips, lr=lr, grad_norm=grad_norm, values=values, row=row)
    progress.close()
    return mean_over_processes(sums, counts, state.info)


def optimizer_step(
    state: TrainState, batch_l: dict, batch_u: dict, *, epoch: int, step: int, use_unlabeled: bool
) -> tuple[dict[str, float], float, torch.Tensor | None]:
    """One SGD step at the schedule's lr -> (the logged values on the host, the lr, the gradient
    norm before clipping; None without clipping)."""
    cfg, optimizer = state.cfg, state.optimizer
    lr = learning_rate(
        epoch * state.schedule.steps_per_epoch + step, base_lr=state.base_lr, schedule=state.schedule, cfg=cfg
    )
    for group in optimizer.param_groups:
        group["lr"] = lr

    terms, stats = training_step(
        state.net, batch_l, batch_u, cfg, use_unlabeled=use_unlabeled, device=state.device, dist_align=state.dist_align
    )
    loss = total_loss(terms, cfg)
    # one device-to-host copy per step for logging and the finiteness check
    names = [f"loss/{k}" for k in ("total", *terms)] + [f"pseudo/{k}" for k in stats]
    tensors = [loss, *terms.values(), *stats.values()]
    values = dict(zip(names, torch.stack([t.detach().float() for t in tensors]).tolist(), strict=True))
    if not math.isfinite(values["loss/total"]):
        raise FloatingPointError(f"loss is not finite at epoch {epoch + 1} step {step}: {values}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.optim.clip_grad
    grad_norm = nn.utils.clip_grad_norm_(state.net.parameters(), clip) if clip > 0 else None
    optimizer.step()
    return values, lr, grad_norm


class EpochProgress:
    """An epoch's progress on the main process: every value in TensorBoard at each step, and a
    progress bar on a terminal; a log file gets a line every `train.log_every` steps instead."""

    def __init__(self, state: TrainState, epoch: int):
        self.state, self.epoch = state, epoch
        self.on_terminal = sys.stdout.isatty()
        self.bar = tqdm(
            total=state.schedule.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{state.schedule.epochs}",
            disable=not (state.info.is_main and self.on_terminal),
            dynamic_ncols=True,
            leave=False,
            file=sys.stdout,
        )
        self.t0 = time.time()
        self.clips = 0

    def update(
        self,
        step: int,
        *,
        clips: int,
        lr: float,
        grad_norm: torch.Tensor | None,
        values: dict[str, float],
        row: dict[str, float],
    ) -> None:
        """After step `step`: `clips` forwarded by all processes, `values` as logged, `row` those not NaN."""
        self.clips += clips
        state = self.state
        if not state.info.is_main:
            return
        steps = state.schedule.steps_per_epoch
        it, rate = self.epoch * steps + step, self.clips / max(1e-9, time.time() - self.t0)
        writer = state.writer
        assert writer is not None  # the main process always has one
        writer.add_scalar("lr", lr, it)
        writer.add_scalar("speed/clips_per_s", rate, it)
        if grad_norm is not None:
            writer.add_scalar("grad_norm", float(grad_norm), it)
        for k, v in row.items():
            writer.add_scalar(k, v, it)
        mask = values.get("pseudo/mask_rate_rgb", values.get("pseudo/mask_rate_tg", 0.0))
        self.bar.set_postfix(
            loss=f"{values['loss/total']:.3f}", mask=f"{mask:.2f}", lr=f"{lr:.4f}", clips_s=f"{rate:.1f}"
        )
        self.bar.update(1)
        every = state.cfg.train.log_every
        if not self.on_terminal and every and (step + 1) % every == 0 and step + 1 < steps:
            log.info(
                "epoch %d/%d  step %d/%d  loss=%.3f  mask=%.2f  lr=%.4g  clips/s=%.1f",
                self.epoch + 1,
                state.schedule.epochs,
                step + 1,
                steps,
                values["loss/total"],
                mask,
                lr,
                rate,
            )

    def close(self) -> None:
        self.bar.close()


def mean_over_processes(sums: dict[str, float], counts: dict[str, int], info: DistInfo) -> dict[str, float]:
    """Each key's sum over every process's steps divided by its count, keys sorted."""
    # one gather of (sums, counts): a key may be missing on some processes (e.g. no confident
    # pseudo-label with a known label), so per-key collectives could pair up wrongly
    total_sums: dict[str, float] = {}
    total_counts: dict[str, int] = {}
    for part_sums, part_counts in gather_objects((sums, counts), info):
        for k, v in part_sums.items():
            total_sums[k] = total_sums.get(k, 0.0) + v
            total_counts[k] = total_counts.get(k, 0) + part_counts[k]
    return {k: total_sums[k] / total_counts[k] for k in sorted(total_sums)}


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a killed run never leaves a truncated last.pt."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def model_state(net: TwoStreamNet) -> dict:
    return {
        name: (getattr(net, name).state_dict() if getattr(net, name) is not None else None)
        for name in ("student", "teacher", "proj_rgb", "proj_tg")
    }


def load_model_state(net: TwoStreamNet, state: dict) -> None:
    for name, sd in state.items():
        module = getattr(net, name)
        if (module is None) != (sd is None):
            raise ConfigError(
                f"checkpoint has {'no ' if sd is None else ''}{name} but the config "
                f"{'builds' if module is not None else 'does not build'} one"
            )
        if module is not None:
            module.load_state_dict(sd)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m training train", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help=f"YAML config (default: the embedded {DEFAULT_CONFIG.name})")
    # --run-dir is the same option: torchrun's parser rejects `--run` as a prefix of its --run-path
    p.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        default="runs/synthetic",
        help="run folder: config, checkpoints, logs, metrics",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. loss.align=off")
    p.add_argument("--data-root", default=None, help="dataset root; with the default config: a folder-layout dataset")
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        metavar="N",
        help="checkpoint and stop after N epochs of this invocation (for time-limited jobs); re-run to continue",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (resolved config, data per class, missing or unreadable files, steps, lr, "
        "time on this machine), write nothing, train nothing; exit 1 if it finds a problem",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="N",
        help="dry run: plan for N training processes (default: WORLD_SIZE, else 1)",
    )
    p.add_argument(
        "--probe",
        type=int,
        default=64,
        metavar="N",
        help="plan: open N videos of each set to find unreadable ones (-1: all, 0: none)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="dry run: report listed videos that are missing without counting them as a problem",
    )
    p.add_argument("--no-time", action="store_true", help="skip the plan's time estimate")
    p.add_argument("--no-plan", action="store_true", help="start a new run without printing its plan first")
    return p.parse_args(argv)


def resolve_config(args):
    """The run's config, and the own-data recipe behind it (None with a config file or the
    synthetic default). A data root without a config is the user's own videos in the folder
    layout: the recipe follows from the data and the machine (training/own_data.py)."""
    keys = [key for key, _ in parse_overrides(args.set)]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--set gives {', '.join(twice)} more than once: which value is meant?")
    if args.data_root and "data.root" in keys:
        raise ConfigError("--data-root and --set data.root both name the data: give one (make: DATA_ROOT=)")
    if args.data_root and args.config is None:
        from training.own_data import resolve_own_data

        return resolve_own_data(args.data_root, list(args.set))
    overrides = list(args.set) + ([f"data.root={args.data_root}"] if args.data_root else [])
    return load_config(args.config or DEFAULT_CONFIG, overrides), None


def config_source(args) -> str:
    """Where the config came from, as the plan names it."""
    if args.data_root and args.config is None:
        head = f"the own-data default for --data-root {args.data_root}"
    else:
        head = args.config or f"{DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parent.parent)} (the default)"
        head += f" --data-root {args.data_root}" if args.data_root else ""
    return head + (f" --set {' '.join(args.set)}" if args.set else "")


def setup_logging(run: Path, info: DistInfo) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if info.is_main:
        handlers.append(logging.FileHandler(run / "train.log"))
    logging.basicConfig(
        level=logging.INFO if info.is_main else logging.WARNING,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg, recipe = resolve_config(args)
        if cfg.train.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "train.device: cuda, but this machine has no CUDA device that PyTorch can use "
                f"(torch {torch.__version__}); train.device=auto trains on the CPU"
            )
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cfg, args, recipe)
    run = Path(args.run)
    if not args.no_plan and not (run / "config.yaml").is_file() and int(os.environ.get("RANK", "0")) == 0:
        print_plan_before_run(cfg, args, recipe)
    device = torch.device(training_device(cfg.train.device))
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        return run_training(cfg, run, device, info, stop_after=args.stop_after)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup(info)


def dry_run(cfg: Config, args, recipe) -> int:
    """Print the run's plan (training/plan.py); 1 when the plan lists a problem."""
    from training.plan import build_plan, print_plan

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    processes = args.processes or int(os.environ.get("WORLD_SIZE", "1"))
    plan = build_plan(
        cfg,
        run=Path(args.run),
        processes=processes,
        source=config_source(args),
        probe=args.probe,
        allow_missing=args.allow_missing,
        estimate_time=not args.no_time,
        recipe=recipe,
    )
    print_plan(plan)
    return 1 if plan.problems else 0


def print_plan_before_run(cfg: Config, args, recipe) -> None:
    """A new run prints its plan first (the dry run's, without the config dump); what it calls
    problems (e.g. unreadable videos) training skips and counts, so they do not stop it."""
    from training.plan import build_plan, print_plan

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    plan = build_plan(
        cfg,
        run=Path(args.run),
        processes=processes,
        source=config_source(args),
        probe=args.probe,
        allow_missing=True,
        estimate_time=not args.no_time,
        recipe=recipe,
    )
    print_plan(plan, dry_run=False)
    sys.stdout.flush()


def run_training(cfg: Config, run: Path, device: torch.device, info: DistInfo, *, stop_after: int = 0) -> int:
    """Train `cfg` in the run folder `run`, resuming from its last.pt; 0 once the run is complete
    or has stopped after `stop_after` epochs as asked."""
    ckpt = open_run_folder(cfg, run, info)
    if run_is_complete(cfg, run, ckpt):
        return 0
    splits = prepare_data(cfg, run, info)
    loaders = build_loaders(cfg, splits, device, info)
    schedule = resolve_schedule(cfg, len(splits.unlabeled), info.world_size)
    net, net_without_ddp = build_model(cfg, len(splits.classes), device, info)
    optimizer, base_lr = build_optimizer(cfg, net, info.world_size)
    state = TrainState(cfg, net, net_without_ddp, optimizer, loaders, schedule, base_lr, device, info)
    if cfg.loss.dist_align:
        state.dist_align = DistributionAlignment.from_labels(
            [it.label for it in splits.labeled], len(splits.classes), momentum=cfg.loss.dist_align_momentum
        )
    log_setup(state)
    start_epoch = resume(state, ckpt, run / "last.pt")
    state.writer = tensorboard_writer(run, info)
    t_start = time.time()
    if not run_epochs(state, splits, run / "last.pt", start_epoch=start_epoch, stop_after=stop_after):
        return 0  # stopped as asked: the same command continues the run
    final_test(state, splits, run / "metrics.json", train_time=time.time() - t_start)
    return 0


def open_run_folder(cfg: Config, run: Path, info: DistInfo) -> dict | None:
    """Create or reopen the run folder and log into its train.log -> its last checkpoint, if any.
    The resolved config is saved once; a re-run must match it (then it resumes)."""
    run.mkdir(parents=True, exist_ok=True)
    saved_cfg = run / "config.yaml"
    if saved_cfg.is_file():
        changed = diff_configs(config_from_dict(yaml.safe_load(saved_cfg.read_text())), cfg)
        if changed:
            raise ConfigError(
                f"run folder {run} was started with a different config ({', '.join(changed)}); "
                "use another RUN folder, or the same settings to resume"
            )
    elif info.is_main:
        save_config(cfg, saved_cfg)
    setup_logging(run, info)
    ckpt_path = run / "last.pt"
    return torch.load(ckpt_path, map_location="cpu", weights_only=True) if ckpt_path.is_file() else None


def run_is_complete(cfg: Config, run: Path, ckpt: dict | None) -> bool:
    """True (after logging its metrics) when the run has trained every epoch and been tested."""
    metrics_path = run / "metrics.json"
    if ckpt and metrics_path.is_file() and ckpt["epoch"] >= ckpt.get("schedule", {}).get("epochs", cfg.optim.epochs):
        log.info("run %s is complete (%d epochs); metrics: %s", run, ckpt["epoch"], metrics_path)
        log.info(metrics_path.read_text())
        return True
    return False


def prepare_data(cfg: Config, run: Path, info: DistInfo) -> DataSplits:
    """The synthetic dataset generated if the config asks for it, and the run's splits: the main
    process resolves them first (drawing and saving the labeled split), the others then read them."""
    if cfg.data.synthetic and info.is_main:
        from training.synthetic import generate

        log.info("synthetic motion dataset: %s", cfg.data.root)
        generate(cfg.data.root, **asdict(cfg.data.synthetic_size), workers=max(1, min(4, os.cpu_count() or 1)))
    barrier(info)
    splits = resolve_splits(cfg.data, run, is_main=info.is_main) if info.is_main else None
    barrier(info)
    if not info.is_main:
        splits = resolve_splits(cfg.data, run, is_main=False)
    assert splits is not None  # the main process resolved them before the barrier, the others after
    if info.is_main:
        (run / "classes.txt").write_text("".join(c + "\n" for c in splits.classes))
    log.info(
        "data %s: %d classes, %d labeled (%s), %d unlabeled, %d val",
        splits.root,
        len(splits.classes),
        len(splits.labeled),
        splits.source,
        len(splits.unlabeled),
        len(splits.val),
    )
    for name, absent in splits.missing.items():
        log.warning(
            "%d videos of the %s list were not found under %s (they will be skipped and counted), e.g. %s",
            len(absent),
            name,
            splits.root,
            ", ".join(absent[:3]),
        )
    return splits


def build_loaders(cfg: Config, splits: DataSplits, device: torch.device, info: DistInfo) -> Loaders:
    bl, bu = cfg.optim.batch_labeled, cfg.optim.batch_unlabeled
    unl_sampler = SeededSampler(
        len(splits.unlabeled), rank=info.rank, world_size=info.world_size, seed=cfg.train.seed, min_per_rank=bu
    )
    lab_sampler = SeededSampler(
        len(splits.labeled), rank=info.rank, world_size=info.world_size, seed=cfg.train.seed + 1, min_per_rank=bl
    )
    # The unlabeled pool's labels serve only to monitor pseudo-label accuracy. The labeled videos
    # in the pool are memorised, so they are left out of that figure (-1: unknown); a folder
    # dataset then has no known label there and the figure is not logged.
    labeled_paths = {it.path for it in splits.labeled}
    monitored = [VideoItem(it.path, -1) if it.path in labeled_paths else it for it in splits.unlabeled]
    unl_loader = make_loader(monitored, splits.root, cfg, unl_sampler, bu, pin_memory=device.type == "cuda")
    lab_loader = make_loader(splits.labeled, splits.root, cfg, lab_sampler, bl, pin_memory=device.type == "cuda")
    return Loaders(unl_loader, lab_loader, unl_sampler, lab_sampler)


def build_model(cfg: Config, num_classes: int, device: torch.device, info: DistInfo) -> tuple[nn.Module, TwoStreamNet]:
    """The two-stream network -> (what the step runs: DDP-wrapped when distributed, the network itself).
    Its initialisation is seeded: two runs of one config start from the same weights."""
    torch.manual_seed(cfg.train.seed)
    net_without_ddp = two_stream_from_config(cfg, num_classes).to(device)
    net: nn.Module = net_without_ddp
    if info.enabled:
        if device.type == "cuda" and cfg.train.sync_bn:
            # converts the BatchNorm layers in place and returns the same network
            net_without_ddp = cast(TwoStreamNet, nn.SyncBatchNorm.convert_sync_batchnorm(net_without_ddp))
            net = net_without_ddp
        elif cfg.train.sync_bn:
            log.info("SyncBatchNorm needs CUDA: on CPU each process keeps its own BatchNorm statistics")
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    return net, net_without_ddp


def build_optimizer(cfg: Config, net: nn.Module, world_size: int) -> tuple[torch.optim.Optimizer, float]:
    """SGD with the lr scaled linearly with the total batch -> (the optimizer, that base lr)."""
    base_lr = scaled_lr(cfg, world_size)
    optimizer = torch.optim.SGD(
        net.parameters(), lr=base_lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
    )
    return optimizer, base_lr


def log_setup(state: TrainState) -> None:
    cfg, schedule, info = state.cfg, state.schedule, state.info
    total_batch = info.world_size * (cfg.optim.batch_labeled + cfg.optim.batch_unlabeled)
    log.info(
        "model: R3D-18 width %d x %s; %d steps/epoch x %d epochs = %d steps (budget in %s); total batch %d; "
        "lr %.4g; device %s; %d process(es)",
        cfg.model.width,
        cfg.loss.streams,
        schedule.steps_per_epoch,
        schedule.epochs,
        schedule.total_steps,
        schedule.budget,
        total_batch,
        state.base_lr,
        state.device,
        info.world_size,
    )


def resume(state: TrainState, ckpt: dict | None, ckpt_path: Path) -> int:
    """Weights, optimizer, history and skipped videos from the last checkpoint -> the epoch to start at."""
    if ckpt is None:
        return 0
    load_model_state(state.net_without_ddp, ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.history, state.skips = list(ckpt.get("history", [])), SkipLog(ckpt.get("skipped"))
    if state.dist_align is not None:
        state.dist_align.load_state_dict(ckpt.get("dist_align", {}))
    log.info("resumed from %s at epoch %d", ckpt_path, ckpt["epoch"])
    if ckpt.get("schedule", state.schedule.to_dict()) != state.schedule.to_dict():
        log.warning(
            "the unlabeled set changed size since this run started: its schedule was %s, now %s",
            ckpt["schedule"],
            state.schedule.to_dict(),
        )
    return ckpt["epoch"]


def tensorboard_writer(run: Path, info: DistInfo) -> SummaryWriter | None:
    if not info.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run / "logs"))


def run_epochs(state: TrainState, splits: DataSplits, ckpt_path: Path, *, start_epoch: int, stop_after: int) -> bool:
    """The epoch loop: train, PreciseBN, quick validation, checkpoint. False when it stopped after
    `stop_after` epochs as asked (checkpointed first), True once every epoch is trained."""
    cfg, schedule, info = state.cfg, state.schedule, state.info
    for epoch in range(start_epoch, schedule.epochs):
        torch.manual_seed(cfg.train.seed * 100_003 + epoch * 1_009 + info.rank)  # strong-aug draws and dropout
        state.loaders.unlabeled_sampler.set_epoch(epoch)
        means = train_one_epoch(state, epoch)
        done = epoch + 1
        if (
            cfg.train.precise_bn
            and state.net_without_ddp.student is not None
            and (done % cfg.train.precise_bn_every == 0 or done == schedule.epochs)
        ):
            precise_bn_student(state, splits)
        row = {"epoch": done, **means}
        if cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == schedule.epochs) and splits.val:
            for name, (scores, labels, _) in score_networks(state, splits, quick=True).items():
                row[f"val/{name}_top1"] = accuracy_metrics(scores, labels, len(splits.classes))["top1"]
        state.skips.merge(info)
        state.history.append(row)
        log_epoch(state, row)
        stopping = stop_after and done - start_epoch >= stop_after and done < schedule.epochs
        if done % cfg.train.checkpoint_every == 0 or done == schedule.epochs or stopping:
            save_run_checkpoint(state, splits.classes, ckpt_path, done)
        if stopping:
            log.info("stopped after %d epoch(s) as asked; run the same command again to continue", stop_after)
            if state.writer is not None:
                state.writer.close()
            return False
    return True


def precise_bn_student(state: TrainState, splits: DataSplits) -> None:
    cfg = state.cfg
    dl = precise_bn_loader(
        splits.unlabeled,
        splits.root,
        cfg.input,
        batch_size=precise_bn_batch_size(cfg.train.precise_bn_batch_size, len(splits.unlabeled), state.info.world_size),
        seed=cfg.train.seed,
        info=state.info,
        num_workers=cfg.data.num_workers,
    )
    batches = (normalize(b["views"][:, 0].float(), cfg.input) for b in dl if "views" in b)
    student = state.net_without_ddp.student
    assert student is not None  # PreciseBN runs only for runs with a student
    used = precise_bn(student, batches, num_batches=cfg.train.precise_bn_batches, device=state.device, info=state.info)
    if used:
        log.info("PreciseBN: student BatchNorm statistics recomputed over %d batches", used)
    else:
        log.info("PreciseBN: no batch of unlabeled clips; the student keeps its BatchNorm statistics of training")


def score_networks(state: TrainState, splits: DataSplits, *, quick: bool) -> dict[str, tuple]:
    """The validation videos' scores by the student (on RGB) and the teacher (on TG), where built:
    {name: (scores, labels, skipped videos)}; `quick`: one clip per video, else the full test views."""
    cfg, results = state.cfg, {}
    for name, modality in (("student", "rgb"), ("teacher", "tg")):
        model = getattr(state.net_without_ddp, name)
        if model is None:
            continue
        results[name] = score_videos(
            model,
            splits.val,
            splits.root,
            cfg.input,
            modality=modality,
            tg_stride=cfg.tg.stride,
            device=state.device,
            quick=quick,
            batch_views=1 if quick else cfg.train.eval_batch_views,  # quick: 1 view a video
            num_workers=cfg.data.num_workers,
            info=state.info,
            average=cfg.train.test_average,
            tg_spread=cfg.tg.slow == "spread",
        )
    return results


def log_epoch(state: TrainState, row: dict) -> None:
    if state.info.is_main:
        assert state.writer is not None  # the main process always has one
        for k, v in row.items():
            if k != "epoch" and k.startswith("val/"):
                state.writer.add_scalar(k, v, row["epoch"])
        log.info(
            "epoch %d/%d  %s",
            row["epoch"],
            state.schedule.epochs,
            "  ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in row.items() if k != "epoch"),
        )


def save_run_checkpoint(state: TrainState, classes: list[str], ckpt_path: Path, epoch: int) -> None:
    if state.info.is_main:
        save_checkpoint(
            ckpt_path,
            {
                "config": state.cfg.to_dict(),
                "classes": classes,
                "epoch": epoch,
                "model": model_state(state.net_without_ddp),
                "optimizer": state.optimizer.state_dict(),
                "schedule": state.schedule.to_dict(),
                "history": state.history,
                "skipped": state.skips.state(),
                "dist_align": state.dist_align.state_dict() if state.dist_align is not None else {},
            },
        )
    barrier(state.info)


def final_test(state: TrainState, splits: DataSplits, metrics_path: Path, *, train_time: float) -> None:
    """The full-view test of the student and the teacher, written with the run's facts to metrics.json."""
    cfg, schedule, info = state.cfg, state.schedule, state.info
    if not splits.val:
        log.warning("no validation videos: metrics.json holds no accuracy")
    metrics: dict[str, Any] = {
        "views": f"{cfg.input.test_clips} clips x {cfg.input.test_crops} crops",
        "score_average": cfg.train.test_average,
        "epochs": schedule.epochs,
        "steps": schedule.total_steps,
        "schedule": schedule.to_dict(),
        "classes": len(splits.classes),
        "labeled_videos": len(splits.labeled),
        "unlabeled_videos": len(splits.unlabeled),
        "labeled_split": splits.source,
        "train_time_s": round(train_time, 1),
        "processes": info.world_size,
    }
    if splits.val:
        for name, (scores, labels, skipped) in score_networks(state, splits, quick=False).items():
            metrics[name] = accuracy_metrics(scores, labels, len(splits.classes))
            metrics[name]["skipped_val_videos"] = [p for p, _ in skipped]
    metrics["skipped_train_videos"] = state.skips.summary()
    if info.is_main:
        metrics_path.write_text(json.dumps(metrics, indent=2))
        for name in ("student", "teacher"):
            if name in metrics:
                m = metrics[name]
                log.info(
                    "%s (%s): top1 %.2f  top5 %.2f  mean-class %.2f over %d videos",
                    name,
                    metrics["views"],
                    m["top1"],
                    m["top5"],
                    m["mean_class"],
                    m["videos"],
                )
        if state.skips.paths:
            log.warning(
                "%d unreadable training videos were skipped (listed in %s)", len(state.skips.paths), metrics_path
            )
        assert state.writer is not None  # the main process always has one
        state.writer.close()
