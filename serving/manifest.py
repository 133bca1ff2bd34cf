"""`manifest.json`: what an export folder holds and how to read it; export writes it, serving reads it.

One module for what both sides share: the format version, the sha256 each artifact is listed
with, the rule a model name follows (it becomes part of the URL), and the reading that refuses
a manifest of another format. The server reads it from the installed `serving` package (the
archive's handler imports `serving.core`, which imports this module).

Only the standard library at import: `python -m serving stop | health | key` read the name rule
without loading torch; the input spec (training.views, which imports torch) is read on demand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.views import InputSpec

FORMAT_VERSION = 1  # a server refuses any other (load_manifest)
FILE_NAME = "manifest.json"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # usable in /predictions/<name> URLs


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


def load_manifest(export_dir: Path) -> dict:
    """The manifest of `export_dir`, refused when it is missing or of another format version."""
    path = Path(export_dir) / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {FILE_NAME} in {export_dir} (make export writes it)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {manifest.get('format_version')!r} "
                         f"(expected {FORMAT_VERSION})")
    return manifest
