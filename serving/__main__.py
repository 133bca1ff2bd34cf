"""`python -m serving start|stop|health`: TorchServe from this environment with a run's exported
archive (what `make serve` / `make serve-stop` call, and the serving image's entry point and
health check).

start: writes RUN/serve/config.properties (serving/config.properties plus this start's ports,
address and model settings), launches `torchserve --foreground` in its own session with its
logs, temporary files and pid file under RUN/serve/, waits until the model's workers are READY
(with a deadline), and records the server in a state file named after the inference port.
The inference and metrics listeners bind --host (127.0.0.1 unless told); management and gRPC
always stay on 127.0.0.1. On an address other machines can reach, TorchServe's token
authorization is on: it writes RUN/serve/key_file.json, and inference calls need
`Authorization: Bearer <inference key>`. With --foreground, start stays attached after
readiness (a container's PID 1): SIGTERM/SIGINT stop the server and exit 0, a server that dies
on its own exits 1, and the inference key is renewed before it expires.
stop: ends that server's process tree (launcher, Java frontend, Python workers) and checks
that none of them is left.
health: GET /ping of the recorded server (with its inference key); exit 0 only if Healthy.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import psutil

from serving.backends import BACKEND_CHOICES, BackendError, select_backend
from serving.core import load_manifest

HOST = "127.0.0.1"  # management and gRPC always, inference and metrics unless --host says otherwise
KEY_FILE = "key_file.json"  # TorchServe writes it into its working directory, RUN/serve/
TEMPLATE = Path(__file__).with_name("config.properties")
TORCHSERVE_MARKS = ("torchserve", "org.pytorch.serve.ModelServer", "model_service_worker")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ServeError(Exception):
    """A start or stop that cannot go on; the message says why and what to do."""


def state_path(inference_port: int) -> Path:
    """Where a started server is recorded, so that `stop` finds it without being told the run."""
    return Path(tempfile.gettempdir()) / "tg-action-serve" / f"{inference_port}.json"


def parse_host(text: str) -> str:
    """--host as a normalised IP address ('localhost' is 127.0.0.1): TorchServe's addresses are
    URLs, and whether token authorization is needed depends on the address being loopback."""
    try:
        return str(ipaddress.ip_address("127.0.0.1" if text == "localhost" else text))
    except ValueError:
        raise ServeError(f"--host {text!r} is not an IP address: give 127.0.0.1 (this machine only), "
                         "0.0.0.0 (every interface) or one of this machine's addresses") from None


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def connect_host(host: str) -> str:
    """Where a local client reaches a listener bound to `host` (0.0.0.0 and :: are no destination)."""
    if ipaddress.ip_address(host).is_unspecified:
        return "::1" if ":" in host else HOST
    return host


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def check_local_address(host: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            raise ServeError(f"--host {host} cannot be bound here ({exc.strerror}): it must be one of this "
                             "machine's addresses, 0.0.0.0 or 127.0.0.1") from None


def write_config(path: Path, *, ports: dict, model_store: Path, model_name: str, version: str, workers: int,
                 batch_size: int, max_batch_delay: int, response_timeout: int, host: str = HOST,
                 token_expiration_min: int | None = None) -> None:
    """serving/config.properties with this start's ports, address and model settings replacing its
    own; with `token_expiration_min` given, token authorization is on (the template's
    disable_token_authorization line is left out) and keys live that many minutes."""
    models = {model_name: {version: {"defaultVersion": True, "marName": "model.mar", "minWorkers": workers,
                                     "maxWorkers": workers, "batchSize": batch_size, "maxBatchDelay": max_batch_delay,
                                     "responseTimeout": response_timeout}}}
    settings = {
        "inference_address": f"http://{url_host(host)}:{ports['inference']}",
        "management_address": f"http://{HOST}:{ports['management']}",
        "metrics_address": f"http://{url_host(host)}:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(model_store),
        "load_models": f"{model_name}=model.mar",
        "models": json.dumps(models),
    }
    if token_expiration_min is not None:
        settings["token_expiration_min"] = str(token_expiration_min)
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if line.lstrip().startswith("#"):
            pass
        elif key == "disable_token_authorization" and token_expiration_min is not None:
            continue
        elif key in settings:
            line = f"{key}={settings.pop(key)}"
        lines.append(line)
    lines += ["", "# added by python -m serving start"] + [f"{k}={v}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")


def get_json(url: str, timeout: float = 2.0, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def read_keys(state: dict) -> dict:
    """TorchServe 0.12's key file: {"management": {"key", "expiration time"}, "inference": {...},
    "API": {"key"}}; {} when token authorization is off. Raises OSError/ValueError while the file
    is not (completely) written."""
    if not state.get("key_file"):
        return {}
    return json.loads(Path(state["key_file"]).read_text())


def key_of(keys: dict, kind: str) -> str | None:
    return keys[kind]["key"] if keys else None


def expiry_of(keys: dict, kind: str) -> datetime:
    """The key's expiration time; TorchServe writes nanoseconds and a Z, which Python 3.10 does not parse."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", keys[kind]["expiration time"]).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def inference_url(state: dict, path: str) -> str:
    return f"http://{url_host(connect_host(state['host']))}:{state['ports']['inference']}{path}"


