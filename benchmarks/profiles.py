"""How much each benchmark measures: sizes, view counts, rounds, requests, training steps.

Three profiles, chosen by `python -m benchmarks.run --profile` and the device:
- `standard` on a CPU: what `make bench` runs on a 2-core machine in minutes. The exported
  run (the synthetic default: width 16, 8x64², 10 classes) at 1, 3 and 30 views, and R3D-18
  at the paper's size (width 64, 8x224², 101 classes) at 1, 3 and 30 views with few rounds;
  the full-size training step with a reduced batch.
- `standard` on a GPU: everything at the paper's size with many rounds, bf16 included.
- `smoke`: the smallest run that exercises every code path (the suite's own tests).

Rounds adapt to the machine: a case measures for about `budget_s` seconds after its warm-up,
within [min_rounds, max_rounds], so one profile fits a slow CPU and a fast GPU alike.
"""

from __future__ import annotations

from dataclasses import dataclass

PROFILES = ("standard", "smoke")

# The paper's inference size: R3D-18, 8 frames at 224² (37.6 GFLOPs per view with the
# temporal pool), UCF-101's 101 classes.
FULL_ARCHITECTURE = {
    "name": "r3d18",
    "num_classes": 101,
    "width": 64,
    "temporal_pool": True,
    "dropout": 0.5,
    "bn_eps": 1e-3,
    "in_channels": 3,
}
FULL_CLIP_SHAPE = (3, 8, 224, 224)
FULL_TRAIN_CONFIG = "configs/ucf101_10.yaml"
# UCF-101's videos: 320x240 at 25 fps, ~7 s on average; synthetic ones of that size stand in
UCF_WIDTH, UCF_HEIGHT, UCF_FRAMES = 320, 240, 150


@dataclass(frozen=True)
class Profile:
    name: str
    device: str  # "cpu" or "cuda"
    # timing
    budget_s: float  # measuring time per case after the warm-up
    min_rounds: int
    max_rounds: int
    warmup: int  # warm-up rounds (cuDNN picks its algorithms, allocators settle)
    ratio_min_rounds: int  # interleaved ratios need enough rounds for a spread
    matmul_n: int  # side of the square matmul that measures the machine's peak
    # inference groups (no_added_cost, backends)
    sizes: tuple[str, ...]  # "run": the exported run; "full": R3D-18 at the paper's size
    views: tuple[int, ...]  # backends group
    cost_views: tuple[int, ...]  # no_added_cost group
    cost_backends: dict[str, tuple[str, ...]]  # per size: "onnxruntime", "torch-export", "openvino-int8", ...
    # serving group
    serving_sizes: tuple[str, ...]  # "run": the exported run; "full": width 64 at the UCF-101 config's size
    full_serving_views: tuple[int, int]  # (clips, crops) per request to the full-size model
    decode_cases: tuple[tuple[str, int | None, int | None], ...]  # (video, clips, crops); None: the spec's
    serving_requests: int  # requests per concurrency level
    serving_concurrency: tuple[int, ...]
    decode_rounds: int  # at least this many decodes per decode/preprocess case
    # training group
    train_steps: int  # measured steps per method (at least; more where the budget allows)
    full_train_batch: tuple[int, int] | None  # (labeled, unlabeled) per step at full size; None: skip it
    data_clips: int  # clips through the data pipeline per case


def get_profile(name: str, device: str) -> Profile:
    """The profile `name` ("standard" or "smoke") for `device` ("cpu" or "cuda")."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    engines = ("onnxruntime", "torch-export", "openvino-fp32", "openvino-bf16", "openvino-int8")
    decode_cases = (("run", None, None), ("ucf101", 10, 3), ("ucf101", 1, 3))
    if name == "smoke":
        return Profile(
            name=name,
            device=device,
            budget_s=0.05,
            min_rounds=2,
            max_rounds=3,
            warmup=1,
            ratio_min_rounds=3,
            matmul_n=256,
            sizes=("run",),
            views=(1, 3),
            cost_views=(1, 3),
            cost_backends={"run": engines},
            serving_sizes=("run",),
            full_serving_views=(1, 3),
            decode_cases=(("run", None, None),),
            serving_requests=3,
            serving_concurrency=(1, 2),
            decode_rounds=2,
            train_steps=1,
            full_train_batch=None,
            data_clips=2,
        )
    if device == "cpu":
        # 2 cores: the full-size 30-view forward takes ~3.5 s, so those cases get the fewest rounds
        return Profile(
            name=name,
            device=device,
            budget_s=3.0,
            min_rounds=3,
            max_rounds=60,
            warmup=1,
            ratio_min_rounds=5,
            matmul_n=4096,
            sizes=("run", "full"),
            views=(1, 3, 30),
            cost_views=(1, 30),
            cost_backends={"run": engines, "full": engines},
            serving_sizes=("run", "full"),
            full_serving_views=(10, 3),
            decode_cases=decode_cases,
            serving_requests=12,
            serving_concurrency=(1, 4),
            decode_rounds=5,
            train_steps=3,
            full_train_batch=(1, 1),
            data_clips=24,
        )
    return Profile(
        name=name,
        device=device,
        budget_s=5.0,
        min_rounds=20,
        max_rounds=500,
        warmup=3,
        ratio_min_rounds=30,
        matmul_n=8192,
        sizes=("run", "full"),
        views=(1, 3, 30),
        cost_views=(1, 30),
        cost_backends={"run": engines, "full": engines},
        serving_sizes=("run", "full"),
        full_serving_views=(10, 3),
        decode_cases=decode_cases,
        serving_requests=30,
        serving_concurrency=(1, 4),
        decode_rounds=10,
        train_steps=10,
        full_train_batch=(5, 5),
        data_clips=48,
    )


def profile_from_options(config) -> Profile:
    """The profile a pytest session asked for with --bench-profile and --bench-device."""
    device = config.getoption("--bench-device")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return get_profile(config.getoption("--bench-profile"), device)
