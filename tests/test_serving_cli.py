"""`python -m serving start --host/--foreground` and `python -m serving health`, what the serving
image runs, against the real TorchServe on free ports with the tiny run's export: on an address
other machines can reach, token authorization is on (no key or a wrong key: TorchServe 0.12's
400 InvalidKeyException; the inference key from RUN/serve/key_file.json: 200), management stays
on loopback, the attached start renews the inference key before it expires and stops on SIGTERM
with exit 0 and no process left, a TorchServe that dies on its own ends the attached start with
exit 1, and health follows the server (0 while it is up, 1 with a reason once it is gone)."""
from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from serving.__main__ import write_config
from tests.test_demo import listening, processes_of
from tests.test_serving_core import val_videos
from tests.test_torchserve import free_ports, port_args, serving_cli


def machine_address() -> str:
    """This machine's address on its default route (what another machine would connect to), or
    0.0.0.0 where there is none (token authorization is on for both)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = s.getsockname()[0]
        except OSError:
            return "0.0.0.0"
    return "0.0.0.0" if address.startswith("127.") else address


def request(host: str, port: int, method: str, path: str, key: str | None = None, body: bytes | None = None,
            ) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/octet-stream"} if body else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn = http.client.HTTPConnection("127.0.0.1" if host == "0.0.0.0" else host, port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def refused(status_and_body: tuple[int, bytes]) -> bool:
    """TorchServe 0.12 answers a missing, wrong or expired key with 400 InvalidKeyException (not 401)."""
    status, body = status_and_body
    return status == 400 and json.loads(body)["type"] == "InvalidKeyException"


def health(port: int) -> subprocess.CompletedProcess:
    return serving_cli("health", "--inference-port", str(port), timeout=60)


def read_until(server: subprocess.Popen, pattern: str) -> tuple[str, re.Match]:
    """The attached start's output up to the first line matching `pattern` (failing with all of
    it when the process ends first)."""
    seen = ""
    for line in server.stdout:
        seen += line
        match = re.search(pattern, line)
        if match:
            return seen, match
    server.wait(timeout=60)
    pytest.fail(f"start ended with code {server.returncode} before printing {pattern!r}:\n{seen[-3000:]}")


def attached_start(run: Path, ports: list[int], *options: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "serving", "start", "--run", str(run), "--foreground",
                             "--threads", "2", *options, *port_args(ports)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


@pytest.fixture
def run(tiny_export, tmp_path) -> Path:
    """A copy of the tiny export of its own, so that its processes and key file are this test's."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_export / "export", copy / "export")
    shutil.copy(tiny_export / "config.yaml", copy / "config.yaml")  # where val_videos finds the videos
    return copy


