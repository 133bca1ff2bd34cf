"""What a figure was measured on: CPU model and cores, GPU, memory, library versions.

Every results file carries this record, and its file name starts with `machine_slug`, so
figures from different machines are never mixed up.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata

# distributions whose versions change the figures (absent ones are recorded as null)
# oneDNN's (torch's and OpenVINO's) instruction-set cap: set, the CPU is measured as one without
# the instructions above the cap (e.g. AVX512_CORE_BF16: an AVX-512 CPU without AMX)
ISA_CAP = "ONEDNN_MAX_CPU_ISA"
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "KMP_BLOCKTIME", "CUDA_VISIBLE_DEVICES", ISA_CAP)
LIBRARIES = (
    "torch",
    "onnxruntime-gpu",
    "onnxruntime",
    "onnx",
    "openvino",
    "numpy",
    "decord",
    "av",
    "kornia",
    "tensorrt",
    "torchserve",
    "torch-model-archiver",
    "pytest-benchmark",
)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpu_info() -> dict | None:
    """Name, memory and compute capability of CUDA device 0, or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "count": torch.cuda.device_count(),
        "cuda": torch.version.cuda,
    }


def library_versions() -> dict:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_machine() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_gib(),
        "gpu": gpu_info(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        # thread settings change CPU figures (e.g. OpenMP's spin-waiting on a shared machine)
        "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def machine_slug(machine: dict, device: str) -> str:
    """A file-name-safe name of what the figures ran on: the GPU's name on "cuda", else the
    CPU's and its cores, e.g. `nvidia-h200` or `amd-epyc-2c`."""
    if device == "cuda" and machine.get("gpu"):
        text = machine["gpu"]["name"]
    else:
        text = f"{machine['cpu']} {machine['cores']}c"
        cap = (machine.get("env") or {}).get(ISA_CAP)
        if cap:  # figures under an instruction-set cap are another machine's
            text += f" max isa {cap}"
    text = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|@.*?ghz", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "machine"
