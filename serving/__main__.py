"""`python -m serving start|stop|health|key`: TorchServe from this environment with a run's
exported archive (what `make serve` / `make serve-stop` call, and the serving image's entry
point and health check).

start: writes RUN/serve/config.properties (serving/config.properties plus this start's ports,
addresses and model settings), launches `torchserve --foreground` in its own session with its
logs (rotated by size: serving/log4j2.xml), temporary files and pid file under RUN/serve/,
waits until the model's workers are READY (with a deadline), and records the server in a state
file named after the inference port. The inference listener binds --host and the metrics
listener --metrics-host (both 127.0.0.1 unless told); management and gRPC always stay on
127.0.0.1. TorchServe's token authorization is always on, on loopback too: its switch covers
inference and management, HTTP and gRPC alike, and without it any local process, or a web
page through DNS rebinding, could scale the model to 0 workers through the management API.
TorchServe writes the keys into RUN/serve/key_file.json (owner only); every inference call
needs `Authorization: Bearer <inference key>`, every management call the management key.
With --foreground, start stays attached after readiness (a container's PID 1): SIGTERM/SIGINT
stop the server and exit 0, a server that dies on its own exits 1, and the keys are renewed
before they expire.
stop: ends that server's process tree (launcher, Java frontend, Python workers) by signals
(no key needed) and checks that none of them is left.
health: GET /ping of the recorded server (with its inference key); exit 0 only if Healthy.
key: prints the recorded server's inference (or management) key, renewed first when it is
about to expire, for `curl -H "Authorization: Bearer $(python -m serving key)"`.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

from serving.addresses import DEFAULT_PORTS, HOST, is_loopback, listener_hosts, url_host
from serving.backends import BACKEND_CHOICES
from serving.errors import ServeError
from serving.preflight import check_hosts, check_startable
from serving.probes import inference_url, ping_failure, serving_summary, workers_ready
from serving.server_records import no_server, record_server, recorded_state, state_path, stop_recorded
from serving.tokens import KEY_FILE, KEY_KINDS, current_key, next_renewal, renew_when_due
from serving.torchserve_config import StartOptions, server_environment, torchserve_command, write_config


def new_log_text(path: Path, offset: int) -> str:
    """What was appended to a log file since it had `offset` bytes (TorchServe appends); all of
    it once the file is smaller than that (log4j rolled it over and started a new one)."""
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(offset if offset <= os.fstat(f.fileno()).st_size else 0)
        return f.read().decode(errors="replace")


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def catch_stop_signals() -> list[int]:
    """SIGTERM and SIGINT are appended to the returned list instead of ending this process, so
    that start stops TorchServe first. As a container's PID 1 this process would otherwise
    ignore SIGTERM (the kernel sends PID 1 no signal it has no handler for)."""
    caught: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: caught.append(number))
    return caught


def wait_until_ready(proc: subprocess.Popen, state: dict, options: StartOptions, model_log: Path, log_offset: int,
                     caught: list[int]) -> str | None:
    """None once the model's workers are READY, else why not. TorchServe restarts a worker that
    fails to load forever, so the first failure in the model log ends the wait."""
    deadline = time.monotonic() + options.timeout
    while not workers_ready(state, options.workers):
        if caught:
            return f"interrupted by {signal.Signals(caught[0]).name}"
        if proc.poll() is not None:
            return f"TorchServe exited with code {proc.returncode}"
        if "Backend worker process died" in new_log_text(model_log, log_offset):
            return "the model's worker failed to load"
        if time.monotonic() > deadline:
            return f"the model was not ready within {options.timeout:.0f} s"
        time.sleep(0.5)
    return None


def stay_attached(proc: subprocess.Popen, state_file: Path, state: dict, caught: list[int]) -> int:
    """--foreground after readiness: until SIGTERM/SIGINT (stop the server, exit 0) or the end of
    TorchServe on its own (clean up what is left, exit 1). The keys are renewed a margin before
    they expire (5 min, or half their lifetime when shorter), so that the key file and `health`
    stay valid for as long as the server runs (`key` renews on demand too; whichever comes first
    renews, under the key file's lock)."""
    renew_at = next_renewal(state)
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
        renew_at = renew_when_due(state, renew_at)
        time.sleep(0.5)
    ended = stop_recorded(state_file)
    print(f"stopped the TorchServe on port {state['ports']['inference']} on {signal.Signals(caught[0]).name} "
          f"({ended} processes)")
    return 0


def roll_console_log(log_dir: Path, backups: int) -> Path:
    """console.log -> console.1.log -> ... at each start, keeping `backups` old ones. The console
    gets only what bypasses log4j (the JVM's own warnings, a crash), a few lines a start, but
    nothing else would ever bound it."""
    console = log_dir / "console.log"
    for n in range(backups, 0, -1):
        older = log_dir / (f"console.{n - 1}.log" if n > 1 else "console.log")
        if older.is_file():
            older.replace(log_dir / f"console.{n}.log")
    return console


def private_file(path: str, flags: int) -> int:
    """open()'s opener for a file only its owner may read (a new file; an existing one keeps its mode)."""
    return os.open(path, flags, 0o600)


def key_command(inference_port: int, kind: str = "inference") -> str:
    """The shell command that prints the key of the server on `inference_port`."""
    command = f"{shlex.quote(sys.executable)} -m serving key"
    if inference_port != 8080:
        command += f" --inference-port {inference_port}"
    return command + ("" if kind == "inference" else f" --kind {kind}")


def curl_example(state: dict) -> str:
    """A ready-to-paste request: the key comes from `serving key` when curl runs, so it is neither
    printed here nor stale after a renewal."""
    url = inference_url(state, f"/predictions/{state['model_name']}")
    return (f'curl -H "Authorization: Bearer $({key_command(state["ports"]["inference"])})" '
            f'-H "Content-Type: application/octet-stream" --data-binary @VIDEO.mp4 {url}')


def start_options(args: argparse.Namespace) -> StartOptions:
    """The start command's options as the library takes them (each field is the option's dest)."""
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    return StartOptions(ports=ports, **{f.name: getattr(args, f.name) for f in fields(StartOptions)
                                        if f.name != "ports"})


def start(args) -> int:
    options = start_options(args)
    host, metrics_host = check_hosts(options)
    run = Path(options.run).resolve()
    ports = options.ports
    manifest = check_startable(options, run, listener_hosts(host, metrics_host))
    if not is_loopback(metrics_host):
        print(f"warning: the metrics listener on {metrics_host} needs no key: anyone who reaches "
              f"{metrics_host}:{options.ports['metrics']} can read the server's metrics", file=sys.stderr)
    if options.foreground:
        sys.stdout.reconfigure(line_buffering=True)  # a container's log shows each line as it comes

    export_dir, serve_dir = run / "export", run / "serve"
    log_dir, tmp_dir = serve_dir / "logs", serve_dir / "tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)  # models unpacked by an earlier start
    log_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir.mkdir(parents=True)
    key_file = serve_dir / KEY_FILE
    key_file.unlink(missing_ok=True)  # an earlier start's keys: readiness and health must wait for this one's
    for stale in serve_dir.glob("worker-*.json"):  # an earlier start's workers
        stale.unlink(missing_ok=True)
    config = serve_dir / "config.properties"
    write_config(config, ports=ports, model_store=export_dir, model_name=options.model_name,
                 version=manifest["model_version"], workers=options.workers, batch_size=options.batch_size,
                 max_batch_delay=options.max_batch_delay, response_timeout=options.response_timeout, host=host,
                 metrics_host=metrics_host, token_expiration_min=options.token_expiration_min)
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.workers)
    env = server_environment(options, threads=threads, serve_dir=serve_dir, log_dir=log_dir, tmp_dir=tmp_dir)
    model_log = log_dir / "model_log.log"
    log_offset = file_size(model_log)  # TorchServe appends to the logs of earlier starts
    cmd = torchserve_command(config, export_dir)
    caught = catch_stop_signals()
    with open(roll_console_log(log_dir, options.log_backups), "ab", opener=private_file) as console:
        # umask 077: TorchServe creates key_file.json with the process umask and only then narrows
        # it to 0600, so that with the usual 022 the keys are world-readable for a moment; its
        # logs and unpacked model are the server user's alone too
        proc = subprocess.Popen(cmd, cwd=serve_dir, env=env, stdout=console, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
    state_file, state = record_server(proc.pid, run=str(run), model_name=options.model_name, ports=ports, host=host,
                                      metrics_host=metrics_host, key_file=str(key_file),
                                      token_expiration_min=options.token_expiration_min, logs=str(log_dir))

    failure = wait_until_ready(proc, state, options, model_log, log_offset, caught)
    if failure and caught:
        stop_recorded(state_file)
        print(f"stopped the TorchServe on port {options.ports['inference']} before it was ready: {failure}",
              file=sys.stderr)
        return 0 if options.foreground else 128 + caught[0]
    if failure:
        lines = new_log_text(model_log, log_offset).splitlines()[-40:]
        tail = "\n".join(line.split(" MODEL_LOG - ", 1)[-1] for line in lines)  # without the log4j prefixes
        print(f"error: {failure}; last lines of {model_log}:\n{tail}\n(all logs: {log_dir})", file=sys.stderr)
        stop_recorded(state_file)
        return 1
    print_started(options, state, manifest, threads)
    if not options.foreground:
        return 0
    return stay_attached(proc, state_file, state, caught)


def print_started(options: StartOptions, state: dict, manifest: dict, threads: int) -> None:
    ports, port = state["ports"], options.ports["inference"]
    stop_hint = "make serve-stop" if port == 8080 else f"python -m serving stop --inference-port {port}"
    if options.foreground:
        stop_hint = f"SIGTERM or Ctrl-C to this process, or {stop_hint}"
    renewal = "renewed before they expire while this process runs" if options.foreground else \
        f"valid {options.token_expiration_min:g} min; `serving key` renews one that is about to expire"
    print(f"serving {manifest['model_name']} {manifest['model_version']} at "
          f"http://{url_host(state['host'])}:{ports['inference']}/predictions/{options.model_name}\n"
          f"  workers {options.workers}, batch size {options.batch_size}, backend {options.backend}, "
          f"{threads} threads per worker, {'adaptive' if options.adaptive_views else 'all'} views by default\n"
          f"  management http://{HOST}:{ports['management']} (management key)  "
          f"metrics http://{url_host(state['metrics_host'])}:{ports['metrics']}/metrics (no key)\n"
          f"  keys in {state['key_file']} ({renewal}): every inference and management call needs its key\n"
          f"    inference key: {key_command(port)}\n"
          f"    management key: {key_command(port, 'management')}\n"
          f"  logs {state['logs']} (each file rotated at {options.log_file_size}, {options.log_backups} rotated kept)\n"
          f"  try: {curl_example(state)}\n"
          f"  stop with: {stop_hint}")


def stop(args) -> int:
    state_file = state_path(args.inference_port)
    if not state_file.is_file():
        print(f"no server started by `python -m serving start` is recorded for port {args.inference_port}")
        return 0
    ended = stop_recorded(state_file, timeout=args.timeout)
    print(f"stopped the TorchServe on port {args.inference_port} ({ended} processes)")
    return 0


def health(args) -> int:
    """The serving image's HEALTHCHECK: exit 0 only if /ping says Healthy, else one line on why."""
    failure = ping_failure(args.inference_port, args.timeout)
    if failure:
        print(f"unhealthy: {failure}", file=sys.stderr)
        return 1
    serving = serving_summary(args.inference_port)
    print(f"healthy: the TorchServe on port {args.inference_port}" + (f"; {serving}" if serving else ""))
    return 0


def key(args) -> int:
    """Print the recorded server's key of --kind (alone on stdout, for $(...)), renewed first when
    it is about to expire: the printed key is valid for at least the renewal margin."""
    state = recorded_state(args.inference_port)
    if state is None:
        raise ServeError(no_server(args.inference_port))
    try:
        found = current_key(state, args.kind)
    except (OSError, ValueError, KeyError) as exc:
        raise ServeError(f"cannot read or renew the {args.kind} key in {state['key_file']} "
                         f"({getattr(exc, 'reason', None) or exc}); is the server on port {args.inference_port} "
                         "still running (`python -m serving health`)?") from None
    if found is None:
        raise ServeError(f"the server on port {args.inference_port} was started without token authorization "
                         "(by an older version of this command): restart it")
    print(found)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="serve RUN/export/model.mar with TorchServe (on 127.0.0.1 unless --host)")
    p.add_argument("--run", required=True, help="run folder holding export/model.mar (make export)")
    p.add_argument("--model-name", default="action", help="the name in /predictions/<name>")
    p.add_argument("--host", default=HOST,
                   help="address the inference listener binds (0.0.0.0: every interface); management and gRPC "
                        "stay on 127.0.0.1. Token authorization is on whatever the address")
    p.add_argument("--metrics-host", default=HOST,
                   help="address the Prometheus metrics listener binds (it takes no key: keep it on 127.0.0.1 "
                        "unless a scraper elsewhere needs it)")
    p.add_argument("--token-expiration-min", type=float, default=60,
                   help="minutes a key lives (--foreground renews the keys before that, `key` on demand)")
    p.add_argument("--log-file-size", default="10MB",
                   help="size at which each TorchServe log file under RUN/serve/logs is rotated (KB, MB or GB)")
    p.add_argument("--log-backups", type=int, default=2, help="rotated files kept per log, besides the live one")
    p.add_argument("--foreground", action="store_true",
                   help="stay attached after readiness; SIGTERM/SIGINT stop the server (a container's entry point)")
    p.add_argument("--workers", type=int, default=1, help="worker processes for the model")
    p.add_argument("--batch-size", type=int, default=1, help="requests TorchServe batches into one handler call")
    p.add_argument("--max-batch-delay", type=int, default=50, help="ms to wait for a batch to fill")
    p.add_argument("--response-timeout", type=int, default=300, help="s a worker may take for one batch")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="auto: the fastest runtime that runs here, timed by each worker; openvino: its fastest "
                        "precision that passed the export's parity gate (openvino-int8, -bf16, -fp32: that one)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per worker (default: cores / workers)")
    p.add_argument("--max-views", type=int, default=30, help="views per model call (bounds the memory of a batch)")
    p.add_argument("--adaptive-views", action="store_true",
                   help="answer requests that do not choose (views=all|adaptive) with adaptive views: clips "
                        "coarse-to-fine until the export's calibrated stopping rule holds (SERVING_VIEWS)")
    p.add_argument("--decoders", type=int, help="upload decode helpers per worker (default 2; SERVING_DECODERS)")
    p.add_argument("--decode-timeout", type=float,
                   help="s one upload's decode may take (default 30; SERVING_DECODE_TIMEOUT)")
    p.add_argument("--decode-memory-mb", type=int,
                   help="address space of a decode helper (default 3072; SERVING_DECODE_MEMORY_MB)")
    p.add_argument("--timeout", type=float, default=180.0, help="s to wait for the model's workers to be ready")
    for name, default in DEFAULT_PORTS.items():
        p.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=default)
    p.set_defaults(func=start)
    p = sub.add_parser("stop", help="stop the server started on --inference-port, and all its processes")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=60.0, help="s to wait before killing what did not stop")
    p.set_defaults(func=stop)
    p = sub.add_parser("health", help="exit 0 if the server started on --inference-port answers /ping with Healthy")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=5.0, help="s to wait for the answer")
    p.set_defaults(func=health)
    p = sub.add_parser("key", help="print the key of the server started on --inference-port, renewed first when "
                                   "it is about to expire: curl -H \"Authorization: Bearer $(python -m serving key)\"")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--kind", choices=KEY_KINDS, default="inference",
                   help="inference: /ping and /predictions; management: the management API (HTTP and gRPC)")
    p.set_defaults(func=key)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ServeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
