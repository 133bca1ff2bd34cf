"""`python -m serving start|health|key`, what `make serve` and the serving image run, against the
real TorchServe on free ports with the tiny run's export. Token authorization is on whatever the
address, loopback included: TorchServe 0.12 answers a missing or wrong key with 400
InvalidKeyException over HTTP (not 401/403) and PERMISSION_DENIED over gRPC; the inference key
opens /ping and /predictions, the management key the management API; `key` prints them (and
renews one about to expire); the key file is RUN/serve/key_file.json, mode 0600. Management and
gRPC stay on loopback, metrics too unless --metrics-host says otherwise. The logs under
RUN/serve/logs rotate at --log-file-size keeping --log-backups files. The attached start renews
the keys before they expire and stops on SIGTERM with exit 0 and no process left, a TorchServe
that dies on its own ends it with exit 1, and health follows the server (0 while it is up, 1
with a reason once it is gone)."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from serving.addresses import HOST
from serving.tokens import KEY_FILE
from serving.torchserve_config import write_config
from tests.processes import listening, processes_of
from tests.served_answers import val_videos
from tests.server import (
    Server,
    free_ports,
    log_bytes,
    management_get,
    port_args,
    serving_cli,
    start_server,
    stop_server,
    worker_pid,
)

LOG4J_LOGS = ("access_log", "model_log", "model_metrics", "ts_log", "ts_metrics")


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


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    key: str | None = None,
    body: bytes | None = None,
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
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "start",
            "--run",
            str(run),
            "--foreground",
            "--threads",
            "2",
            *options,
            *port_args(ports),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )


@pytest.fixture
def run(tiny_export, tmp_path) -> Path:
    """A copy of the tiny export of its own, so that its processes and key file are this test's."""
    copy = tmp_path / "run"
    shutil.copytree(tiny_export / "export", copy / "export")
    shutil.copy(tiny_export / "config.yaml", copy / "config.yaml")  # where val_videos finds the videos
    return copy


def key_cli(port: int, *options: str) -> subprocess.CompletedProcess:
    return serving_cli("key", "--inference-port", str(port), *options, timeout=60)


def key_file_of(run: Path) -> dict:
    return json.loads((run / "serve" / KEY_FILE).read_text())


def reachable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) == 0


# ----------------------------------------------------------------------------- loopback (make serve)
@pytest.fixture(scope="module")
def loopback(tiny_export, tmp_path_factory) -> Server:
    """What `make serve` starts (the defaults: everything on 127.0.0.1), with one-minute keys, so
    that a renewal comes within the test, and 1 KB log files, so that rotation does."""
    run = tmp_path_factory.mktemp("loopback") / "run"
    shutil.copytree(tiny_export / "export", run / "export")
    shutil.copy(tiny_export / "config.yaml", run / "config.yaml")  # where val_videos finds the videos
    server = start_server(run, options=("--token-expiration-min", "1", "--log-file-size", "1KB", "--log-backups", "1"))
    yield server
    stop_server(server)


@pytest.mark.slow
def test_loopback_start_needs_the_inference_key_and_key_prints_it(loopback):
    run, port = loopback.run, loopback.port
    key_file = run / "serve" / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p for p in run.rglob(KEY_FILE)] == [key_file]  # TorchServe's working directory, nowhere else
    printed = key_cli(port)
    assert printed.returncode == 0 and printed.stderr == "", printed.stderr
    assert printed.stdout == key_file_of(run)["inference"]["key"] + "\n"  # alone on stdout, for $(...)
    key = printed.stdout.strip()

    assert refused(request(HOST, port, "GET", "/ping"))
    assert refused(request(HOST, port, "GET", "/ping", key="not-the-key"))
    status, answer = request(HOST, port, "GET", "/ping", key=key)
    assert (status, json.loads(answer)) == (200, {"status": "Healthy"})
    video = val_videos(run)[0][0].read_bytes()
    assert refused(request(HOST, port, "POST", "/predictions/action", body=video))
    status, answer = request(HOST, port, "POST", "/predictions/action", key=key, body=video)
    assert status == 200 and len(json.loads(answer)["predictions"]) == 3
    assert health(port).returncode == 0


