"""A tiny training run (seconds on 2 CPU cores) shared by the training, export and serving tests."""

from __future__ import annotations

from pathlib import Path


def tiny_overrides(data_root: Path, **extra) -> list[str]:
    items = {
        "data.root": str(data_root),
        "data.synthetic_size": "{num_classes: 3, train_per_class: 6, labeled_per_class: 2, val_per_class: 2, "
        "frames: 20, width: 40, height: 32, seed: 0}",
        "data.num_workers": 0,
        "input.clip_len": 4,
        "input.interval": 2,
        "input.short_side": 32,
        "input.crop_size": 28,
        "input.test_short_side": 32,
        "input.test_crop": 32,
        "input.test_clips": 2,
        "model.width": 4,
        "optim.epochs": 3,
        "optim.batch_labeled": 2,
        "optim.batch_unlabeled": 4,
        "optim.warmup_epochs": 1,
        "optim.sup_warmup_epochs": 1,
        # the default config's budget is in steps; these runs count epochs
        "optim.steps": 0,
        "optim.warmup_steps": 0,
        "optim.sup_warmup_steps": 0,
        "train.checkpoint_every": 1,
        "train.eval_every": 1,
        "train.precise_bn_every": 2,
        "train.precise_bn_batches": 2,
        "train.precise_bn_batch_size": 4,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def train_tiny_run(run: Path, data_root: Path, **extra) -> Path:
    """Train a tiny run into `run` (3 classes, width 4, 3 epochs) and return it."""
    from training.train import main as train_main

    code = train_main(["--run", str(run), "--set", *tiny_overrides(data_root, **extra)])
    if code != 0:
        raise RuntimeError(f"tiny training run failed with exit code {code}")
    return run
