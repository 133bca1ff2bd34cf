"""`manifest.json`: what an export folder holds and how to read it; export writes it, serving reads it.

One module for what both sides share: the format version, the keys and their order (`Manifest`,
the schema export fills in), the sha256 each artifact is listed with, the rule a model name
follows (it becomes part of the URL), and the reading that refuses a manifest of another format.
The server reads it from the installed `serving` package (the archive's handler imports
`serving.core`, which imports this module).

Only the standard library at import: `python -m serving stop | health | key` read the name rule
without loading torch; the input spec (training.views, which imports torch) is read on demand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.views import InputSpec

FORMAT_VERSION = 1  # a server refuses any other (load_manifest)
FILE_NAME = "manifest.json"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # usable in /predictions/<name> URLs


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(kw_only=True)
class Manifest:
    """The manifest's keys, in the order they are written."""

    format_version: int = FORMAT_VERSION
    model_name: str  # MODEL_NAME_PATTERN: TorchServe's /predictions/<name>
    model_version: str  # "<run folder>-epoch<N>"
    created_utc: str = dataclasses.field(default_factory=utc_timestamp)
    classes: list[str]  # index -> label, as the logits are ordered
    input: dict  # input_record: the InputSpec's fields and the tensor's layout
    architecture: dict  # the student's constructor arguments
    params: int
    flops_per_view: int
    zero_added_cost: dict  # parameters and FLOPs of the student vs a plain R3D-18
    onnx: dict  # file, opset, input and output names, producer
    torch: dict  # file (the ExportedProgram) and the torch version that wrote it
    tensorrt: dict  # file (None: no engine) with its precision and GPU, or the reason there is none
    openvino: dict  # files, each precision's IR and gate status, the precisions offered
    sha256: dict[str, str]  # artifact name -> sha256_of(artifact); a server checks it before loading
    training: dict  # run folder, epoch, metrics and resolved config
    parity: dict  # each backend's report against the PyTorch student, and the machine it ran on
    adaptive_views: dict  # the calibrated stopping rule, or the reason there is none

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def input_record(spec: dict) -> dict:
    """The manifest's "input": the InputSpec's fields (`spec`) and how the tensor is laid out."""
    return {**spec, "channel_order": "RGB", "layout": "NCTHW", "dtype": "float32", "value_range": [0, 255]}


def input_spec_from_manifest(record: dict) -> InputSpec:
    """The manifest's "input" record back into an InputSpec (the extra descriptive keys dropped)."""
    from training.views import InputSpec  # here: it loads torch, which the name rule and hashing do not need

    names = {f.name for f in dataclasses.fields(InputSpec)}
    return InputSpec(**{k: v for k, v in record.items() if k in names})


def spec_from_manifest(manifest: dict) -> InputSpec:
    """The InputSpec the model was trained and exported with (extra descriptive keys ignored)."""
    return input_spec_from_manifest(manifest["input"])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_digests(export_dir: Path, names: list[str]) -> dict[str, str]:
    """The manifest's "sha256": each artifact (a name inside `export_dir`) and its digest."""
    return {name: sha256_of(export_dir / name) for name in names}


def write_manifest(export_dir: Path, manifest: Manifest) -> Path:
    path = export_dir / FILE_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2))
    return path


def load_manifest(export_dir: Path) -> dict:
    """The manifest of `export_dir`, refused when it is missing or of another format version."""
    path = Path(export_dir) / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {FILE_NAME} in {export_dir} (make export writes it)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: unsupported format_version {manifest.get('format_version')!r} (expected {FORMAT_VERSION})"
        )
    return manifest