def workers_ready(state: dict, workers: int) -> bool:
    """/ping is healthy and the model has `workers` workers in state READY."""
    try:
        keys = read_keys(state)
        if get_json(inference_url(state, "/ping"), key=key_of(keys, "inference")).get("status") != "Healthy":
            return False
        described = get_json(f"http://{HOST}:{state['ports']['management']}/models/{state['model_name']}",
                             key=key_of(keys, "management"))
    except (OSError, ValueError):  # not listening yet, no key file yet, or the model is not registered yet
        return False
    states = [w.get("status") for w in described[0].get("workers", [])] if described else []
    return states.count("READY") >= workers


def new_log_text(path: Path, offset: int) -> str:
    """What was appended to a log file since it had `offset` bytes (TorchServe appends)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


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


def check_startable(args, run: Path, ports: dict, host: str) -> dict:
    """Everything that can be checked before launching, each with a message that says what to
    do; returns the export's manifest."""
    export_dir = run / "export"
    mar = export_dir / "model.mar"
    if not mar.is_file():
        raise ServeError(f"no model archive at {mar}: export the run first (make export RUN={args.run})")
    manifest = load_manifest(export_dir)
    if not MODEL_NAME_PATTERN.match(args.model_name):
        raise ServeError(f"model name {args.model_name!r} must be letters, digits, '_', '.', '-' (it is part of the URL)")
    if min(args.workers, args.batch_size, args.max_views, args.token_expiration_min) < 1:
        raise ServeError("--workers, --batch-size, --max-views and --token-expiration-min must be at least 1")
    try:  # the check each worker makes on load, made here once so that a failure reads plainly
        select_backend(export_dir, manifest, prefer=args.backend, threads=1, probe_views=0)
    except BackendError as exc:
        raise ServeError(f"the model in {export_dir} cannot be served here: {exc}") from exc
    if not (Path(sys.executable).parent / "torchserve").is_file():
        raise ServeError(f"torchserve is not installed beside {sys.executable} (make setup installs .[dev,serve])")
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise ServeError("java not found: TorchServe needs Java 17 (set JAVA_HOME or put java on PATH)")

    state_file = state_path(ports["inference"])
    for recorded_file in state_file.parent.glob("*.json"):
        recorded = json.loads(recorded_file.read_text())
        if not alive(server_processes(recorded)):
            recorded_file.unlink()  # a server that is gone (machine restarted, processes killed)
        elif recorded_file == state_file:
            raise ServeError(f"a server started by `python -m serving start` already runs on port {ports['inference']} "
                             f"(pid {recorded['pid']}, run {recorded['run']}): stop it with `make serve-stop` first")
        elif recorded["run"] == str(run):
            raise ServeError(f"run {run} is already served on port {recorded['ports']['inference']} (its logs and "
                             f"unpacked model live in {run / 'serve'}): stop that server first")
    public = ("inference", "metrics")  # the listeners that bind --host
    taken = [f"{name.replace('_', ' ')} {port}" for name, port in ports.items()
             if port_in_use(port, host if name in public else HOST)]
    if taken:
        where = HOST if host == HOST else f"{host} (inference, metrics) or {HOST} (the others)"
        raise ServeError(f"port(s) already in use on {where}: {', '.join(taken)}; stop the program using them "
                         "(`make serve-stop` stops a server started by `make serve`) or choose other ports")
    return manifest


