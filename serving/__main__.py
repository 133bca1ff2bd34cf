"""`python -m serving start|stop`: TorchServe from this environment on 127.0.0.1 with a run's
exported archive (what `make serve` / `make serve-stop` call).

start: writes RUN/serve/config.properties (serving/config.properties plus this start's ports and
model settings), launches `torchserve --foreground` in its own session with its logs, temporary
files and pid file under RUN/serve/, waits until the model's workers are READY (with a
deadline), and records the server in a state file named after the inference port.
stop: ends that server's process tree (launcher, Java frontend, Python workers) and checks
that none of them is left.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from serving.backends import BACKEND_CHOICES, BackendError, select_backend
from serving.core import load_manifest

HOST = "127.0.0.1"
TEMPLATE = Path(__file__).with_name("config.properties")
TORCHSERVE_MARKS = ("torchserve", "org.pytorch.serve.ModelServer", "model_service_worker")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ServeError(Exception):
    """A start or stop that cannot go on; the message says why and what to do."""


def state_path(inference_port: int) -> Path:
    """Where a started server is recorded, so that `stop` finds it without being told the run."""
    return Path(tempfile.gettempdir()) / "tg-action-serve" / f"{inference_port}.json"


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is no obstacle
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def write_config(path: Path, *, ports: dict, model_store: Path, model_name: str, version: str, workers: int,
                 batch_size: int, max_batch_delay: int, response_timeout: int) -> None:
    """serving/config.properties with this start's ports and model settings replacing its own."""
    models = {model_name: {version: {"defaultVersion": True, "marName": "model.mar", "minWorkers": workers,
                                     "maxWorkers": workers, "batchSize": batch_size, "maxBatchDelay": max_batch_delay,
                                     "responseTimeout": response_timeout}}}
    settings = {
        "inference_address": f"http://{HOST}:{ports['inference']}",
        "management_address": f"http://{HOST}:{ports['management']}",
        "metrics_address": f"http://{HOST}:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(model_store),
        "load_models": f"{model_name}=model.mar",
        "models": json.dumps(models),
    }
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and key in settings:
            line = f"{key}={settings.pop(key)}"
        lines.append(line)
    lines += ["", "# added by python -m serving start"] + [f"{k}={v}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")


def get_json(url: str, timeout: float = 2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def workers_ready(ports: dict, model_name: str, workers: int) -> bool:
    """/ping is healthy and the model has `workers` workers in state READY."""
    try:
        if get_json(f"http://{HOST}:{ports['inference']}/ping").get("status") != "Healthy":
            return False
        described = get_json(f"http://{HOST}:{ports['management']}/models/{model_name}")
    except (OSError, ValueError):  # not listening yet, or the model is not registered yet
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
    state_file.unlink(missing_ok=True)
    return len(running)


def check_startable(args, run: Path, ports: dict) -> dict:
    """Everything that can be checked before launching, each with a message that says what to
    do; returns the export's manifest."""
    export_dir = run / "export"
    mar = export_dir / "model.mar"
    if not mar.is_file():
        raise ServeError(f"no model archive at {mar}: export the run first (make export RUN={args.run})")
    manifest = load_manifest(export_dir)
    if not MODEL_NAME_PATTERN.match(args.model_name):
        raise ServeError(f"model name {args.model_name!r} must be letters, digits, '_', '.', '-' (it is part of the URL)")
    if min(args.workers, args.batch_size, args.max_views) < 1:
        raise ServeError("--workers, --batch-size and --max-views must be at least 1")
    try:  # the check each worker makes on load, made here once so that a failure reads plainly
        select_backend(export_dir, manifest, prefer=args.backend, threads=1)
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
    taken = [f"{name.replace('_', ' ')} {port}" for name, port in ports.items() if port_in_use(port)]
    if taken:
        raise ServeError(f"port(s) already in use on {HOST}: {', '.join(taken)}; stop the program using them "
                         "(`make serve-stop` stops a server started by `make serve`) or choose other ports")
    return manifest


def wait_until_ready(proc: subprocess.Popen, args, ports: dict, model_log: Path, log_offset: int) -> str | None:
    """None once the model's workers are READY, else why not. TorchServe restarts a worker that
    fails to load forever, so the first failure in the model log ends the wait."""
    deadline = time.monotonic() + args.timeout
    while not workers_ready(ports, args.model_name, args.workers):
        if proc.poll() is not None:
            return f"TorchServe exited with code {proc.returncode}"
        if "Backend worker process died" in new_log_text(model_log, log_offset):
            return "the model's worker failed to load"
        if time.monotonic() > deadline:
            return f"the model was not ready within {args.timeout:.0f} s"
        time.sleep(0.5)
    return None


def start(args) -> int:
    run = Path(args.run).resolve()
    ports = {"inference": args.inference_port, "management": args.management_port, "metrics": args.metrics_port,
             "grpc_inference": args.grpc_inference_port, "grpc_management": args.grpc_management_port}
    manifest = check_startable(args, run, ports)

    export_dir, serve_dir = run / "export", run / "serve"
    log_dir, tmp_dir = serve_dir / "logs", serve_dir / "tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # models unpacked by an earlier start
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True)
    config = serve_dir / "config.properties"
    write_config(config, ports=ports, model_store=export_dir, model_name=args.model_name,
                 version=manifest["model_version"], workers=args.workers, batch_size=args.batch_size,
                 max_batch_delay=args.max_batch_delay, response_timeout=args.response_timeout)
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
    with open(log_dir / "console.log", "ab") as console:
        proc = subprocess.Popen(cmd, cwd=serve_dir, env=env, stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    state_file = state_path(args.inference_port)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
                                      "run": str(run), "model_name": args.model_name, "ports": ports,
                                      "logs": str(log_dir)}, indent=2))

    failure = wait_until_ready(proc, args, ports, model_log, log_offset)
    if failure:
        lines = new_log_text(model_log, log_offset).splitlines()[-40:]
        tail = "\n".join(line.split(" MODEL_LOG - ", 1)[-1] for line in lines)  # without the log4j prefixes
        print(f"error: {failure}; last lines of {model_log}:\n{tail}\n(all logs: {log_dir})", file=sys.stderr)
        stop_recorded(state_file)
        return 1
    stop_hint = "make serve-stop" if args.inference_port == 8080 else \
        f"python -m serving stop --inference-port {args.inference_port}"
    print(f"serving {manifest['model_name']} {manifest['model_version']} at "
          f"http://{HOST}:{ports['inference']}/predictions/{args.model_name}\n"
          f"  workers {args.workers}, batch size {args.batch_size}, backend {args.backend}, {threads} threads per worker\n"
          f"  management http://{HOST}:{ports['management']}  metrics http://{HOST}:{ports['metrics']}/metrics\n"
          f"  logs {log_dir}\n  stop with: {stop_hint}")
    return 0


def stop(args) -> int:
    state_file = state_path(args.inference_port)
    if not state_file.is_file():
        print(f"no server started by `python -m serving start` is recorded for port {args.inference_port}")
        return 0
    ended = stop_recorded(state_file, timeout=args.timeout)
    print(f"stopped the TorchServe on port {args.inference_port} ({ended} processes)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="serve RUN/export/model.mar with TorchServe on 127.0.0.1")
    p.add_argument("--run", required=True, help="run folder holding export/model.mar (make export)")
    p.add_argument("--model-name", default="action", help="the name in /predictions/<name>")
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ServeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
