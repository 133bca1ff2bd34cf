"""`make gpu-check` (`python -m benchmarks.gpu_check`): what only a GPU can settle, in one run of
a few minutes.

1. The environment: GPU, driver, CUDA, cuDNN, NCCL, bf16 support, the runtimes present.
2. One training step of the full method at full size (the paper's defaults in training/config.py)
   in bf16 autocast and in fp32 from the same weights and batch: their losses and gradient norms
   must agree; and a bf16 conv3d against fp32 on cuDNN (a reported cuDNN 9.10 bf16 conv3d
   correctness bug, pytorch#163539, would show here).
3. A one-rank NCCL process group with SyncBatchNorm: one DDP step, and the collective timeout.
4. The full-size student (random weights, perturbed BatchNorm statistics) exported as the export
   does, and the server's CUDA backends (torch.export program, ONNX Runtime's CUDA provider,
   TensorRT where installed) against the CPU PyTorch reference, TF32 off (what serves) and on.
5. `auto`'s choice with its timings and the GPU memory left reserved after it.
6. The 30-view latency of each backend, and ONNX Runtime CUDA's first call per batch size
   (its exhaustive cuDNN search runs once per new shape).

Writes `benchmarks/results/gpu-check-<gpu>-<date>.json` and `.md`. What is absent (no GPU,
no TensorRT, no ONNX Runtime CUDA provider, no kornia for the training step) is skipped and
named; on a machine without a GPU nothing else runs and no results file is written. Exit
status 1 only when a check ran and failed.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import describe_machine, library_versions, machine_slug

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 101  # UCF-101, the paper's main benchmark
LOSS_RTOL = 0.05  # bf16 keeps 8 mantissa bits; one step's loss moves by well under 1 % in practice
CONV_BF16_RTOL = 0.05  # a bf16 conv3d vs fp32: ~4e-3 relative expected; a wrong kernel is off by O(1)
PARITY_VIEWS = 6
LATENCY_VIEWS = 30


class Check:
    """Collects what ran, what was skipped (and why) and what failed, printing as it goes."""

    def __init__(self):
        self.results: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        print(f"[skipped] {name}: {reason}", flush=True)

    def run(self, name: str, fn: Callable[[], dict]) -> dict | None:
        print(f"[running] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:  # one failing part must not hide the others' figures
            self.failed[name] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
            print(f"[failed]  {name}: {self.failed[name]}", flush=True)
            log.debug("%s", traceback.format_exc())
            return None
        result["seconds"] = round(time.perf_counter() - t0, 2)
        self.results[name] = result
        if result.get("problem"):
            self.failed[name] = result["problem"]
        print(
            f"[{'failed' if result.get('problem') else 'done'}]    {name}: {json.dumps(result, default=str)}",
            flush=True,
        )
        return result


# ----------------------------------------------------------------------------- 1. environment
def environment() -> dict:
    """Versions and capabilities that decide what the other checks can run."""
    from serving.devices import cuda_driver_version, cuda_unavailable

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "driver_cuda_version": cuda_driver_version(),
        "driver_reason": cuda_unavailable(),
        "nvidia_driver": nvidia_driver(),
        "libraries": library_versions(),
        "present": {
            name: importlib.util.find_spec(name) is not None
            for name in ("tensorrt", "onnxruntime", "onnx", "onnxscript", "openvino", "kornia", "decord", "ts")
        },
    }
    try:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        env["onnxruntime_providers"] = []
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            nccl=".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None,
        )
    return env


def nvidia_driver() -> str | None:
    """The NVIDIA driver version, from NVML through nvidia-smi where it is installed."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


# ----------------------------------------------------------------------------- 2. training step
def full_size_config(batch: int | None):
    """The paper's configuration (training/config.py defaults), optionally with a smaller batch."""
    from training.config import load_config

    overrides = [] if batch is None else [f"optim.batch_labeled={batch}", f"optim.batch_unlabeled={batch}"]
    return load_config(None, overrides)


def random_batches(cfg, device_seed: int = 0) -> tuple[dict, dict]:
    """A labeled and an unlabeled batch as the loader yields them: (B, 2, 3, T, crop, crop) uint8
    (the clip's frames and the frames after them, for TG)."""
    g = torch.Generator().manual_seed(device_seed)
    spec, o = cfg.input, cfg.optim

    def frames(b: int) -> torch.Tensor:
        return torch.randint(
            0, 256, (b, 2, 3, spec.clip_len, spec.crop_size, spec.crop_size), generator=g, dtype=torch.uint8
        )

    labels = torch.randint(0, NUM_CLASSES, (o.batch_labeled,), generator=g)
    labeled = {"frames": frames(o.batch_labeled), "label": labels}
    unlabeled = {"frames": frames(o.batch_unlabeled), "label": torch.full((o.batch_unlabeled,), -1)}
    return labeled, unlabeled


