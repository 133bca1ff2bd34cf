"""Group 4, training throughput.

- The step: clips/s of one full-method step (`training.train.training_step`: RGB student and
  TG teacher, weak + strong views, alignment and contrastive terms, backward, SGD) against a
  FixMatch RGB-only step (loss.streams=rgb, align off, contrast off) of the same config and
  batch, interleaved in one process. Their time ratio is the method's training overhead; MFU
  is the step's FLOPs (forward + backward, counted by torch's FLOP counter) per second over a
  large matmul's FLOP/s in the step's precision (bf16 under AMP on CUDA, fp32 on a CPU).
- The data pipeline: clips/s of one loader worker (`TrainClips` + `collate_skipping`: decode
  + weak augmentation, one torch thread as in `worker_init`), so that the number of workers a
  device needs is (step clips/s) / (clips/s per worker).

Sizes: the run's own config (the synthetic default), and the UCF-101 config at the paper's
size (8 x 224², width 64) on synthetic clips: random frames for the step, UCF-sized
synthetic videos (320x240) for the data pipeline.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import interleaved_rounds, latency_stats, ratio_stats, store
from benchmarks.profiles import FULL_TRAIN_CONFIG, UCF_FRAMES, profile_from_options
from training.config import Config, config_from_dict, load_config
from training.models import two_stream_from_config
from training.train import total_loss, training_step

pytestmark = pytest.mark.benchmark(group="training")
REPO = Path(__file__).resolve().parent.parent


def pytest_generate_tests(metafunc):
    if "size" in metafunc.fixturenames:
        profile = profile_from_options(metafunc.config)
        metafunc.parametrize("size", ["run"] + (["full"] if profile.full_train_batch else []))


def run_config(run: Path) -> Config:
    return config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))


def full_config(batch: tuple[int, int]) -> Config:
    overrides = [f"optim.batch_labeled={batch[0]}", f"optim.batch_unlabeled={batch[1]}"]
    return load_config(REPO / FULL_TRAIN_CONFIG, overrides)


def fixmatch_config(cfg: Config) -> Config:
    """The same config as FixMatch on RGB only (the paper's Table 1 baseline)."""
    tree = cfg.to_dict()
    tree["loss"].update(streams="rgb", align="off", contrast=False, fusion="self")
    return config_from_dict(tree)


class TrainStep:
    """One optimizer step of `training_step` on a fixed batch, as `train_one_epoch` does it
    (loss assembly, one host copy of the loss, backward, gradient clipping, SGD)."""

    def __init__(self, cfg: Config, num_classes: int, device: torch.device):
        self.cfg, self.device = cfg, device
        torch.manual_seed(cfg.train.seed)
        # TwoStreamNet's default init (zero_init_residual off, heads normal(0, 0.01)), not the config's:
        # the step has been measured so, and the init moves the random draws after it (the strong
        # views, and so the counted FLOPs)
        model = dataclasses.replace(cfg.model, zero_init_residual=False, head_init_std=0.01)
        self.net = two_stream_from_config(dataclasses.replace(cfg, model=model), num_classes).to(device).train()
        # a small lr: the batch is noise, and the weights must stay finite over many steps
        self.optimizer = torch.optim.SGD(
            self.net.parameters(), lr=1e-4, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
        spec, g = cfg.input, torch.Generator().manual_seed(0)
        bl, bu = cfg.optim.batch_labeled, cfg.optim.batch_unlabeled

        def batch(n: int) -> dict:
            # the loader's output: (B, 2, 3, T, S, S) uint8 frames and their TG successors
            frames = torch.randint(
                0, 256, (n, 2, 3, spec.clip_len, spec.crop_size, spec.crop_size), generator=g, dtype=torch.uint8
            )
            return {
                "frames": frames.pin_memory() if device.type == "cuda" else frames,
                "label": torch.randint(0, num_classes, (n,), generator=g),
            }

        self.batch_l, self.batch_u = batch(bl), batch(bu)
        self.clips = bl + bu  # dataset clips consumed per step
        streams = 2 if cfg.loss.streams == "both" else 1
        self.network_clips = streams * (bl + 2 * bu)  # what train.py logs as speed/clips_per_s

    def __call__(self) -> float:
        terms, _ = training_step(self.net, self.batch_l, self.batch_u, self.cfg, use_unlabeled=True, device=self.device)
        loss = total_loss(terms, self.cfg)
        value = float(loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.optim.clip_grad)
        self.optimizer.step()
        return value

    def flops(self) -> int:
        """FLOPs of one step (forward and backward convolutions and matmuls)."""
        with FlopCounterMode(display=False) as counter:
            self()
        return int(counter.get_total_flops())

    def peak_memory_gib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.reset_peak_memory_stats(self.device)
        self()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) / 2**30


def step_config(cfg: Config, size: str, device: torch.device) -> dict:
    spec = cfg.input
    return {
        "size": size,
        "source": "run config.yaml" if size == "run" else FULL_TRAIN_CONFIG,
        "batch_labeled": cfg.optim.batch_labeled,
        "batch_unlabeled": cfg.optim.batch_unlabeled,
        "width": cfg.model.width,
        "clip": [spec.clip_len, spec.crop_size, spec.crop_size],
        "amp_bf16": device.type == "cuda" and cfg.train.amp,
        "tg_stride": cfg.tg.stride,
        "input": "random uint8 frames (cost does not depend on content)",
        "use_unlabeled": True,
    }


def test_training_step(benchmark, size, bench_run, manifest, profile, device, matmul_peak):
    if size == "run":
        cfg, num_classes = run_config(bench_run), len(manifest["classes"])
    else:
        cfg, num_classes = full_config(profile.full_train_batch), 101
    steps = {
        "method": TrainStep(cfg, num_classes, device),
        "fixmatch": TrainStep(fixmatch_config(cfg), num_classes, device),
    }
    flops = {name: step.flops() for name, step in steps.items()}  # one step each: also the warm-up
    samples = interleaved_rounds(
        benchmark, steps, profile=profile, device=device, min_rounds=profile.train_steps, warmup=0
    )
    amp = device.type == "cuda" and cfg.train.amp
    peak = matmul_peak(torch.bfloat16 if amp else torch.float32)
    record = {
        "size": size,
        "config": step_config(cfg, size, device),
        "overhead": ratio_stats(samples["method"], samples["fixmatch"]),
        "matmul_tflops": peak,
        "matmul_dtype": "bfloat16" if amp else "float32",
    }
    for name, step in steps.items():
        stats = latency_stats(samples[name])
        seconds = stats["median_ms"] / 1e3
        record[name] = {
            **stats,
            "clips_per_s": step.clips / seconds,
            "network_clips_per_s": step.network_clips / seconds,
            "flops_per_step": flops[name],
            "achieved_tflops": flops[name] / seconds / 1e12,
            "mfu": flops[name] / seconds / 1e12 / peak,
            "peak_memory_gib": step.peak_memory_gib(),
        }
    store(benchmark, "training", {"kind": "step", **record})
    assert all(math.isfinite(step()) for step in steps.values()), "the loss is not finite"


def test_data_pipeline(benchmark, size, bench_run, profile, ucf_size_videos):
    pytest.importorskip("decord", reason="decord is not installed: the data pipeline cannot decode here")
    from training.data import TrainClips, VideoItem, collate_skipping, resolve_splits

    if size == "run":
        cfg = run_config(bench_run)
        splits = resolve_splits(cfg.data, None, is_main=False)
        items, root = splits.unlabeled, splits.root
        videos = "the run's training videos"
    else:
        cfg = full_config(profile.full_train_batch)
        paths = ucf_size_videos()
        items, root = [VideoItem(p.name, -1) for p in paths], paths[0].parent
        videos = f"{len(paths)} synthetic videos of 320x240, {UCF_FRAMES} frames"
    dataset = TrainClips(items, root, cfg.input, tg_stride=cfg.tg.stride, decode_threads=cfg.data.decode_threads)
    batch = cfg.optim.batch_unlabeled
    counter = {"next": 0}

    def one_batch():
        start = counter["next"]
        counter["next"] += batch
        return collate_skipping([dataset[(i % len(items), (0, 0, i))] for i in range(start, start + batch)])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as training.data.worker_init sets in every loader process
    try:
        samples = interleaved_rounds(
            benchmark,
            {"batch": one_batch},
            profile=profile,
            device=torch.device("cpu"),
            min_rounds=math.ceil(profile.data_clips / batch),
        )["batch"]
    finally:
        torch.set_num_threads(threads)
    stats = latency_stats(samples)
    out = one_batch()
    spec = cfg.input
    store(
        benchmark,
        "training",
        {
            "kind": "data",
            "size": size,
            "config": {
                "size": size,
                "videos": videos,
                "batch": batch,
                "clip_len": spec.clip_len,
                "interval": spec.interval,
                "short_side": spec.short_side,
                "crop_size": spec.crop_size,
                "tg_stride": cfg.tg.stride,
                "decode_threads": cfg.data.decode_threads,
                "torch_threads": 1,
            },
            **stats,
            "clips_per_s_per_worker": batch / (stats["median_ms"] / 1e3),
            "frames_decoded_per_clip": 2 * spec.clip_len,
        },
    )
    assert tuple(out["frames"].shape) == (batch, 2, 3, spec.clip_len, spec.crop_size, spec.crop_size)
    assert not out["skipped"], f"unreadable videos: {out['skipped']}"


def test_loader_passes(benchmark, size, bench_run, profile):
    """Clips/s of the training loaders as `run_training` builds them (`make_loader`, one worker),
    consuming the same number of batches from a small set (a pass every 2 batches, as a small
    labeled set) and from the run's whole unlabeled set, with workers that live for the run
    (what training does) and with workers respawned on every pass (`persistent_workers` off),
    interleaved in one process."""
    pytest.importorskip("decord", reason="decord is not installed: the loaders cannot decode here")
    if size != "run":
        pytest.skip("measured on the run's own videos")
    from training.data import SeededSampler, resolve_splits
    from training.train import cycle_batches, make_loader

    tree = run_config(bench_run).to_dict()
    tree["data"]["num_workers"] = 1
    cfg = config_from_dict(tree)
    splits = resolve_splits(cfg.data, None, is_main=False)
    batch = cfg.optim.batch_unlabeled
    sets = {"small": splits.unlabeled[: 2 * batch], "large": splits.unlabeled}
    batches = len(sets["large"]) // batch  # one pass over the large set, many over the small one
    if batches < 8:
        pytest.skip(f"the run has {len(sets['large'])} unlabeled videos, fewer than 8 batches")

    def contender(items, persistent: bool):
        sampler = SeededSampler(len(items), seed=0, min_per_rank=batch)
        loader = make_loader(items, splits.root, cfg, sampler, batch, persistent=persistent)
        state = {"epoch": 0}

        def consume() -> int:
            state["epoch"] += 1
            stream = cycle_batches(loader, sampler, state["epoch"])
            return sum(len(next(stream)["label"]) for _ in range(batches))

        return consume

    contenders = {
        f"{name}_{'persistent' if persistent else 'respawned'}": contender(items, persistent)
        for name, items in sets.items()
        for persistent in (True, False)
    }
    samples = interleaved_rounds(
        benchmark, contenders, profile=profile, device=torch.device("cpu"), min_rounds=3, warmup=1
    )
    clips = batches * batch
    record = {
        "kind": "loader_passes",
        "size": size,
        "batches_per_round": batches,
        "batch": batch,
        "workers": 1,
        "videos": {name: len(items) for name, items in sets.items()},
    }
    for name, series in samples.items():
        stats = latency_stats(series)
        record[name] = {**stats, "clips_per_s": clips / (stats["median_ms"] / 1e3)}
    record["small_over_large_time"] = {
        "persistent": ratio_stats(samples["small_persistent"], samples["large_persistent"]),
        "respawned": ratio_stats(samples["small_respawned"], samples["large_respawned"]),
    }
    record["persistent_speedup_small"] = ratio_stats(samples["small_respawned"], samples["small_persistent"])
    store(benchmark, "training", record)
    assert all(c() == clips for c in contenders.values())