@pytest.mark.slow
def test_loopback_management_needs_the_management_key(loopback):
    run, management = loopback.run, loopback.management_port
    printed = key_cli(loopback.port, "--kind", "management")
    assert printed.returncode == 0 and printed.stdout == key_file_of(run)["management"]["key"] + "\n"
    pid = worker_pid(loopback)  # the helper sends the management key
    assert refused(management_get(loopback, "/models", key=""))
    assert refused(management_get(loopback, "/models", key=loopback.key("inference")))
    status, body = management_get(loopback, "/models", key=printed.stdout.strip())
    assert status == 200 and json.loads(body)["models"][0]["modelName"] == "action"
    # what the issue is about: without the key nothing local can scale the model to 0 workers
    assert refused(request(HOST, management, "PUT", "/models/action?min_worker=0&max_worker=0"))
    assert worker_pid(loopback) == pid
    assert refused(request(HOST, management, "POST", "/token?type=inference"))  # renewals need the API key


@pytest.mark.slow
def test_loopback_grpc_needs_the_keys_and_stays_on_loopback(loopback):
    grpc = pytest.importorskip("grpc")
    grpc_inference, grpc_management = loopback.ports[3:5]

    def call(port: int, method: str, key: str | None = None) -> str:
        channel = grpc.insecure_channel(f"{HOST}:{port}")
        unary = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
        try:  # an empty message is a valid request of every method: all fields at their defaults
            unary(b"", metadata=[("authorization", f"Bearer {key}")] if key else None, timeout=30)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name
        finally:
            channel.close()

    list_models = "/org.pytorch.serve.grpc.management.ManagementAPIsService/ListModels"
    ping = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping"
    assert call(grpc_management, list_models) == "PERMISSION_DENIED"
    assert call(grpc_management, list_models, loopback.key("inference")) == "PERMISSION_DENIED"
    assert call(grpc_management, list_models, loopback.key("management")) == "OK"
    assert call(grpc_inference, ping) == "PERMISSION_DENIED"
    assert call(grpc_inference, ping, loopback.key("inference")) == "OK"
    address = machine_address()
    if address != "0.0.0.0":
        assert not reachable(address, grpc_inference) and not reachable(address, grpc_management)


@pytest.mark.slow
def test_loopback_metrics_need_no_key_and_stay_on_loopback(loopback):
    status, body = request(HOST, loopback.ports[2], "GET", "/metrics")
    assert status == 200 and b"# TYPE" in body
    address = machine_address()
    if address != "0.0.0.0":
        assert not reachable(address, loopback.ports[2]) and not reachable(address, loopback.port)