@pytest.mark.slow
@pytest.mark.timeout(300)  # a line that never comes must not hang the suite
def test_attached_start_on_a_reachable_address_needs_the_key_renews_it_and_stops_on_sigterm(run):
    host, ports = machine_address(), free_ports(5)
    inference, management, metrics = ports[:3]
    server = attached_start(run, ports, "--host", host, "--token-expiration-min", "1")
    try:
        out, match = read_until(server, r"inference key from (\S+) \(renewed before it expires")
        assert f"at http://{host}:{inference}/predictions/action" in out
        key_file = Path(match.group(1))
        assert key_file == run / "serve" / "key_file.json"
        key = json.loads(key_file.read_text())["inference"]["key"]

        assert refused(request(host, inference, "GET", "/ping"))
        assert refused(request(host, inference, "GET", "/ping", key="not-the-key"))
        status, answer = request(host, inference, "GET", "/ping", key=key)
        assert (status, json.loads(answer)) == (200, {"status": "Healthy"})
        video = val_videos(run)[0][0].read_bytes()
        assert refused(request(host, inference, "POST", "/predictions/action", body=video))
        status, answer = request(host, inference, "POST", "/predictions/action", key=key, body=video)
        assert status == 200 and len(json.loads(answer)["predictions"]) == 3
        assert request(host, metrics, "GET", "/metrics")[0] == 200  # Prometheus scrapes without a key
        assert listening(management)
        if host != "0.0.0.0":
            with socket.socket() as s:
                assert s.connect_ex((host, management)) != 0, "management must stay on loopback"
        assert health(inference).returncode == 0

        # --token-expiration-min 1: renewed half a minute before it expires
        read_until(server, r"^renewed the inference key in ")
        renewed = json.loads(key_file.read_text())["inference"]["key"]
        assert renewed != key
        assert refused(request(host, inference, "GET", "/ping", key=key))
        assert request(host, inference, "GET", "/ping", key=renewed)[0] == 200
        assert health(inference).returncode == 0

        processes = psutil.Process(server.pid).children(recursive=True)
        assert len(processes) >= 3  # launcher, frontend, worker
        server.send_signal(signal.SIGTERM)
        out = server.communicate(timeout=120)[0]
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, out[-3000:]
    assert "stopped the TorchServe on port" in out and "on SIGTERM" in out
    assert [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert processes_of(run) == []
    assert not any(listening(port) for port in ports)
    assert not key_file.exists()
    after = health(inference)
    assert after.returncode == 1
    assert after.stderr == f"unhealthy: no server started by `python -m serving start` is recorded for port {inference}\n"


@pytest.mark.slow
@pytest.mark.timeout(300)  # a line that never comes must not hang the suite
def test_attached_start_exits_1_when_torchserve_dies_and_health_follows(run):
    ports = free_ports(5)
    server = attached_start(run, ports, "--host", "0.0.0.0", "--no-token-auth")
    try:
        out, _ = read_until(server, r"^  stop with: SIGTERM or Ctrl-C")
        assert "warning: token authorization is off (--no-token-auth) while the inference API listens on 0.0.0.0" in out
        assert not (run / "serve" / "key_file.json").exists()
        assert request("127.0.0.1", ports[0], "GET", "/ping")[0] == 200  # no key needed
        up = health(ports[0])
        assert (up.returncode, up.stdout) == (0, f"healthy: the TorchServe on port {ports[0]}\n")

        processes = psutil.Process(server.pid).children(recursive=True)
        frontend = [p for p in processes if "org.pytorch.serve.ModelServer" in " ".join(p.cmdline())]
        assert len(frontend) == 1
        frontend[0].kill()  # TorchServe dying on its own (the OOM killer, say)
        down = health(ports[0])
        assert down.returncode == 1 and down.stderr.startswith("unhealthy: ") and down.stderr.count("\n") == 1
        out = server.communicate(timeout=120)[0]
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 1
    assert "error: TorchServe exited on its own with code" in out
    assert [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert processes_of(run) == []
    assert health(ports[0]).returncode == 1


def test_health_without_a_recorded_server_and_start_with_a_bad_host(tmp_path):
    port = free_ports(1)[0]
    done = health(port)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"unhealthy: no server started by `python -m serving start` is recorded for port {port}\n"
    started = serving_cli("start", "--run", str(tmp_path), "--host", "example.org")
    assert started.returncode == 1 and "--host 'example.org' is not an IP address" in started.stderr
    started = serving_cli("start", "--run", str(tmp_path), "--host", "198.51.100.7")  # documentation range
    assert started.returncode == 1 and "--host 198.51.100.7 cannot be bound here" in started.stderr


def test_config_copy_binds_host_for_inference_and_metrics_and_keeps_token_auth_off_only_on_loopback(tmp_path):
    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    common = dict(ports=ports, model_store=tmp_path, model_name="action", version="1", workers=1, batch_size=1,
                  max_batch_delay=50, response_timeout=300)

    def settings(path: Path) -> dict:
        lines = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
        return dict(line.split("=", 1) for line in lines)

    write_config(tmp_path / "loopback", **common)
    write_config(tmp_path / "public", **common, host="0.0.0.0", token_expiration_min=30)
    loopback, public = settings(tmp_path / "loopback"), settings(tmp_path / "public")
    assert loopback["disable_token_authorization"] == "true" and "token_expiration_min" not in loopback
    assert "disable_token_authorization" not in public and public["token_expiration_min"] == "30"
    assert (loopback["inference_address"], loopback["metrics_address"]) == ("http://127.0.0.1:1", "http://127.0.0.1:3")
    assert (public["inference_address"], public["metrics_address"]) == ("http://0.0.0.0:1", "http://0.0.0.0:3")
    for config in (loopback, public):
        assert config["management_address"] == "http://127.0.0.1:2"
        assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"
