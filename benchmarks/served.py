"""What the serving benchmarks need around the real server: a TorchServe started and stopped
with `python -m serving` on free loopback ports, an HTTP client that sends the server's
inference key, and a run folder that serves R3D-18 at the paper's width.

The full-size served model: no full-size run is trained on a CPU, so `full_size_run` writes a
run folder in the training checkpoint format (config, classes, epoch, model) holding the
initial weights of `TwoStreamNet(...).student` for the UCF-101 config, with UCF-sized synthetic
videos as its validation set, and exports it with `export.build.export_run` like any run.
Latency does not depend on the weight values; the answers of this model mean nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import torch

HOST = "127.0.0.1"
PORT_NAMES = ("inference", "management", "metrics", "grpc-inference", "grpc-management")


class ServerError(RuntimeError):
    """TorchServe did not start or stop; the message carries its output."""


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on the loopback interface right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@contextlib.contextmanager
def torchserve(
    run: Path,
    *,
    model_name: str = "action",
    workers: int = 1,
    batch_size: int = 1,
    timeout: float = 240.0,
    backend: str = "auto",
):
    """A TorchServe serving RUN/export/model.mar on free ports (`python -m serving start`, with
    `--backend`); yields (inference port, start seconds) and stops the server (`python -m serving stop`)."""
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    cmd = [
        sys.executable,
        "-m",
        "serving",
        "start",
        "--run",
        str(run),
        "--model-name",
        model_name,
        "--workers",
        str(workers),
        "--batch-size",
        str(batch_size),
        "--timeout",
        str(timeout),
        "--backend",
        backend,
    ]
    for name, port in ports.items():
        cmd += [f"--{name}-port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
    started = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ServerError(f"`python -m serving start` failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    try:
        yield ports["inference"], started
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "serving", "stop", "--inference-port", str(ports["inference"])],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if stop.returncode != 0:
            raise ServerError(f"`python -m serving stop` failed (exit {stop.returncode}):\n{stop.stderr[-2000:]}")


def inference_key(port: int) -> str:
    """The inference key of the server `torchserve` started on `port` (token authorization is
    always on), renewed first when it is about to expire: a long benchmark outlives a key."""
    from serving.server_records import recorded_state
    from serving.tokens import current_key

    state = recorded_state(port)
    if state is None:
        raise ServerError(f"no server started by `python -m serving start` is recorded for port {port}")
    # token authorization is always on for the servers `serving start` records: a key exists
    return cast(str, current_key(state, "inference"))


class Client:
    """One keep-alive HTTP connection posting a video as the raw body (what `curl
    --data-binary` sends) with the server's inference key; options travel as X-Clips / X-Crops
    (and X-Views) headers."""

    def __init__(self, port: int, model_name: str = "action"):
        self.port = port
        self.conn = http.client.HTTPConnection(HOST, port, timeout=600)
        self.path = f"/predictions/{model_name}"

    def predict(self, video: bytes, *, clips: int, crops: int, views: str = "all") -> tuple[int, dict, float]:
        """(status, JSON body, seconds from sending the request to reading the whole answer; the
        key is looked up before that). `views`: "all" or "adaptive"."""
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Clips": str(clips),
            "X-Crops": str(crops),
            "X-Views": views,
            "Authorization": f"Bearer {inference_key(self.port)}",
        }
        t0 = time.perf_counter()
        self.conn.request("POST", self.path, body=video, headers=headers)
        response = self.conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - t0
        return response.status, json.loads(body), seconds

    def close(self) -> None:
        self.conn.close()


def concurrent_requests(
    port: int, video: bytes, *, clips: int, crops: int, concurrency: int, requests: int
) -> tuple[list[float], float, list[int]]:
    """`requests` requests from `concurrency` clients at once, each with its own connection
    sending its next request when the previous answer arrived.
    Returns (per-request seconds, wall seconds of the whole batch, statuses)."""
    share = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    def client_loop(count: int) -> list[tuple[int, float]]:
        client = Client(port)
        try:
            return [client.predict(video, clips=clips, crops=crops)[::2] for _ in range(count)]
        finally:
            client.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for part in pool.map(client_loop, share) for r in part]
    wall = time.perf_counter() - t0
    return [seconds for _, seconds in results], wall, [status for status, _ in results]


def full_size_run(folder: Path, videos: list[Path], *, config_file: Path, clips: int, crops: int) -> Path:
    """A run folder serving R3D-18 at the paper's width (initial weights), exported with the
    export stage: see the module docstring. `clips` x `crops` become the manifest's default
    views. Returns the run folder."""
    from export.build import export_run
    from training.config import load_config
    from training.models import two_stream_from_config
    from training.train import model_state

    data, run = folder / "data", folder / "run"
    videos = sorted(videos, key=lambda p: p.stem)  # the folder layout's classes are sorted by name
    classes = [p.stem for p in videos]
    for split in ("labeled", "val"):
        for cls, video in zip(classes, videos, strict=True):
            (data / split / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(video, data / split / cls / video.name)
    cfg = load_config(
        config_file,
        [f"data.root={data}", "data.format=folder", f"input.test_clips={clips}", f"input.test_crops={crops}"],
    )
    torch.manual_seed(cfg.train.seed)
    net = two_stream_from_config(cfg, len(classes), streams="rgb", projection=False)
    run.mkdir(parents=True)
    torch.save(
        {
            "config": cfg.to_dict(),
            "classes": classes,
            "epoch": 0,
            "model": model_state(net),
            "optimizer": {},
            "history": [],
            "skipped": {},
        },
        run / "last.pt",
    )
    (run / "metrics.json").write_text(json.dumps({"note": "initial weights: a latency benchmark model, not trained"}))
    export_run(run, tensorrt="off", parity_videos=1)
    return run
