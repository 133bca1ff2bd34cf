"""Typed configuration: dataclasses loaded from YAML, `key=value` overrides, strict checking.

Defaults are the paper's full-size settings (METHOD.md); a YAML file states only what differs.
Unknown keys, wrong types and values outside a key's choices are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.distributed import DEVICES
from training.losses import ALIGN_KINDS, FUSIONS
from training.synthetic import FAMILIES
from training.views import InputSpec


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


# the networks trained: both = RGB student + TG teacher; rgb / tg = FixMatch on one modality
STREAMS = ("both", "rgb", "tg")


@dataclass
class SyntheticConfig:
    """Size of the generated motion dataset used when `data.synthetic` is on."""

    num_classes: int = 10
    train_per_class: int = 40
    labeled_per_class: int = 4
    val_per_class: int = 10
    frames: int = 48
    width: int = 96
    height: int = 72
    seed: int = 0
    clutter: bool = True  # distractors, camera jitter and pixel noise on top of random appearance
    family: str = ""  # "": the first num_classes motions; a motion family (its first num_classes, 0 = all)


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    format: str = "lists"  # lists: classes + list files; folder: ROOT/labeled, unlabeled, val
    classes: str = "classes.txt"
    train_list: str = "lists/train.txt"  # every training video with its label (split source)
    labeled_list: str = ""  # a given labeled split (e.g. VideoSSL's), used as is
    unlabeled_list: str = ""  # default: the whole training list, labeled videos included
    val_list: str = "lists/val.txt"
    labeled_ratio: float = 0.0  # draw the labeled split: a fraction of each class ...
    labeled_per_class: int = 0  # ... or k videos per class (Kinetics 1 % / 10 %)
    split_seed: int = 0
    synthetic: bool = False  # generate the synthetic motion dataset into `root` if missing
    synthetic_size: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_workers: int = 4  # data-loader processes per training process
    # the classes keep their meaning when the video is mirrored (no "swipe left" vs "swipe
    # right"): only then does training flip clips horizontally (the own-data default's input.flip)
    mirror_invariant: bool = False
    decode_threads: int = 1  # decord threads per reader


@dataclass
class TGConfig:
    stride: int = 1  # 1: fast TG, frame t minus frame t+1 (default); > 1: slow TG (Table 3a)
    # slow TG's frames: spread = the authors' SampleFrames_WithDiff (T+1 frames spread evenly from
    # the clip's first to its last sampled frame, TG between neighbours: 7 frames apart at 8x8,
    # whatever the stride); offset = frame t minus frame t+stride at every sampled frame
    slow: str = "spread"


@dataclass
class StrongAugConfig:
    num_ops: int = 2
    magnitude: float = 9.0  # of 10: each op at magnitude/10 of its maximum strength (authors: 9)
    # op strengths: mmaction = MMAction2's Imgaug default_transforms (the authors' code);
    # fixmatch = the harsher FixMatch-style table this project used first (the CPU default's)
    preset: str = "mmaction"


@dataclass
class ModelConfig:
    width: int = 64  # channels of stage 1; 64 is R3D-18, smaller widths for CPU-sized runs
    temporal_pool: bool = True  # max-pool time after stage 1 (authors' code); off = Table 4
    dropout: float = 0.5
    bn_eps: float = 1e-3
    zero_init_residual: bool = False  # authors' config: False (each block's last BN starts at 1)
    head_init_std: float = 0.01  # projection heads' linears: normal(0, std) as the authors'; 0 = PyTorch's


@dataclass
class LossConfig:
    streams: str = "both"  # both: RGB student + TG teacher; rgb / tg: FixMatch on one modality
    fusion: str = "logits"  # pseudo-labels: logits (code), probs (paper Eq. 5), rgb, tg, self
    threshold: float = 0.3
    # distribution alignment of the pseudo-labels (ReMixMatch): an addition to the method, off in
    # the paper's configs; momentum of the running mean of the weak views' class probabilities
    dist_align: bool = False
    dist_align_momentum: float = 0.99
    align: str = "cosine"  # dense alignment: cosine, l1, l2, off
    align_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    stop_gradient: bool = True
    contrast: bool = True
    temperature: float = 0.5
    weight_cls: float = 0.5  # on (L_sup_rgb + L_u_rgb + L_sup_tg + L_u_tg)
    weight_align: float = 1.0
    weight_contrast: float = 1.0


@dataclass
class OptimConfig:
    epochs: int = 180  # one epoch is one pass over the unlabeled set
    # a budget in optimizer steps instead (0: `epochs` is the budget); the epochs then follow from
    # the data size, and the two warm-ups are the `*_steps` keys below (training/schedule.py)
    steps: int = 0
    warmup_steps: int = 0
    sup_warmup_steps: int = 0
    batch_labeled: int = 5  # per process
    batch_unlabeled: int = 5  # per process
    lr: float = 0.2  # at `lr_reference_batch` clips; scaled linearly with the actual total batch
    lr_reference_batch: int = 80  # 8 GPUs x (5 + 5) clips
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # lr warm-up: linear from warmup_start_factor x lr over these epochs (authors: the same
    # epochs as the supervised warm-up, warmup_by_epoch in MMCV's CosineAnnealing hook)
    warmup_epochs: float = 30.0
    warmup_start_factor: float = 0.1
    # mmcv: one cosine over the whole run, by epoch, multiplied by the warm-up ramp per iteration
    # (the authors'); warmup_then_cosine: the ramp, then a cosine over the remaining iterations
    schedule: str = "mmcv"
    sup_warmup_epochs: int = 30  # unlabeled loss off before this epoch
    clip_grad: float = 40.0  # 0 disables


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda
    amp: bool = False  # bf16 autocast on CUDA; off = fp32, as the authors trained
    sync_bn: bool = True  # on CUDA with several processes (SyncBN has no CPU kernel)
    checkpoint_every: int = 5
    eval_every: int = 5  # quick 1-clip validation
    precise_bn_every: int = 5
    precise_bn_batches: int = 200  # per process (authors: 200; HMDB-51 configs 120)
    precise_bn_batch_size: int = 5  # clips per PreciseBN batch per process (authors: 5, K400 too)
    precise_bn: bool = True
    # strong views go through both networks from the first step, as in the authors' code (their
    # loss is off during the supervised warm-up, but BatchNorm sees them); false skips them
    forward_strong_in_warmup: bool = True
    # test-time average over views: score = mean of the raw logits (the authors' average_clips=
    # 'score', which produced the paper's numbers); prob = mean of the softmax probabilities
    test_average: str = "score"
    eval_batch_views: int = 30  # views per forward in the 30-view test
    threads: int = 0  # torch intra-op threads per process, 0 = torch's default
    max_steps_per_epoch: int = 0  # 0 = a full pass; a cap for smoke tests
    log_every: int = 200  # a progress line in train.log every N steps within an epoch (0: per epoch only)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    input: InputSpec = field(default_factory=InputSpec)
    tg: TGConfig = field(default_factory=TGConfig)
    strong: StrongAugConfig = field(default_factory=StrongAugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.format": ("lists", "folder"),
    "data.synthetic_size.family": ("", *FAMILIES),
    "loss.streams": STREAMS,
    "loss.fusion": FUSIONS,
    "loss.align": (*ALIGN_KINDS, "off"),
    "train.device": DEVICES,
    "train.test_average": ("score", "prob"),
    "tg.slow": ("spread", "offset"),
    "strong.preset": ("mmaction", "fixmatch"),
    "optim.schedule": ("mmcv", "warmup_then_cosine"),
}


def _coerce(value, typ, key: str):
    """Check/convert one YAML value against a dataclass field type."""
    origin = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(typ, value, key + ".")
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false (or on/off), got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if typ is str:
        if value is False and key in CHOICES and "off" in CHOICES[key]:
            return "off"  # YAML reads a bare `off` as false
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            if key in CHOICES and value not in CHOICES[key]:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {typ}")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}' (valid: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, object]]:
    """`["loss.align=off", "optim.epochs=3"]` -> [(key, YAML-parsed value), ...]."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file <- `key=value` overrides, checked against the dataclasses."""
    tree: dict = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    _check_one_budget(tree)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def _check_one_budget(tree: dict) -> None:
    """A budget in steps and one in epochs, both stated, would leave one silently unused."""
    optim: dict = tree["optim"] if isinstance(tree.get("optim"), dict) else {}
    epoch_warmups = [f"optim.{k}" for k in ("warmup_epochs", "sup_warmup_epochs") if k in optim]
    if optim.get("steps") and epoch_warmups:
        raise ConfigError(
            f"{' and '.join(epoch_warmups)} with a budget in steps (optim.steps={optim['steps']}) would go "
            "unused: set optim.warmup_steps and optim.sup_warmup_steps instead"
        )
    if optim.get("steps") and "epochs" in optim:
        raise ConfigError(
            f"optim.epochs={optim['epochs']} and optim.steps={optim['steps']}: the budget is one or "
            "the other; set optim.steps=N (with optim.warmup_steps, optim.sup_warmup_steps), or "
            "optim.steps=0 with optim.epochs (and optim.warmup_epochs, optim.sup_warmup_epochs)"
        )


