"""OpenVINO IR from the exported ONNX file, and the parity gate of each inference precision.

The server loads an IR (model.xml: the graph, model.bin: the weights) rather than model.onnx:
reading ONNX runs OpenVINO's frontend and conversion at every worker start, with whatever
OpenVINO is installed there, while the IR is that conversion done once here, by the version the
manifest records; so the graph the parity gate measured is the graph the server compiles, and the
sha256 the server checks covers it. fp32 and bf16 are one IR compiled with two precision hints;
int8 is a second IR (model-int8.xml/.bin): NNCF's post-training quantization of the first,
calibrated on views of the run's own training videos (activation ranges from the clips the
model was trained on, not from a generic set), compiled with the fp32 hint for what stays in
floating point. Measured at full size (R3D-18, 8 x 224^2, 30 views, 2 threads, an Intel Xeon
with AMX-INT8/BF16 and AVX-512 VNNI/BF16): int8 0.62 s, bf16 1.01 s per request (1.6x); not
measured on a CPU without AMX (the issue's AMD EPYC), where `auto` still times it against the
others. Each precision must still pass its own parity gate.

openvino is a dependency but imported lazily, and `unavailable_reason` says in one line why an IR
cannot be written here (like TensorRT's engine, the export goes on without it); likewise nncf for
the int8 IR.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.parity import Backend, ParityError, check_parity, chunked, decoded_views
from serving.backends import OPENVINO_PRECISIONS, OpenVinoBackend, import_openvino, openvino_cpu_precisions

GRAPH_FILE, WEIGHTS_FILE = "model.xml", "model.bin"
INT8_GRAPH_FILE, INT8_WEIGHTS_FILE = "model-int8.xml", "model-int8.bin"
INT8_CALIBRATION_VIEWS = 300  # NNCF's default subset size: 100 training videos x the 3 crops of their centre clip


def unavailable_reason() -> str | None:
    """None when an IR can be written and run here, else why not (one line)."""
    try:
        import_openvino()
    except ImportError:
        return "openvino is not installed"
    except Exception as exc:  # a broken install fails while loading its native libraries
        return f"openvino does not load ({str(exc).splitlines()[0][:160]})"
    return None


def convert_to_ir(onnx_path: Path, out_dir: Path) -> tuple[Path, Path]:
    """model.xml + model.bin in `out_dir`, converted from the ONNX file -> their paths.

    compress_to_fp16=False: save_model would otherwise store the weights in fp16, and the fp32
    precision must be the exported model itself (bf16 is chosen when compiling, not stored)."""
    ov = import_openvino()
    ov.save_model(ov.convert_model(str(onnx_path)), str(out_dir / GRAPH_FILE), compress_to_fp16=False)
    return out_dir / GRAPH_FILE, out_dir / WEIGHTS_FILE


def nncf_unavailable() -> str | None:
    """None when NNCF can quantize here, else why not."""
    if importlib.util.find_spec("nncf") is None:
        return "nncf is not installed (pip install nncf): no int8 IR"
    return None


def write_ir(onnx_path: Path, out_dir: Path) -> dict:
    """Convert the ONNX file into an IR in `out_dir`; returns the manifest's "openvino" record with
    each precision this CPU runs marked "measuring" (int8 once `quantize_int8` wrote its IR; `gate`
    decides) and the others "unavailable"."""
    ov = import_openvino()
    convert_to_ir(onnx_path, out_dir)
    here = openvino_cpu_precisions()
    precisions = {}
    for precision in OPENVINO_PRECISIONS:
        record: dict[str, Any] = {"graph": GRAPH_FILE, "weights": WEIGHTS_FILE, "status": "measuring"}
        if precision == "int8":
            record.update(graph=INT8_GRAPH_FILE, weights=INT8_WEIGHTS_FILE, status="calibrating")
        if precision not in here:
            record.update(
                status="unavailable",
                reason=f"this CPU does not run {precision} natively (OpenVINO's "
                f"OPTIMIZATION_CAPABILITIES lacks {precision.upper()})",
            )
        elif precision == "int8" and nncf_unavailable():
            record.update(status="unavailable", reason=nncf_unavailable())
        precisions[precision] = record
    return {
        "files": [GRAPH_FILE, WEIGHTS_FILE],
        "openvino_version": ov.get_version(),
        "converted_from": onnx_path.name,
        "cpu": ov.Core().get_property("CPU", "FULL_DEVICE_NAME"),
        "precisions": precisions,
        "offered": [],
        "reason": None,
    }


def training_views(items: list, root: Path, spec, *, views: int = INT8_CALIBRATION_VIEWS) -> Iterator[np.ndarray]:
    """Single normalized test views (3, T, S, S) of the run's training videos to calibrate int8 on:
    the crops of the centre clip of videos spread over the list, `views` in all (decoded lazily,
    only when an int8 IR is made)."""
    from export.adaptive import spread

    for _, x in decoded_views(spread(items, max(1, views // spec.test_crops)), root, spec, clips=1):
        yield from x


def quantize_int8(out_dir: Path, record: dict, views: Iterable[np.ndarray]) -> dict:
    """The int8 IR: NNCF post-training quantization of model.xml, calibrated on `views` (single
    normalized views (3, T, S, S) from the run's training videos); marks int8 "measuring" with the
    number of views used, or "unavailable" when there were none."""
    entry = record["precisions"]["int8"]
    if entry["status"] != "calibrating":
        return record
    import nncf  # lazily: a large import, needed only here

    ov = import_openvino()
    samples = [np.ascontiguousarray(v[None], dtype=np.float32) for v in views]  # NNCF: one view per item
    if not samples:
        entry.update(status="unavailable", reason="no training clip could be decoded to calibrate int8 on")
        return record
    model = ov.Core().read_model(str(out_dir / GRAPH_FILE), str(out_dir / WEIGHTS_FILE))
    # the default (performance) preset: symmetric int8 weights and activations, what the CPU's int8 kernels run
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    ov.save_model(quantized, str(out_dir / INT8_GRAPH_FILE), compress_to_fp16=False)
    record["files"] += [INT8_GRAPH_FILE, INT8_WEIGHTS_FILE]
    entry.update(status="measuring", calibration_views=len(samples), nncf_version=nncf.__version__)
    return record


def precision_runners(export_dir: Path, record: dict, *, max_views: int) -> dict[str, Backend]:
    """A runner on views of any number for each precision being measured, through the server's
    own OpenVINO backend (the parity check exercises the code that serves)."""
    runners = {}
    for precision, entry in record["precisions"].items():
        if entry["status"] != "measuring":
            continue
        backend = OpenVinoBackend(
            export_dir / entry["graph"], export_dir / entry["weights"], precision=precision, max_views=max_views
        )
        runners[precision] = chunked(backend, max_views)
    return runners


def gate(record: dict, reports: dict[str, dict], export_dir: Path) -> dict:
    """Mark each measured precision "passed" or "refused" (with the broken bound) from its parity
    report, and list the passed ones, fastest first, as "offered": the only ones a server loads.
    The files no offered precision uses are deleted (the int8 IR when int8 was refused, everything
    when none passed, and then the record says why)."""
    for precision, report in reports.items():
        entry = record["precisions"][precision]
        try:
            check_parity(f"{precision} parity", report)
            entry["status"] = "passed"
        except ParityError as exc:
            entry.update(status="refused", reason=str(exc))
    record["offered"] = [p for p in OPENVINO_PRECISIONS if record["precisions"][p]["status"] == "passed"]
    kept = {
        name
        for p in record["offered"]
        for name in (record["precisions"][p]["graph"], record["precisions"][p]["weights"])
    }
    for name in record["files"]:
        if name not in kept:
            (export_dir / name).unlink()
    record["files"] = [name for name in record["files"] if name in kept]
    if not record["offered"]:
        reasons = "; ".join(f"{p}: {e.get('reason', e['status'])}" for p, e in record["precisions"].items())
        record["reason"] = f"no precision passed its parity gate ({reasons})"
    return record


def skipped(reason: str) -> dict:
    """The "openvino" record of an export without an IR."""
    return {"files": [], "precisions": {}, "offered": [], "reason": reason}