def one_step(net, cfg, batches: tuple[dict, dict], device: torch.device) -> dict:
    """Loss, gradient norm, time and peak memory of one full-method step (forward and backward)."""
    from training.train import total_loss, training_step

    net.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same augmentation draws and dropout masks in both precisions
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    batch_l, batch_u = batches
    terms, _ = training_step(net, batch_l, batch_u, cfg, use_unlabeled=True, device=device)
    loss = total_loss(terms, cfg)
    loss.backward()
    torch.cuda.synchronize(device)
    grads = [p.grad.float().norm() for p in net.parameters() if p.grad is not None]
    return {
        "loss": float(loss),
        "terms": {k: round(float(v), 5) for k, v in terms.items()},
        "grad_norm": float(torch.stack(grads).norm()),
        "ms": round((time.perf_counter() - t0) * 1e3, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
    }


def training_steps(device: torch.device, batch: int | None) -> dict:
    """fp32 and bf16-autocast steps of the full method from the same weights and batch."""
    import dataclasses

    from training.models import two_stream_from_config

    cfg = full_size_config(batch)
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    net = two_stream_from_config(cfg, NUM_CLASSES).to(device).train()
    batches = random_batches(cfg)
    state = copy.deepcopy(net.state_dict())  # BatchNorm statistics move in train mode: restore between steps
    fp32 = one_step(net, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=False)), batches, device)
    net.load_state_dict(state)
    bf16 = one_step(net, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=True)), batches, device)
    loss_rel = abs(bf16["loss"] - fp32["loss"]) / max(abs(fp32["loss"]), 1e-12)
    grad_rel = abs(bf16["grad_norm"] - fp32["grad_norm"]) / max(fp32["grad_norm"], 1e-12)
    result = {
        "config": {
            "width": m.width,
            "clip_len": cfg.input.clip_len,
            "crop": cfg.input.crop_size,
            "batch_labeled": cfg.optim.batch_labeled,
            "batch_unlabeled": cfg.optim.batch_unlabeled,
        },
        "fp32": fp32,
        "bf16": bf16,
        "loss_rel_diff": round(loss_rel, 5),
        "grad_norm_rel_diff": round(grad_rel, 5),
        "bound": LOSS_RTOL,
    }
    if not loss_rel <= LOSS_RTOL:
        result["problem"] = f"bf16 loss {bf16['loss']:.5g} differs from fp32's {fp32['loss']:.5g} by {loss_rel:.3g}"
    return result


def conv3d_bf16(device: torch.device) -> dict:
    """A stage-1 sized conv3d in bf16 (forward and input gradient) against fp32 on cuDNN."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((4, 64, 8, 56, 56), device=device, generator=g)
    w = torch.randn((64, 64, 3, 3, 3), device=device, generator=g) / (64 * 27) ** 0.5
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the fp32 side is the reference: no TF32
    try:
        xr = x.clone().requires_grad_()
        ref = torch.nn.functional.conv3d(xr, w, padding=1)
        ref.square().sum().backward()
        xb = x.bfloat16().requires_grad_()
        out = torch.nn.functional.conv3d(xb, w.bfloat16(), padding=1)
        out.float().square().sum().backward()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    fwd = float((out.float() - ref).norm() / ref.norm())
    assert xb.grad is not None and xr.grad is not None  # both went through backward()
    bwd = float((xb.grad.float() - xr.grad).norm() / xr.grad.norm())
    result = {
        "forward_rel_err": round(fwd, 5),
        "input_grad_rel_err": round(bwd, 5),
        "bound": CONV_BF16_RTOL,
        "cudnn": torch.backends.cudnn.version(),
    }
    if not (fwd <= CONV_BF16_RTOL and bwd <= CONV_BF16_RTOL):
        result["problem"] = f"bf16 conv3d differs from fp32 by {fwd:.3g} (forward) / {bwd:.3g} (input gradient)"
    return result


# ----------------------------------------------------------------------------- 3. NCCL + SyncBN
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nccl_syncbn_step(device: torch.device) -> dict:
    """One DDP step of the student with SyncBatchNorm in a one-rank NCCL group."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.models import R3D18

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    try:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(R3D18(NUM_CLASSES)).to(device).train()
        ddp = DistributedDataParallel(net, device_ids=[device.index])
        x = torch.randn((2, 3, 8, 224, 224), device=device)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        ddp(x).logsumexp(1).mean().backward()
        torch.cuda.synchronize(device)
        ms = (time.perf_counter() - t0) * 1e3
        synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
        from torch.distributed import constants

        default_timeout = getattr(constants, "default_pg_nccl_timeout", None) or constants.default_pg_timeout
    finally:
        dist.destroy_process_group()
    return {
        "backend": "nccl",
        "sync_batchnorm_layers": synced,
        "step_ms": round(ms, 1),
        "default_collective_timeout_s": default_timeout.total_seconds() if default_timeout else None,
    }