def catch_stop_signals() -> list[int]:
    """SIGTERM and SIGINT are appended to the returned list instead of ending this process, so
    that start stops TorchServe first. As a container's PID 1 this process would otherwise
    ignore SIGTERM (the kernel sends PID 1 no signal it has no handler for)."""
    caught: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: caught.append(number))
    return caught


def wait_until_ready(proc: subprocess.Popen, state: dict, args, model_log: Path, log_offset: int,
                     caught: list[int]) -> str | None:
    """None once the model's workers are READY, else why not. TorchServe restarts a worker that
    fails to load forever, so the first failure in the model log ends the wait."""
    deadline = time.monotonic() + args.timeout
    while not workers_ready(state, args.workers):
        if caught:
            return f"interrupted by {signal.Signals(caught[0]).name}"
        if proc.poll() is not None:
            return f"TorchServe exited with code {proc.returncode}"
        if "Backend worker process died" in new_log_text(model_log, log_offset):
            return "the model's worker failed to load"
        if time.monotonic() > deadline:
            return f"the model was not ready within {args.timeout:.0f} s"
        time.sleep(0.5)
    return None


def renew_inference_key(state: dict) -> datetime:
    """TorchServe's token API: the API key asks the management listener (loopback only, so no
    client outside a container can) for a new inference key, which TorchServe writes into the
    key file; the old key stops working. Returns the new key's expiration time."""
    url = f"http://{HOST}:{state['ports']['management']}/token?type=inference"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key_of(read_keys(state), 'API')}"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    return expiry_of(read_keys(state), "inference")


def stay_attached(proc: subprocess.Popen, state_file: Path, state: dict, caught: list[int],
                  key_lifetime_s: float | None) -> int:
    """--foreground after readiness: until SIGTERM/SIGINT (stop the server, exit 0) or the end of
    TorchServe on its own (clean up what is left, exit 1). With token authorization the
    inference key is renewed a margin before it expires (5 min, or half its lifetime when
    shorter), so that the key file and `health` stay valid for as long as the server runs."""
    margin = min(300.0, key_lifetime_s / 2) if key_lifetime_s else 0.0
    renew_at = expiry_of(read_keys(state), "inference").timestamp() - margin if key_lifetime_s else None
    while not caught:
        if proc.poll() is not None:
            deadline = time.monotonic() + 5  # a `python -m serving stop` still removing the state file
            while state_file.is_file() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not state_file.is_file():
                print(f"the TorchServe on port {state['ports']['inference']} was stopped by `python -m serving stop`")
                return 0
            stop_recorded(state_file)  # its workers can outlive the launcher and the frontend
            print(f"error: TorchServe exited on its own with code {proc.returncode} (logs: {state['logs']})",
                  file=sys.stderr)
            return 1
        if renew_at is not None and time.time() >= renew_at:
            try:
                expires = renew_inference_key(state)
                renew_at = expires.timestamp() - margin
                print(f"renewed the inference key in {state['key_file']} (valid until {expires:%Y-%m-%d %H:%M:%S} UTC)")
            except (OSError, ValueError, KeyError) as exc:
                print(f"warning: could not renew the inference key ({exc}); trying again in 10 s", file=sys.stderr)
                renew_at = time.time() + 10
        time.sleep(0.5)
    ended = stop_recorded(state_file)
    print(f"stopped the TorchServe on port {state['ports']['inference']} on {signal.Signals(caught[0]).name} "
          f"({ended} processes)")
    return 0


