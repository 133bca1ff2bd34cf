"""Which CUDA devices this process can use, asked of the NVIDIA driver itself.

The serving image runs the model in ONNX Runtime (GPU build) or TensorRT and keeps a CPU-only
torch for preprocessing, so `torch.cuda.is_available()` says nothing about the GPU there. The
driver library (`libcuda.so.1`, mounted into a container by `docker run --gpus`) answers for
every runtime: no library or no device means no GPU, whatever the Python packages are.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger(__name__)

DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
CUDA_SUCCESS = 0


@functools.lru_cache(maxsize=1)
def _driver() -> tuple[ctypes.CDLL | None, str]:
    """(the initialized driver library, "") or (None, why not); cuInit runs once per process."""
    for name in DRIVER_LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        status = lib.cuInit(0)
        if status != CUDA_SUCCESS:  # e.g. 100 = CUDA_ERROR_NO_DEVICE, 999 = unknown (driver/kernel mismatch)
            return None, f"the CUDA driver found no usable GPU (cuInit error {status})"
        return lib, ""
    return None, "no CUDA driver (libcuda.so.1 not found)"


def cuda_device_count() -> int:
    """CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies); 0 without a driver."""
    lib, _ = _driver()
    if lib is None:
        return 0
    count = ctypes.c_int(0)
    return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == CUDA_SUCCESS else 0


def cuda_unavailable() -> str | None:
    """None when the driver reports at least one CUDA device, else why not (one line)."""
    lib, reason = _driver()
    if lib is None:
        return reason
    return None if cuda_device_count() > 0 else "the CUDA driver reports no device (CUDA_VISIBLE_DEVICES?)"


def cuda_device_name(index: int = 0) -> str | None:
    """The GPU's name as the driver reports it (e.g. "NVIDIA H200"), or None without one."""
    lib, _ = _driver()
    if lib is None or index >= cuda_device_count():
        return None
    device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
    if lib.cuDeviceGet(ctypes.byref(device), index) != CUDA_SUCCESS:
        return None
    if lib.cuDeviceGetName(name, len(name), device) != CUDA_SUCCESS:
        return None
    return name.value.decode(errors="replace")


def cuda_driver_version() -> str | None:
    """The CUDA version the driver supports, e.g. "13.0", or None without a driver."""
    lib, _ = _driver()
    if lib is None:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != CUDA_SUCCESS:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"
