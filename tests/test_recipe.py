"""The paper configs pinned to the authors' code (lambert-x/video-semisup at 17cc13c): the values
below are computed by hand from their configs, not from this project's code (docs/RECIPE.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.config import load_config
from training.train import learning_rate, scaled_lr, steps_per_epoch

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem != "synthetic")


# ----------------------------------------------------------------------------- lr schedule
# UCF-101 (configs/ucf101_main/*.py): lr 0.2 at 8 GPUs, CosineAnnealing(min_lr=0) by epoch over
# 180 epochs, warmup='linear', warmup_ratio=0.1, warmup_by_epoch, warmup_iters=30:
#   lr(e) = 0.2 * 0.5 * (1 + cos(pi * e / 180)) * (1 - (1 - e / 30) * 0.9)   for e < 30
UCF101_LR_AT_EPOCH = {0: 0.02, 5: 0.04990487, 10: 0.07939231, 20: 0.13577848, 30: 0.18660254, 100: 0.08263518}


@pytest.mark.parametrize("epoch", sorted(UCF101_LR_AT_EPOCH))
def test_ucf101_lr_at_the_start_of_an_epoch_is_the_authors(epoch):
    cfg = load_config(CONFIGS / "ucf101_20.yaml")
    steps = 238  # 9,537 videos / (8 GPUs x 5 clips) per step
    assert steps_per_epoch(9537, 8, cfg) == steps
    base = scaled_lr(cfg, world_size=8)
    assert base == pytest.approx(0.2)
    lr = learning_rate(epoch * steps, base_lr=base, steps_per_epoch=steps, cfg=cfg)
    assert lr == pytest.approx(UCF101_LR_AT_EPOCH[epoch], abs=1e-7)


def test_warm_up_ramps_per_iteration_and_the_cosine_steps_per_epoch():
    cfg = load_config(CONFIGS / "ucf101_20.yaml")
    lr = [learning_rate(it, base_lr=0.2, steps_per_epoch=10, cfg=cfg) for it in range(0, 400)]
    for e in range(30):  # within a warm-up epoch: rising every step (the ramp is per iteration)
        assert all(a < b for a, b in zip(lr[e * 10 : e * 10 + 10], lr[e * 10 + 1 : e * 10 + 10]))
    assert lr[300] == pytest.approx(0.18660254)  # the warm-up ends on the regular (cosine) lr
    assert lr[300:310] == [lr[300]] * 10  # after it: constant within an epoch (by_epoch cosine)
    assert lr[309] > lr[310]


@pytest.mark.parametrize("name, warmup, epochs, batch, lr_at_8_gpus", [
    ("ucf101_5", 30, 180, 5, 0.2), ("ucf101_10", 30, 180, 5, 0.2), ("ucf101_20", 30, 180, 5, 0.2),
    ("ucf101_50", 30, 180, 5, 0.2), ("hmdb51_40", 60, 360, 5, 0.2), ("hmdb51_50", 60, 360, 5, 0.2),
    ("hmdb51_60", 60, 360, 5, 0.2), ("k400_1", 10, 45, 8, 0.2), ("k400_10", 15, 90, 8, 0.2),
])
def test_each_paper_config_has_the_authors_schedule_and_batch(name, warmup, epochs, batch, lr_at_8_gpus):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    o = cfg.optim
    assert (o.warmup_epochs, o.sup_warmup_epochs, o.epochs, o.schedule) == (warmup, warmup, epochs, "mmcv")
    assert (o.batch_labeled, o.batch_unlabeled, o.warmup_start_factor) == (batch, batch, 0.1)
    assert scaled_lr(cfg, world_size=8) == pytest.approx(lr_at_8_gpus)


def test_the_cpu_default_keeps_the_schedule_it_was_tuned_with():
    cfg = load_config(CONFIGS / "synthetic.yaml")
    assert cfg.optim.schedule == "warmup_then_cosine"
    # ramp over 5 epochs, then a cosine over the remaining 55
    assert learning_rate(0, base_lr=1.0, steps_per_epoch=20, cfg=cfg) == pytest.approx(0.1)
    assert learning_rate(100, base_lr=1.0, steps_per_epoch=20, cfg=cfg) == pytest.approx(1.0)
    assert learning_rate(100 + 550, base_lr=1.0, steps_per_epoch=20, cfg=cfg) == pytest.approx(0.5)
