"""Shared fixtures."""
from __future__ import annotations

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
