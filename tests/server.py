"""Helpers for integration tests of the real TorchServe on loopback, started and stopped with
`python -m serving start|stop` on free ports. Token authorization is always on: the request
helpers send the recorded server's inference key (`serving.tokens.current_key`, which renews
a key that is about to expire), the management helpers its management key.

    server = start_server(run, extra_env={"SERVING_DECODE_TIMEOUT": "5"})  # the worker inherits extra_env
    status, answer = post_video(server.port, video_bytes)
    pid, rss, logs = worker_pid(server), worker_rss(server), log_bytes(server)
    stop_server(server)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from serving.addresses import HOST
from serving.server_records import recorded_state, state_path
from serving.tokens import current_key

PORT_NAMES = ("inference", "management", "metrics", "grpc-inference", "grpc-management")


@dataclass
class Server:
    ports: list[int]  # inference, management, metrics, grpc inference, grpc management
    run: Path
    processes: list[psutil.Process]  # launcher, Java frontend, worker(s), recorded after start
    model: str = "action"

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def management_port(self) -> int:
        return self.ports[1]

    def key(self, kind: str = "inference") -> str:
        return server_key(self.port, kind)

    def worker(self) -> psutil.Process:
        workers = [p for p in self.processes if "model_service_worker" in " ".join(p.cmdline())]
        assert len(workers) == 1, workers
        return workers[0]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind((HOST, 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def serving_cli(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def port_args(ports: list[int]) -> list[str]:
    return [arg for name, port in zip(PORT_NAMES, ports, strict=True) for arg in (f"--{name}-port", str(port))]


def server_key(inference_port: int, kind: str = "inference") -> str:
    """The key of `kind` of the server recorded for `inference_port` (what `python -m serving key` prints)."""
    state = recorded_state(inference_port)
    assert state is not None, f"no server is recorded for port {inference_port}"
    return current_key(state, kind)


def auth_header(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def post(
    port: int, body: bytes, headers: dict | None = None, model: str = "action", key: str | None = None
) -> tuple[int, bytes]:
    """POST /predictions/<model> with the server's inference key, or `key` (e.g. a wrong one; ""
    sends no Authorization header)."""
    headers = {**auth_header(server_key(port) if key is None else key), **(headers or {})}
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    try:
        conn.request("POST", f"/predictions/{model}", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_video(port: int, data: bytes, **headers) -> tuple[int, dict]:
    status, raw = post(port, data, {"Content-Type": "application/octet-stream", **headers})
    return status, json.loads(raw)


def multipart(fields: dict[str, bytes]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, value in fields.items():
        file_part = '; filename="video.mp4"\r\nContent-Type: application/octet-stream' if name == "data" else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{file_part}\r\n\r\n'.encode()
        body += value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def start_server(
    run: Path,
    *,
    batch_size: int = 1,
    threads: int = 2,
    extra_env: dict | None = None,
    timeout: float = 180,
    max_batch_delay: int = 20,
    options: tuple[str, ...] = (),
) -> Server:
    """`python -m serving start` of RUN/export/model.mar on free loopback ports, one worker, until
    it is ready. `extra_env` is merged into the environment: the Java frontend and its Python
    worker inherit it (how tests pass the handler's limits). `options`: more start options."""
    ports = free_ports(len(PORT_NAMES))
    env = dict(os.environ, **(extra_env or {}))
    started = serving_cli(
        "start",
        "--run",
        str(run),
        "--workers",
        "1",
        "--batch-size",
        str(batch_size),
        "--max-batch-delay",
        str(max_batch_delay),
        "--threads",
        str(threads),
        "--timeout",
        str(timeout),
        *options,
        *port_args(ports),
        timeout=timeout + 60,
        env=env,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"at http://{HOST}:{ports[0]}/predictions/action" in started.stdout, started.stdout
    launcher = psutil.Process(json.loads(state_path(ports[0]).read_text())["pid"])
    return Server(ports, Path(run), [launcher] + launcher.children(recursive=True))


def stop_server(server: Server) -> None:
    """`python -m serving stop`; a no-op for a server already stopped."""
    stopped = serving_cli("stop", "--inference-port", str(server.port), timeout=180)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def management_get(server: Server, path: str, key: str | None = None) -> tuple[int, bytes]:
    """GET on the management API with the server's management key, or `key` ("" sends none)."""
    conn = http.client.HTTPConnection(HOST, server.management_port, timeout=30)
    try:
        conn.request("GET", path, headers=auth_header(server.key("management") if key is None else key))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def worker_pid(server: Server) -> int:
    """The pid of the model's one worker as TorchServe's management API describes it (so a
    restarted worker shows as a new pid)."""
    status, body = management_get(server, f"/models/{server.model}")
    assert status == 200, body
    workers = json.loads(body)[0]["workers"]
    assert len(workers) == 1, workers
    return int(workers[0]["pid"])


def worker_rss(server: Server) -> int:
    """Resident memory of the model's worker, in bytes."""
    return psutil.Process(worker_pid(server)).memory_info().rss


def log_bytes(server: Server) -> int:
    """Total size of the server's logs (RUN/serve/logs, rotated files included)."""
    return sum(p.stat().st_size for p in (server.run / "serve" / "logs").rglob("*") if p.is_file())