def start(args) -> int:
    host = parse_host(args.host)
    check_local_address(host)
    run = Path(args.run).resolve()
    ports = {"inference": args.inference_port, "management": args.management_port, "metrics": args.metrics_port,
             "grpc_inference": args.grpc_inference_port, "grpc_management": args.grpc_management_port}
    manifest = check_startable(args, run, ports, host)
    token_auth = not is_loopback(host) and not args.no_token_auth
    if not is_loopback(host) and not token_auth:
        print(f"warning: token authorization is off (--no-token-auth) while the inference API listens on {host}: "
              f"anyone who reaches {host}:{args.inference_port} can use it", file=sys.stderr)
    if args.foreground:
        sys.stdout.reconfigure(line_buffering=True)  # a container's log shows each line as it comes

    export_dir, serve_dir = run / "export", run / "serve"
    log_dir, tmp_dir = serve_dir / "logs", serve_dir / "tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # models unpacked by an earlier start
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True)
    key_file = serve_dir / KEY_FILE
    key_file.unlink(missing_ok=True)  # an earlier start's keys: readiness and health must wait for this one's
    config = serve_dir / "config.properties"
    write_config(config, ports=ports, model_store=export_dir, model_name=args.model_name,
                 version=manifest["model_version"], workers=args.workers, batch_size=args.batch_size,
                 max_batch_delay=args.max_batch_delay, response_timeout=args.response_timeout, host=host,
                 token_expiration_min=args.token_expiration_min if token_auth else None)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    env = dict(os.environ,
               TEMP=str(tmp_dir),  # java.io.tmpdir: unpacked models and the workers' sockets
               TMPDIR=str(tmp_dir),  # the launcher's pid file, so that other TorchServes do not collide
               LOG_LOCATION=str(log_dir), METRICS_LOCATION=str(log_dir),
               SERVING_BACKEND=args.backend, SERVING_THREADS=str(threads), SERVING_MAX_VIEWS=str(args.max_views))
    model_log = log_dir / "model_log.log"
    log_offset = file_size(model_log)  # TorchServe appends to the logs of earlier starts
    cmd = [str(Path(sys.executable).parent / "torchserve"), "--start", "--foreground", "--ts-config", str(config),
           "--model-store", str(export_dir), "--no-config-snapshots"]
    caught = catch_stop_signals()
    with open(log_dir / "console.log", "ab") as console:
        proc = subprocess.Popen(cmd, cwd=serve_dir, env=env, stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state_file = state_path(args.inference_port)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "run": str(run),
             "model_name": args.model_name, "ports": ports, "host": host,
             "key_file": str(key_file) if token_auth else None, "logs": str(log_dir)}
    state_file.write_text(json.dumps(state, indent=2))

    failure = wait_until_ready(proc, state, args, model_log, log_offset, caught)
    if failure and caught:
        stop_recorded(state_file)
        print(f"stopped the TorchServe on port {args.inference_port} before it was ready: {failure}", file=sys.stderr)
        return 0 if args.foreground else 128 + caught[0]
    if failure:
        lines = new_log_text(model_log, log_offset).splitlines()[-40:]
        tail = "\n".join(line.split(" MODEL_LOG - ", 1)[-1] for line in lines)  # without the log4j prefixes
        print(f"error: {failure}; last lines of {model_log}:\n{tail}\n(all logs: {log_dir})", file=sys.stderr)
        stop_recorded(state_file)
        return 1
    stop_hint = "make serve-stop" if args.inference_port == 8080 else \
        f"python -m serving stop --inference-port {args.inference_port}"
    if args.foreground:
        stop_hint = f"SIGTERM or Ctrl-C to this process, or {stop_hint}"
    print(f"serving {manifest['model_name']} {manifest['model_version']} at "
          f"http://{url_host(host)}:{ports['inference']}/predictions/{args.model_name}\n"
          f"  workers {args.workers}, batch size {args.batch_size}, backend {args.backend}, {threads} threads per worker\n"
          f"  management http://{HOST}:{ports['management']}  "
          f"metrics http://{url_host(host)}:{ports['metrics']}/metrics\n"
          f"  logs {log_dir}\n  stop with: {stop_hint}")
    if token_auth:
        renewal = "renewed before it expires while this process runs" if args.foreground else \
            f"expires after {args.token_expiration_min} min"
        print(f"  token authorization on: send 'Authorization: Bearer <inference key>' with the inference key from "
              f"{key_file} ({renewal})")
    if not args.foreground:
        return 0
    return stay_attached(proc, state_file, state, caught, args.token_expiration_min * 60.0 if token_auth else None)