def config_from_dict(tree: dict) -> Config:
    """Rebuild a Config saved with a checkpoint or run folder."""
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    loss = cfg.loss
    if loss.streams != "both":
        if loss.align != "off" or loss.contrast:
            raise ConfigError(
                f"loss.streams={loss.streams} trains one network: set loss.align=off and loss.contrast=off"
            )
        if loss.fusion != "self":
            raise ConfigError(f"loss.streams={loss.streams} needs loss.fusion=self (no second network to fuse)")
    bad = [s for s in loss.align_stages if s not in (1, 2, 3, 4)]
    if bad or not loss.align_stages:
        raise ConfigError(f"loss.align_stages: stages are 1..4, got {loss.align_stages}")
    if not 0.0 <= loss.threshold <= 1.0:
        raise ConfigError(f"loss.threshold: must be in [0, 1], got {loss.threshold}")
    if loss.temperature <= 0:
        raise ConfigError(f"loss.temperature: must be > 0, got {loss.temperature}")
    if not 0.0 <= loss.dist_align_momentum < 1.0:
        raise ConfigError(f"loss.dist_align_momentum: must be in [0, 1), got {loss.dist_align_momentum}")
    if cfg.data.labeled_ratio and cfg.data.labeled_per_class:
        raise ConfigError("data.labeled_ratio and data.labeled_per_class: set one, not both")
    if not 0.0 <= cfg.data.labeled_ratio <= 1.0:
        raise ConfigError(f"data.labeled_ratio: must be in [0, 1], got {cfg.data.labeled_ratio}")
    spec = cfg.input
    if spec.crop_size > spec.short_side:
        raise ConfigError(f"input.crop_size ({spec.crop_size}) exceeds input.short_side ({spec.short_side})")
    if spec.test_crop > spec.test_short_side:
        raise ConfigError(f"input.test_crop ({spec.test_crop}) exceeds input.test_short_side ({spec.test_short_side})")
    for key, value in (
        ("input.clip_len", spec.clip_len),
        ("input.test_clips", spec.test_clips),
        ("input.test_crops", spec.test_crops),
        ("train.eval_batch_views", cfg.train.eval_batch_views),
        ("input.interval", spec.interval),
        ("tg.stride", cfg.tg.stride),
        ("optim.epochs", cfg.optim.epochs),
        ("optim.batch_labeled", cfg.optim.batch_labeled),
        ("optim.batch_unlabeled", cfg.optim.batch_unlabeled),
        ("model.width", cfg.model.width),
    ):
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    for key, count in (
        ("data.num_workers", cfg.data.num_workers),
        ("data.decode_threads", cfg.data.decode_threads),
        ("train.threads", cfg.train.threads),
    ):
        if count < 0:
            raise ConfigError(f"{key}: must be >= 0, got {count}")
    o = cfg.optim
    if o.lr <= 0 or o.weight_decay < 0 or not 0.0 <= o.momentum < 1.0:
        raise ConfigError(
            f"optim.lr must be > 0, optim.weight_decay >= 0 and optim.momentum in [0, 1); got "
            f"{o.lr}, {o.weight_decay} and {o.momentum}"
        )
    if o.steps < 0 or o.warmup_steps < 0 or o.sup_warmup_steps < 0:
        raise ConfigError("optim.steps, optim.warmup_steps and optim.sup_warmup_steps: must be >= 0")
    if o.steps and o.warmup_steps > o.steps:
        raise ConfigError(f"optim.warmup_steps ({o.warmup_steps}) exceeds optim.steps ({o.steps})")
    if not o.steps and (o.warmup_steps or o.sup_warmup_steps):
        raise ConfigError(
            "optim.warmup_steps and optim.sup_warmup_steps: set with a budget in steps "
            "(optim.steps); with optim.epochs use optim.warmup_epochs and optim.sup_warmup_epochs"
        )
    if cfg.train.precise_bn_batch_size < 1 or cfg.train.precise_bn_batches < 1:
        raise ConfigError("train.precise_bn_batch_size and train.precise_bn_batches: must be >= 1")
    if not 0.0 <= cfg.strong.magnitude <= 10.0:
        raise ConfigError(f"strong.magnitude: must be in [0, 10], got {cfg.strong.magnitude}")
    if len(spec.mean) != 3 or len(spec.std) != 3:
        raise ConfigError("input.mean and input.std: three values each (R, G, B)")


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def diff_configs(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return sorted(k for k in fa if fa[k] != fb.get(k))
