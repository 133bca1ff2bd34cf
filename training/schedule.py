"""The length of a run and its learning rate over it.

A budget is stated in epochs (the paper configs: that is how the paper defines its runs) or in
optimizer steps (`optim.steps`: the synthetic and own-data defaults, whose datasets differ in
size, so that a small dataset still gets the steps its recipe was measured with). Either way the
loop runs whole epochs, one pass over the unlabeled set each; `resolve_schedule` is the one place
where a budget becomes epochs, steps per epoch and warm-up lengths, for training and for its plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from training.config import Config


@dataclass(frozen=True)
class Schedule:
    budget: str  # "steps" (optim.steps) or "epochs" (optim.epochs)
    steps_per_epoch: int
    epochs: int
    warmup_iters: float  # length of the lr ramp, in iterations
    sup_warmup_epochs: int  # the unlabeled loss is off before this epoch

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def to_dict(self) -> dict:
        return dict(asdict(self), total_steps=self.total_steps)


def scaled_lr(cfg: Config, world_size: int) -> float:
    """The base lr for this run: `optim.lr` at `lr_reference_batch` clips, scaled linearly with
    the total batch (labeled + unlabeled clips of every process)."""
    total_batch = world_size * (cfg.optim.batch_labeled + cfg.optim.batch_unlabeled)
    return cfg.optim.lr * total_batch / cfg.optim.lr_reference_batch


def steps_per_pass(num_unlabeled: int, world_size: int, cfg: Config) -> int:
    """Optimizer steps in one pass over the unlabeled set, sharded over processes; a set smaller
    than one batch per process still gives one step (SeededSampler repeats it)."""
    bu = cfg.optim.batch_unlabeled
    steps = max(num_unlabeled // world_size, bu) // bu
    return min(steps, cfg.train.max_steps_per_epoch) if cfg.train.max_steps_per_epoch else steps


def resolve_schedule(cfg: Config, num_unlabeled: int, world_size: int) -> Schedule:
    """Epochs, steps per epoch and warm-ups of a run of `cfg` on `num_unlabeled` videos.

    In steps: the run has round(steps / steps per pass) epochs (at least one; a pass longer than
    the whole budget is cut to it), the lr ramp lasts `warmup_steps` iterations and the unlabeled
    loss starts at the first epoch boundary at or after `sup_warmup_steps`."""
    o = cfg.optim
    per_pass = steps_per_pass(num_unlabeled, world_size, cfg)
    if o.steps:
        per_epoch = min(per_pass, o.steps)
        return Schedule(
            "steps",
            per_epoch,
            max(1, round(o.steps / per_epoch)),
            float(o.warmup_steps),
            math.ceil(o.sup_warmup_steps / per_epoch),
        )
    return Schedule("epochs", per_pass, o.epochs, o.warmup_epochs * per_pass, o.sup_warmup_epochs)


def learning_rate(it: int, *, base_lr: float, schedule: Schedule, cfg: Config) -> float:
    """The lr of iteration `it` (0-based, counted over the whole run).

    `mmcv` (the authors', MMCV's CosineAnnealing hook with warmup='linear', warmup_by_epoch):
    the regular lr is one cosine from base_lr to 0 over the whole run, constant within an epoch;
    during the warm-up it is multiplied, per iteration, by the ramp 1 - (1 - it / W)
    (1 - warmup_start_factor), W the warm-up's iterations.
    `warmup_then_cosine`: the same ramp on base_lr, then a cosine over the iterations after it."""
    warm = schedule.warmup_iters
    f = cfg.optim.warmup_start_factor
    ramp = 1.0 - (1.0 - it / warm) * (1.0 - f) if it < warm else 1.0
    if cfg.optim.schedule == "mmcv":
        epoch = it // schedule.steps_per_epoch
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, epoch / schedule.epochs))) * ramp
    if it < warm:
        return base_lr * ramp
    progress = (it - warm) / max(1.0, schedule.total_steps - warm)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