# ----------------------------------------------------------------------------- 4-6. backends
def full_size_student():
    """R3D-18 at the paper's size with its default initialization and perturbed BatchNorm
    statistics and affines (identity ones would let the exporter fold them away)."""
    from training.models import r3d18_from_config

    cfg = full_size_config(None)
    torch.manual_seed(0)
    net = r3d18_from_config(cfg, NUM_CLASSES)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return net.eval(), cfg


def export_artifacts(student, clip_shape: tuple[int, ...], out: Path) -> dict:
    """student.pt2 and model.onnx as `make export` writes them (its own function where the
    dynamo exporter's onnxscript is installed, else TorchScript's exporter for the ONNX file)."""
    from torch.export import Dim

    if importlib.util.find_spec("onnxscript") is not None:
        from export.build import export_student

        export_student(student, clip_shape, out)
        return {"onnx_exporter": "dynamo (as make export)"}
    example = torch.zeros((2, *clip_shape))
    program = torch.export.export(student, (example,), dynamic_shapes={"x": {0: Dim("views", min=1)}})
    torch.export.save(program, out / "student.pt2")
    torch.onnx.export(
        student,
        (example,),
        out / "model.onnx",
        input_names=["clips"],
        output_names=["logits"],
        dynamic_axes={"clips": {0: "views"}, "logits": {0: "views"}},
        opset_version=18,
        dynamo=False,
    )
    return {"onnx_exporter": "torchscript (onnxscript is not installed)"}


def manifest_for(out: Path, cfg, tensorrt: dict) -> dict:
    """The parts of an export manifest `serving.backends` reads, for the artifacts in `out`."""
    from serving.manifest import sha256_of

    files = ["model.onnx", "student.pt2"] + ([tensorrt["file"]] if tensorrt.get("file") else [])
    return {
        "input": cfg.input.to_dict(),
        "onnx": {"file": "model.onnx", "input": "clips", "output": "logits"},
        "torch": {"file": "student.pt2"},
        "tensorrt": tensorrt,
        "openvino": {"offered": [], "reason": "not built"},
        "sha256": {name: sha256_of(out / name) for name in files},
        "parity": {},
    }


def compare(ref: np.ndarray, out: np.ndarray, abs_tol: float) -> dict:
    """Max |difference| against the reference, as the export's parity gate bounds it."""
    diff = float(np.abs(out.astype(np.float64) - ref).max())
    bound = abs_tol * max(1.0, float(np.abs(ref).max()))
    top1 = float((out.argmax(1) == ref.argmax(1)).mean())
    return {"max_abs_diff": diff, "bound": bound, "top1_agreement": top1, "within": diff <= bound}