@pytest.mark.slow
def test_loopback_logs_rotate_at_the_size_bound(loopback):
    logs = loopback.run / "serve" / "logs"
    video = val_videos(loopback.run)[0][0].read_bytes()
    for _ in range(10):  # access, frontend and worker lines
        assert request(HOST, loopback.port, "POST", "/predictions/action", key=loopback.key(), body=video)[0] == 200
    # these two take lines on every request, so they pass 1 KB by now; how much TorchServe's own
    # ts_log says depends on the machine (it may hold its startup summary and little more), so
    # only its size is bounded below
    for name in ("access_log", "model_log"):
        # log4j renames the live file and then opens a new one: allow that moment to pass
        deadline = time.monotonic() + 5
        while not (logs / f"{name}.log").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (logs / f"{name}.log").is_file() and (logs / f"{name}.1.log").is_file(), sorted(os.listdir(logs))
    names = sorted(p.name for p in logs.iterdir())
    rotated = {f"{name}{suffix}.log" for name in LOG4J_LOGS for suffix in ("", ".1")}
    assert set(names) <= rotated | {"console.log", "console.1.log"}, names  # --log-backups 1: no .2
    # a file passes the size by at most one message; the largest, TorchServe's startup summary, is ~1.5 KB
    sizes = {p.name: p.stat().st_size for p in logs.iterdir()}
    assert max(size for name, size in sizes.items() if not name.startswith("console")) < 1024 + 3000, sizes
    assert sizes["console.log"] < 4096, (logs / "console.log").read_text()  # only what bypasses log4j
    before = log_bytes(loopback)
    for _ in range(20):
        request(HOST, loopback.port, "POST", "/predictions/action", key=loopback.key(), body=video)
    assert log_bytes(loopback) < len(rotated) * (1024 + 3000) + 2 * 4096, "the logs grew past their bound"
    assert before > 0


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_key_renews_a_key_about_to_expire_and_the_old_one_stops_working(loopback):
    """One-minute keys: `key` renews the key once it is within half its lifetime of expiring."""
    old = key_cli(loopback.port).stdout.strip()
    expires = datetime.fromisoformat(
        re.sub(r"(\.\d{6})\d*", r"\1", key_file_of(loopback.run)["inference"]["expiration time"]).replace("Z", "+00:00")
    ).timestamp()
    time.sleep(max(0.0, expires - 30 - time.time() + 1))
    new = key_cli(loopback.port).stdout.strip()
    assert new and new != old and new == key_file_of(loopback.run)["inference"]["key"]
    assert refused(request(HOST, loopback.port, "GET", "/ping", key=old))
    assert request(HOST, loopback.port, "GET", "/ping", key=new)[0] == 200
    assert health(loopback.port).returncode == 0


# ----------------------------------------------------------------------------- attached (the serving image)
@pytest.mark.slow
@pytest.mark.timeout(300)  # a line that never comes must not hang the suite
def test_attached_start_on_a_reachable_address_needs_the_key_renews_it_and_stops_on_sigterm(run):
    host, ports = machine_address(), free_ports(5)
    inference, management, metrics = ports[:3]
    server = attached_start(run, ports, "--host", host, "--token-expiration-min", "1")
    try:
        out, match = read_until(server, r"^  keys in (\S+) \(renewed before they expire while this process runs\)")
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
        assert request(HOST, metrics, "GET", "/metrics")[0] == 200  # Prometheus scrapes without a key...
        assert listening(management)
        if host != "0.0.0.0":
            for port in (management, metrics):  # ...on loopback: --metrics-host was not given
                assert not reachable(host, port), f"port {port} must stay on loopback"
        assert health(inference).returncode == 0

        # --token-expiration-min 1: both keys renewed half a minute before they expire
        renewed_kinds = {read_until(server, r"^renewed the (\w+) key in ")[1].group(1) for _ in range(2)}
        assert renewed_kinds == {"inference", "management"}
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
    assert (
        after.stderr == f"unhealthy: no server started by `python -m serving start` is recorded for port {inference}\n"
    )
    gone = key_cli(inference)
    assert gone.returncode == 1 and "no server started by `python -m serving start` is recorded" in gone.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)  # a line that never comes must not hang the suite
def test_attached_start_exits_1_when_torchserve_dies_and_health_follows(run):
    ports = free_ports(5)
    server = attached_start(run, ports)
    try:
        read_until(server, r"^  stop with: SIGTERM or Ctrl-C")
        assert refused(request(HOST, ports[0], "GET", "/ping"))  # on loopback too
        up = health(ports[0])
        assert up.returncode == 0  # and it names what the ready worker serves with, and where
        assert re.fullmatch(rf"healthy: the TorchServe on port {ports[0]}; 1 worker: [a-z0-9-]+ on cpu\n", up.stdout), (
            up.stdout
        )

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


