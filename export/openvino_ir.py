"""OpenVINO IR from the exported ONNX file, and the parity gate of each inference precision.

The server loads an IR (model.xml: the graph, model.bin: the weights) rather than model.onnx:
reading ONNX runs OpenVINO's frontend and conversion at every worker start, with whatever
OpenVINO is installed there, while the IR is that conversion done once here, by the version the
manifest records; so the graph the parity gate measured is the graph the server compiles, and the
sha256 the server checks covers it. fp32 and bf16 are one IR compiled with two precision hints;
a quantized IR would be one more precision with its own files.

openvino is a dependency but imported lazily, and `unavailable_reason` says in one line why an IR
cannot be written here (like TensorRT's engine, the export goes on without it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from export.parity import Backend, ParityError, check_parity
from serving.backends import OPENVINO_PRECISIONS, OpenVinoBackend, import_openvino, openvino_cpu_precisions

GRAPH_FILE, WEIGHTS_FILE = "model.xml", "model.bin"


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


def write_ir(onnx_path: Path, out_dir: Path) -> dict:
    """Convert the ONNX file into an IR in `out_dir`; returns the manifest's "openvino" record with
    each precision this CPU runs marked "measuring" (`gate` decides) and the others "unavailable"."""
    ov = import_openvino()
    convert_to_ir(onnx_path, out_dir)
    here = openvino_cpu_precisions()
    precisions = {}
    for precision in OPENVINO_PRECISIONS:
        record = {"graph": GRAPH_FILE, "weights": WEIGHTS_FILE, "status": "measuring"}
        if precision not in here:
            record.update(status="unavailable", reason=f"this CPU does not run {precision} natively (OpenVINO's "
                                                       f"OPTIMIZATION_CAPABILITIES lacks {precision.upper()})")
        precisions[precision] = record
    return {"files": [GRAPH_FILE, WEIGHTS_FILE], "openvino_version": ov.get_version(), "converted_from": onnx_path.name,
            "cpu": ov.Core().get_property("CPU", "FULL_DEVICE_NAME"), "precisions": precisions, "offered": [],
            "reason": None}


def precision_runners(export_dir: Path, record: dict, *, max_views: int) -> dict[str, Backend]:
    """A runner on views of any number for each precision being measured, through the server's
    own OpenVINO backend (the parity check exercises the code that serves)."""
    runners = {}
    for precision, entry in record["precisions"].items():
        if entry["status"] != "measuring":
            continue
        backend = OpenVinoBackend(export_dir / entry["graph"], export_dir / entry["weights"], precision=precision,
                                  max_views=max_views)
        runners[precision] = chunked(backend, max_views)
    return runners


def chunked(backend, max_views: int) -> Backend:
    """Views of any number through a backend that takes at most `max_views` per call."""

    def run(views: np.ndarray) -> np.ndarray:
        return np.concatenate([backend(views[i : i + max_views]) for i in range(0, len(views), max_views)])

    return run


def gate(record: dict, reports: dict[str, dict], export_dir: Path) -> dict:
    """Mark each measured precision "passed" or "refused" (with the broken bound) from its parity
    report, and list the passed ones, fastest first, as "offered": the only ones a server loads.
    When none passed, the IR files are deleted and the record says why."""
    for precision, report in reports.items():
        entry = record["precisions"][precision]
        try:
            check_parity(f"{precision} parity", report)
            entry["status"] = "passed"
        except ParityError as exc:
            entry.update(status="refused", reason=str(exc))
    record["offered"] = [p for p in OPENVINO_PRECISIONS if record["precisions"][p]["status"] == "passed"]
    if not record["offered"]:
        for name in record["files"]:
            (export_dir / name).unlink()
        reasons = "; ".join(f"{p}: {e.get('reason', e['status'])}" for p, e in record["precisions"].items())
        record.update(files=[], reason=f"no precision passed its parity gate ({reasons})")
    return record


def skipped(reason: str) -> dict:
    """The "openvino" record of an export without an IR."""
    return {"files": [], "precisions": {}, "offered": [], "reason": reason}
