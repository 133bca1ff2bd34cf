"""Shared fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.tinyrun import train_tiny_run
from tests.videofiles import frame_coded, write_video

torch.set_num_threads(2)


@pytest.fixture
def coded_video(tmp_path) -> Path:
    return write_video(tmp_path / "coded.mp4", frame_coded(60))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run (last.pt, metrics.json, its synthetic data) shared by the whole
    session; treat it as read-only."""
    base = tmp_path_factory.mktemp("tiny")
    return train_tiny_run(base / "run", base / "data")


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with `RUN/export/` written by export_run (archive included),
    made once per session; read-only like tiny_run."""
    from export.build import export_run

    run = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export", "serve", "logs"))
    export_run(run, tensorrt="auto")
    return run
