"""The TorchServe model archive (.mar): the serving handler plus the exported artifacts.

The handler imports the installed `serving` package (its core, backends and the manifest's
reader, `serving.manifest`), so the archive carries only the handler file and the artifacts;
torch-model-archiver is run as a subprocess, as its CLI is its API.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path


def serving_handler() -> Path | None:
    """serving/handler.py of the installed `serving` package, or None where it does not exist."""
    spec = importlib.util.find_spec("serving")
    if spec is None or not spec.submodule_search_locations:
        return None
    handler = Path(list(spec.submodule_search_locations)[0]) / "handler.py"
    return handler if handler.is_file() else None


def build_archive(export_dir: Path, *, handler: Path, model_name: str, version: str, files: list[str]) -> Path:
    """Write `export_dir/model.mar` holding `handler` and `files` (names inside `export_dir`)."""
    extra = ",".join(str(export_dir / name) for name in files)
    cmd = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        model_name,
        "--version",
        version,
        "--handler",
        str(handler),
        "--extra-files",
        extra,
        "--export-path",
        str(export_dir),
        "--archive-format",
        "default",
        "--force",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"torch-model-archiver failed (exit {proc.returncode}): {' | '.join(tail)}")
    out = export_dir / "model.mar"
    (export_dir / f"{model_name}.mar").replace(out)
    return out