# ----------------------------------------------------------------------------- without a server
def test_health_key_and_start_without_a_server_or_with_bad_options(tmp_path):
    port = free_ports(1)[0]
    done = health(port)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"unhealthy: no server started by `python -m serving start` is recorded for port {port}\n"
    done = key_cli(port)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"error: no server started by `python -m serving start` is recorded for port {port}\n"
    started = serving_cli("start", "--run", str(tmp_path), "--host", "example.org")
    assert started.returncode == 1 and "--host 'example.org' is not an IP address" in started.stderr
    started = serving_cli("start", "--run", str(tmp_path), "--host", "198.51.100.7")  # documentation range
    assert started.returncode == 1 and "--host 198.51.100.7 cannot be bound here" in started.stderr
    started = serving_cli("start", "--run", str(tmp_path), "--metrics-host", "198.51.100.7")
    assert started.returncode == 1 and "--metrics-host 198.51.100.7 cannot be bound here" in started.stderr
    started = serving_cli("start", "--run", str(tmp_path), "--no-token-auth")  # no way to turn the keys off
    assert started.returncode == 2 and "unrecognized arguments: --no-token-auth" in started.stderr


def test_start_refuses_bad_log_and_key_settings(tmp_path):
    for options, message in (
        (("--log-file-size", "10"), "--log-file-size '10' must be a number and KB, MB or GB"),
        (("--log-backups", "0"), "--log-backups at least 1"),
        (("--token-expiration-min", "0"), "--token-expiration-min must be more than 0"),
    ):
        started = serving_cli("start", "--run", str(tmp_path), *options)
        assert started.returncode == 1 and message in started.stderr, (options, started.stderr)


def test_config_copy_binds_host_and_metrics_host_and_never_turns_token_auth_off(tmp_path):
    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    common = dict(
        ports=ports,
        model_store=tmp_path,
        model_name="action",
        version="1",
        workers=1,
        batch_size=1,
        max_batch_delay=50,
        response_timeout=300,
    )

    def settings(path: Path) -> dict:
        lines = [line for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
        return dict(line.split("=", 1) for line in lines)

    write_config(tmp_path / "loopback", **common)
    write_config(tmp_path / "public", **common, host="0.0.0.0", token_expiration_min=30)
    write_config(tmp_path / "scraped", **common, host="0.0.0.0", metrics_host="0.0.0.0", token_expiration_min=0.5)
    loopback, public, scraped = (settings(tmp_path / name) for name in ("loopback", "public", "scraped"))
    assert (loopback["token_expiration_min"], public["token_expiration_min"], scraped["token_expiration_min"]) == (
        "60",
        "30",
        "0.5",
    )
    assert (loopback["inference_address"], loopback["metrics_address"]) == ("http://127.0.0.1:1", "http://127.0.0.1:3")
    assert (public["inference_address"], public["metrics_address"]) == ("http://0.0.0.0:1", "http://127.0.0.1:3")
    assert (scraped["inference_address"], scraped["metrics_address"]) == ("http://0.0.0.0:1", "http://0.0.0.0:3")
    for config in (loopback, public, scraped):
        assert "disable_token_authorization" not in config
        assert config["management_address"] == "http://127.0.0.1:2"
        assert config["grpc_inference_address"] == config["grpc_management_address"] == "127.0.0.1"


@pytest.mark.parametrize(
    "option,value", [("--decoders", "0"), ("--decode-timeout", "0"), ("--decode-memory-mb", "100")]
)
def test_decode_limits_below_their_minimum_are_refused_before_anything_starts(tiny_export, option, value):
    from tests.server import free_ports, port_args, serving_cli

    started = serving_cli("start", "--run", str(tiny_export), option, value, *port_args(free_ports(5)))
    assert started.returncode == 1 and f"{option} must be at least" in started.stderr, started.stderr


def test_adaptive_views_by_default_need_an_export_with_a_calibrated_rule(tiny_export, tmp_path):
    from tests.server import free_ports, port_args, serving_cli

    run = Path(shutil.copytree(tiny_export, tmp_path / "run", ignore=shutil.ignore_patterns("serve", "logs")))
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    manifest["adaptive_views"].update(rule=None, reason="not calibrated (--adaptive-videos 0)")
    (run / "export" / "manifest.json").write_text(json.dumps(manifest))
    started = serving_cli("start", "--run", str(run), "--adaptive-views", *port_args(free_ports(5)))
    assert started.returncode == 1 and "--adaptive-views" in started.stderr, started.stderr
    assert "no calibrated stopping rule (not calibrated (--adaptive-videos 0))" in started.stderr
