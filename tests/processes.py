"""What a test checks after stopping a server: the processes a run folder still has and the
ports still listening on loopback (both must be none)."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil


def processes_of(run: Path) -> list[str]:
    """Processes whose command line or working directory lies in the run folder (the TorchServe
    launcher, its Java frontend and workers all do), as 'pid command' lines."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if str(run) in cmdline or (p.info["cwd"] or "").startswith(str(run)):
            found.append(f"{p.info['pid']} {cmdline[:200]}")
    return found


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
