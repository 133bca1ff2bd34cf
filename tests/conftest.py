"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.videofiles import frame_coded, write_video

torch.set_num_threads(2)


@pytest.fixture
def coded_video(tmp_path) -> Path:
    return write_video(tmp_path / "coded.mp4", frame_coded(60))