def backend_parity(out: Path, manifest: dict, views: np.ndarray, ref: np.ndarray) -> dict:
    """Each CUDA backend the server has, TF32 off (served) and on, against the CPU reference."""
    import onnxruntime as ort

    from export.parity import CUDA_FP32_BOUND, TENSORRT_TF32_BOUND, onnx_backend, onnx_session, tensorrt_bound
    from serving.backends import OnnxRuntimeBackend, TorchExportBackend, onnxruntime_cuda_unavailable, torch_tf32
    from serving.devices import cuda_unavailable

    result: dict[str, Any] = {
        "onnxruntime-cpu": compare(ref, onnx_backend(onnx_session(out / "model.onnx"))(views), CUDA_FP32_BOUND.abs_tol)
    }
    for tf32 in (False, True):
        bound = (TENSORRT_TF32_BOUND if tf32 else CUDA_FP32_BOUND).abs_tol
        backend = TorchExportBackend(out / "student.pt2", tf32=tf32)
        result[backend.name] = compare(ref, backend(views), bound)
        reason = onnxruntime_cuda_unavailable(ort.get_available_providers(), cuda_unavailable())
        if reason is None:
            ort_backend = OnnxRuntimeBackend(out / "model.onnx", input_name="clips", output_name="logits", tf32=tf32)
            result[ort_backend.name] = (
                compare(ref, ort_backend(views), bound)
                if ort_backend.device != "cpu"
                else {"skipped": ort_backend.cuda_reason}
            )
        else:
            result["onnxruntime-cuda" + ("-tf32" if tf32 else "")] = {"skipped": reason}
    torch_tf32(False)  # back to what the server runs
    if manifest["tensorrt"].get("file"):
        from serving.backends import TensorRTBackend

        record = manifest["tensorrt"]
        trt_backend = TensorRTBackend(
            out / record["file"],
            input_name="clips",
            output_name="logits",
            max_views=record["max_views"],
            precision=record["precision"],
        )
        result[trt_backend.name] = compare(ref, trt_backend(views), tensorrt_bound(record["precision"]).abs_tol)
    problems = [name for name, r in result.items() if r.get("within") is False and "tf32" not in name]
    if problems:
        result["problem"] = f"outside the fp32 parity bound: {', '.join(problems)}"
    return result


def tensorrt_record(out: Path) -> dict:
    """An fp16 engine where tensorrt imports (the export's default), else why not."""
    from export import trt_engine

    reason = trt_engine.unavailable_reason()
    if reason:
        return {"file": None, "reason": reason}
    try:
        return trt_engine.build_engine(
            out / "model.onnx", out / "model.plan", precision="fp16", opt_views=LATENCY_VIEWS, max_views=LATENCY_VIEWS
        )
    except trt_engine.EngineBuildError as exc:
        return {"file": None, "reason": str(exc)}


def record_parity(manifest: dict, parity: dict) -> None:
    """What was compared here, under the manifest keys the server reads (`auto` then logs a
    warning only for a backend this run did not compare)."""
    from serving.backends import PARITY_KEYS
    from serving.devices import cuda_device_name

    manifest["parity"]["machine"] = {"gpu": cuda_device_name(0)}
    for name, report in parity.items():
        if isinstance(report, dict) and report.get("within"):
            manifest["parity"][PARITY_KEYS.get(name, name)] = report
        if name.startswith("tensorrt") and isinstance(report, dict) and report.get("within"):
            manifest["parity"]["tensorrt"] = report


def auto_choice(out: Path, manifest: dict) -> dict:
    """What `auto` serves with here, its timings, and the GPU memory left after it chose."""
    from serving.backends import select_backend

    torch.cuda.empty_cache()
    before = torch.cuda.mem_get_info()
    chosen = select_backend(out, manifest, prefer="auto", probe_views=LATENCY_VIEWS)
    free, total = torch.cuda.mem_get_info()
    result = {
        "chosen": chosen.name,
        "device": chosen.device,
        "timings_ms": chosen.timings,
        "torch_reserved_mib": round(torch.cuda.memory_reserved() / 2**20, 1),
        "device_used_mib": round((total - free) / 2**20, 1),
        "device_used_before_mib": round((before[1] - before[0]) / 2**20, 1),
    }
    del chosen
    return result


def latency(out: Path, manifest: dict, views: np.ndarray) -> dict:
    """Median ms of a 30-view call per backend (5 calls after a warm-up), and ONNX Runtime CUDA's
    first call per batch size in a fresh session."""
    from serving.backends import BackendError, OnnxRuntimeBackend, load_backend

    result: dict[str, Any] = {}
    for kind in ("tensorrt", "onnxruntime", "torch"):
        try:
            backend = load_backend(kind, out, manifest, max_views=LATENCY_VIEWS)
        except BackendError as exc:
            result[kind] = {"skipped": str(exc)}
            continue
        backend(views)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            backend(views)
            times.append((time.perf_counter() - t0) * 1e3)
        result[backend.name] = {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2)}
        del backend
    fresh = OnnxRuntimeBackend(out / "model.onnx", input_name="clips", output_name="logits")
    if fresh.device != "cpu":
        first: dict[str, dict[str, float]] = {}
        for n in (1, 3, LATENCY_VIEWS):
            calls = []
            for _ in range(2):
                t0 = time.perf_counter()
                fresh(views[:n])
                calls.append(round((time.perf_counter() - t0) * 1e3, 1))
            first[f"{n}_views"] = {"first_ms": calls[0], "second_ms": calls[1]}
        result["onnxruntime-cuda_first_calls"] = first
    return result


