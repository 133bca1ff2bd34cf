"""The servers `python -m serving start` launched: each is recorded in a state file named after
its inference port (so that `stop`, `health` and `key` find it without being told the run), and
its processes (launcher, Java frontend, Python workers) are found by the session `start` gave
them. Stopping a recorded server ends that process tree and removes its record and keys."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psutil

from serving.addresses import HOST
from serving.errors import ServeError

TORCHSERVE_MARKS = ("torchserve", "org.pytorch.serve.ModelServer", "model_service_worker")


def state_path(inference_port: int) -> Path:
    """Where a started server is recorded, so that `stop` finds it without being told the run."""
    return Path(tempfile.gettempdir()) / "tg-action-serve" / f"{inference_port}.json"


def recorded_state(inference_port: int) -> dict | None:
    """The state `start` recorded for `inference_port`, or None when there is none."""
    state_file = state_path(inference_port)
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    state.setdefault("host", HOST)  # recorded before --host existed
    state.setdefault("token_expiration_min", 60)  # before it was recorded: TorchServe's default
    return state


def record_server(pid: int, **details: object) -> tuple[Path, dict]:
    """Record the server whose launcher (and session leader) is `pid`, with `details` (run, ports,
    addresses, key file, ...), in the state file of its inference port; returns (state file, state)."""
    state = {"pid": pid, "create_time": psutil.Process(pid).create_time(), **details}
    state_file = state_path(state["ports"]["inference"])
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state, indent=2))
    return state_file, state


def no_server(inference_port: int) -> str:
    return f"no server started by `python -m serving start` is recorded for port {inference_port}"


def server_processes(state: dict) -> list[psutil.Process]:
    """The processes of the session `start` created for the server recorded in `state`: the
    launcher, the Java frontend and its Python workers (found by process group, so that a
    frontend whose launcher died is found too)."""
    found = []
    for p in psutil.process_iter(["create_time"]):
        try:
            if os.getpgid(p.pid) != state["pid"] or p.info["create_time"] < state["create_time"] - 1.0:
                continue
            if any(mark in " ".join(p.cmdline()) for mark in TORCHSERVE_MARKS):  # not a reused process id
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def end_processes(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Stop the Java frontend first (it shuts its workers down), then whatever is left:
    SIGTERM, then SIGKILL after `timeout`. Returns the processes still alive (none, normally)."""
    frontend = [p for p in alive(procs) if "org.pytorch.serve.ModelServer" in " ".join(_cmdline(p))]
    for group in (frontend, procs):
        for p in alive(group):
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive(group), timeout=timeout)
    for p in alive(procs):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive(procs), timeout=10)
    return alive(procs)


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def stop_recorded(state_file: Path, timeout: float = 60.0) -> int:
    """Stop the server recorded in `state_file`; returns how many processes were ended."""
    state = json.loads(state_file.read_text())
    procs = server_processes(state)
    running = alive(procs)
    left = end_processes(procs, timeout)
    if left:
        raise ServeError("these TorchServe processes did not stop: " + ", ".join(str(p.pid) for p in left))
    if state.get("key_file"):
        Path(state["key_file"]).unlink(missing_ok=True)  # as `torchserve --stop` does: the keys die with the server
    state_file.unlink(missing_ok=True)
    return len(running)
