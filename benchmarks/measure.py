"""Timing primitives shared by the benchmark groups.

Ratios (student vs plain R3D-18, HTTP request vs model) are measured by interleaving the
contenders round by round in one process, alternating which goes first, so drifts of the
machine (other jobs, clock changes, thermal state) hit both sides alike. Latencies are
reported as median, p90 and p99 of per-call wall time, with the device synchronized around
each call so queued GPU work is counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of `fn`, the device drained before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def interleaved_rounds(
    benchmark,
    contenders: dict[str, Callable[[], object]],
    *,
    profile,
    device: torch.device,
    min_rounds: int | None = None,
    warmup: int | None = None,
    settle_s: float = 0.0,
) -> dict[str, list[float]]:
    """Run every contender once per round, in alternating order, under pytest-benchmark's
    `pedantic` (which records the round totals); return each contender's per-call seconds.

    The warm-up rounds (the profile's, or `warmup`) come first; the last one sets the number of
    measured rounds so that they take about `profile.budget_s` (within the profile's bounds, at
    least `min_rounds`); without a warm-up the lowest number is run. With one contender this
    is a plain latency series.

    `settle_s`: an untimed pause before each call, for contenders in other processes (a
    server): the thread pools of the previous in-process call spin-wait for a while after it
    and would slow the other process down on a machine with few cores."""
    names = list(contenders)
    lowest = max(profile.min_rounds, min_rounds or 0)
    highest = max(profile.max_rounds, lowest)
    rounds = lowest
    for _ in range(profile.warmup if warmup is None else warmup):
        round_s = sum(timed_call(contenders[name], device) for name in names)
        rounds = min(highest, max(lowest, math.ceil(profile.budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    done = {"rounds": 0}

    def one_round() -> None:
        order = names if done["rounds"] % 2 == 0 else names[::-1]
        for name in order:
            if settle_s:
                time.sleep(settle_s)
            samples[name].append(timed_call(contenders[name], device))
        done["rounds"] += 1

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=0, iterations=1)
    return samples


def latency_stats(seconds: list[float]) -> dict:
    """Median, p90, p95, p99, mean, min and max in milliseconds (linear-interpolated percentiles:
    with few rounds p99 sits next to the maximum, which `rounds` makes visible)."""
    if not seconds:
        raise ValueError("no samples to summarize")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "rounds": int(len(ms)),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def ratio_stats(numerator: list[float], denominator: list[float]) -> dict:
    """The ratio of two interleaved series: the median of the per-round ratios, their 10th-90th
    percentile spread, and the ratio of the medians."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need two series of equal, non-zero length, got {len(numerator)} and {len(denominator)}")
    per_round = np.asarray(numerator, dtype=np.float64) / np.asarray(denominator, dtype=np.float64)
    return {
        "median": float(np.median(per_round)),
        "p10": float(np.percentile(per_round, 10)),
        "p90": float(np.percentile(per_round, 90)),
        "of_medians": float(np.median(numerator) / np.median(denominator)),
        "rounds": int(len(per_round)),
    }


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, *, n: int, rounds: int) -> dict:
    """The machine's practical peak: FLOP/s of an n x n @ n x n product (2 n^3 FLOPs) on
    `device` with torch's current threads, median over `rounds` after one warm-up.

    On a CPU the product is timed twice, with the two libraries torch can use: torch.matmul
    (the BLAS torch was built with) and the same product as a 1x1 convolution (oneDNN, which
    runs the models' 3D convolutions). The faster one is the reference: a BLAS may take a
    slower code path on some CPUs (measured here: MKL's matmul on an AVX-512 AMD EPYC reached
    less than half of what oneDNN's convolutions did), and MFU against it would exceed 100 %.
    Every implementation's figure is recorded under "implementations"."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    candidates = {"torch.matmul": lambda: torch.matmul(a, b)}
    if device.type == "cpu":
        # (1, n, n, 1) input, n output channels of a 1x1 kernel: out[o, i] = sum_k w[o, k] x[k, i]
        x = a.reshape(1, n, n, 1)
        w = b.reshape(n, n, 1, 1)
        candidates["onednn-conv1x1"] = lambda: torch.nn.functional.conv2d(x, w)
    flops = 2.0 * n**3
    measured = {}
    with torch.inference_mode():
        for name, fn in candidates.items():
            fn()
            seconds = [timed_call(fn, device) for _ in range(rounds)]
            measured[name] = {
                "median_ms": float(np.median(seconds) * 1e3),
                "tflops": float(flops / np.median(seconds) / 1e12),
                "best_tflops": float(flops / np.min(seconds) / 1e12),
            }
    best = max(measured, key=lambda k: measured[k]["tflops"])
    return {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "rounds": rounds,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "implementation": best,
        **measured[best],
        "implementations": measured,
    }


def store(benchmark, group: str, record: dict) -> None:
    """Attach one case's figures to pytest-benchmark's JSON; `benchmarks.run` collects the
    records of each group from there into the results files."""
    benchmark.extra_info["group"] = group
    benchmark.extra_info["record"] = record