def backend_checks(check: Check) -> None:
    """4-6: export at full size, parity of the CUDA backends, auto, latency."""
    student, cfg = full_size_student()
    spec = cfg.input
    clip_shape = (3, spec.clip_len, spec.test_crop, spec.test_crop)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        out = Path(tmp)
        exported = check.run("export (full size)", lambda: export_artifacts(student, clip_shape, out))
        if exported is None:
            return
        trt = tensorrt_record(out)
        if not trt.get("file"):
            check.skip("tensorrt", trt["reason"])
        manifest = manifest_for(out, cfg, trt)
        views = np.random.default_rng(0).standard_normal((LATENCY_VIEWS, *clip_shape)).astype(np.float32)
        with torch.inference_mode():
            ref = student(torch.from_numpy(views[:PARITY_VIEWS])).double().numpy()  # the CPU reference
        parity = check.run(
            f"backends vs the CPU reference ({PARITY_VIEWS} full-size views)",
            lambda: backend_parity(out, manifest, views[:PARITY_VIEWS], ref),
        )
        record_parity(manifest, parity or {})
        check.run("auto's choice", lambda: auto_choice(out, manifest))
        check.run(f"latency ({LATENCY_VIEWS} views)", lambda: latency(out, manifest, views))


# ----------------------------------------------------------------------------- results
def write_results(report: dict, results_dir: Path) -> Path:
    """gpu-check-<gpu>-<date>.json and a short .md beside it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-check-{machine_slug(report['machine'], 'cuda')}-{dt.date.today().isoformat()}"
    path = results_dir / f"{stem}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    lines = [
        f"# gpu-check on {report['environment'].get('gpu')}",
        "",
        f"torch {report['environment']['torch']} (CUDA {report['environment']['torch_cuda']}), cuDNN "
        f"{report['environment'].get('cudnn')}, driver {report['environment'].get('nvidia_driver')}",
        "",
        "| check | result |",
        "| --- | --- |",
    ]
    for name in report["results"]:
        lines.append(f"| {name} | {'FAILED: ' + report['failed'][name] if name in report['failed'] else 'ok'} |")
    for name, reason in {**report["failed"], **report["skipped"]}.items():
        if name not in report["results"]:
            lines.append(f"| {name} | {'FAILED: ' if name in report['failed'] else 'skipped: '}{reason} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the results file goes")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="clips per labeled and per unlabeled batch in the training step (default: the paper's 5)",
    )
    p.add_argument("--no-write", action="store_true", help="print only, write no results file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    check = Check()
    env = environment()
    print(json.dumps({"environment": env}, indent=2, default=str), flush=True)
    if not torch.cuda.is_available():
        why = "torch has no CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
        for name in (
            "training step bf16 vs fp32 (full size)",
            "conv3d bf16 vs fp32 (cuDNN)",
            "NCCL + SyncBN step",
            "export (full size)",
            "CUDA backends vs the CPU reference",
            "auto's choice",
            f"latency ({LATENCY_VIEWS} views)",
        ):
            check.skip(name, why)
        print(f"no GPU here ({why}): everything past the environment was skipped; no results file written")
        return 0

    device = torch.device("cuda:0")
    if importlib.util.find_spec("kornia") is None:
        check.skip("training step bf16 vs fp32 (full size)", "kornia is not installed (the step's augmentation)")
    else:
        check.run("training step bf16 vs fp32 (full size)", lambda: training_steps(device, args.batch))
        torch.cuda.empty_cache()
    check.run("conv3d bf16 vs fp32 (cuDNN)", lambda: conv3d_bf16(device))
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        check.skip("NCCL + SyncBN step", "this torch has no NCCL")
    else:
        check.run("NCCL + SyncBN step", lambda: nccl_syncbn_step(device))
    torch.cuda.empty_cache()
    backend_checks(check)

    report = {
        "measured_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": describe_machine(),
        "environment": env,
        "results": check.results,
        "skipped": check.skipped,
        "failed": check.failed,
    }
    if not args.no_write:
        print(f"written to {write_results(report, args.results_dir)}")
    print(
        f"{len(check.results)} checks ran, {len(check.skipped)} skipped, {len(check.failed)} failed"
        + (f": {', '.join(check.failed)}" if check.failed else "")
    )
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