def stop(args) -> int:
    state_file = state_path(args.inference_port)
    if not state_file.is_file():
        print(f"no server started by `python -m serving start` is recorded for port {args.inference_port}")
        return 0
    ended = stop_recorded(state_file, timeout=args.timeout)
    print(f"stopped the TorchServe on port {args.inference_port} ({ended} processes)")
    return 0


def ping_failure(inference_port: int, timeout: float) -> str | None:
    """None if the server recorded for `inference_port` answers /ping with Healthy, else why not."""
    state_file = state_path(inference_port)
    if not state_file.is_file():
        return f"no server started by `python -m serving start` is recorded for port {inference_port}"
    state = json.loads(state_file.read_text())
    state.setdefault("host", HOST)  # recorded before --host existed
    url = inference_url(state, "/ping")
    try:
        keys = read_keys(state)
    except (OSError, ValueError) as exc:
        return f"token authorization is on but the key file {state['key_file']} cannot be read ({exc})"
    try:
        answer = get_json(url, timeout=timeout, key=key_of(keys, "inference"))
    except urllib.error.HTTPError as exc:
        refused = f" (the inference key from {state['key_file']} was refused)" if keys and exc.code in (400, 401) else ""
        return f"{url} answered HTTP {exc.code}{refused}"
    except (OSError, ValueError) as exc:
        return f"no answer from {url} ({getattr(exc, 'reason', None) or exc})"
    status = answer.get("status") if isinstance(answer, dict) else answer
    return None if status == "Healthy" else f"{url} answered status {status!r}"


def health(args) -> int:
    """The serving image's HEALTHCHECK: exit 0 only if /ping says Healthy, else one line on why."""
    failure = ping_failure(args.inference_port, args.timeout)
    if failure:
        print(f"unhealthy: {failure}", file=sys.stderr)
        return 1
    print(f"healthy: the TorchServe on port {args.inference_port}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="serve RUN/export/model.mar with TorchServe (on 127.0.0.1 unless --host)")
    p.add_argument("--run", required=True, help="run folder holding export/model.mar (make export)")
    p.add_argument("--model-name", default="action", help="the name in /predictions/<name>")
    p.add_argument("--host", default=HOST,
                   help="address the inference and metrics listeners bind (0.0.0.0: every interface); management "
                        "and gRPC stay on 127.0.0.1. Any address but loopback turns token authorization on")
    p.add_argument("--no-token-auth", action="store_true",
                   help="keep token authorization off on a non-loopback --host (anyone reaching it can infer)")
    p.add_argument("--token-expiration-min", type=int, default=60,
                   help="minutes a TorchServe key lives (--foreground renews the inference key before that)")
    p.add_argument("--foreground", action="store_true",
                   help="stay attached after readiness; SIGTERM/SIGINT stop the server (a container's entry point)")
    p.add_argument("--workers", type=int, default=1, help="worker processes for the model")
    p.add_argument("--batch-size", type=int, default=1, help="requests TorchServe batches into one handler call")
    p.add_argument("--max-batch-delay", type=int, default=50, help="ms to wait for a batch to fill")
    p.add_argument("--response-timeout", type=int, default=300, help="s a worker may take for one batch")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per worker (default: cores / workers)")
    p.add_argument("--max-views", type=int, default=30, help="views per model call (bounds the memory of a batch)")
    p.add_argument("--timeout", type=float, default=180.0, help="s to wait for the model's workers to be ready")
    for name, default in (("inference", 8080), ("management", 8081), ("metrics", 8082), ("grpc-inference", 7070),
                          ("grpc-management", 7071)):
        p.add_argument(f"--{name}-port", type=int, default=default)
    p.set_defaults(func=start)
    p = sub.add_parser("stop", help="stop the server started on --inference-port, and all its processes")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=60.0, help="s to wait before killing what did not stop")
    p.set_defaults(func=stop)
    p = sub.add_parser("health", help="exit 0 if the server started on --inference-port answers /ping with Healthy")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=5.0, help="s to wait for the answer")
    p.set_defaults(func=health)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ServeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
