"""Starting TorchServe with a run's exported archive, as `python -m serving start` does: after
the preflight, RUN/serve/ is prepared (config.properties, empty tmp/, logs/), `torchserve
--foreground` is launched in its own session with its logs (rotated by size) and temporary files
under RUN/serve/, the server is recorded in the state file of its inference port, and start
waits until the model's workers are READY (with a deadline). With --foreground it stays attached
after readiness (a container's PID 1): SIGTERM/SIGINT stop the server and exit 0, a server that
dies on its own exits 1, and the keys are renewed before they expire. Stopping, health and keys
live in serving/server_records.py, serving/probes.py and serving/tokens.py."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from serving.addresses import HOST, is_loopback, listener_hosts, url_host
from serving.preflight import check_hosts, check_startable
from serving.probes import inference_url, workers_ready
from serving.server_records import record_server, stop_recorded
from serving.tokens import KEY_FILE, next_renewal, renew_when_due
from serving.torchserve_config import StartOptions, server_environment, torchserve_command, write_config


def start(options: StartOptions) -> int:
    """Launch TorchServe with the export of options.run and wait until the model's workers are
    READY; with options.foreground, stay attached until a stop signal or the server's end.
    Returns the exit code of `python -m serving start`."""
    host, metrics_host = check_hosts(options)
    run = Path(options.run).resolve()
    manifest = check_startable(options, run, listener_hosts(host, metrics_host))
    warn_if_metrics_exposed(metrics_host, options.ports["metrics"])
    if options.foreground:
        # a container's log shows each line as it comes
        cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)

    serve = prepare_serve_dir(run)
    write_server_config(serve, options, manifest, host=host, metrics_host=metrics_host)
    threads = options.threads or max(1, (os.cpu_count() or 1) // options.workers)
    env = server_environment(options, threads=threads, serve_dir=serve.path, log_dir=serve.logs, tmp_dir=serve.tmp)
    log_offset = file_size(serve.model_log)  # TorchServe appends to the logs of earlier starts
    caught = catch_stop_signals()
    proc = launch(torchserve_command(serve.config, serve.export), env, serve, options.log_backups)
    state_file, state = record_server(
        proc.pid,
        run=str(run),
        model_name=options.model_name,
        ports=options.ports,
        host=host,
        metrics_host=metrics_host,
        key_file=str(serve.key_file),
        token_expiration_min=options.token_expiration_min,
        logs=str(serve.logs),
    )

    failure = wait_until_ready(
        proc,
        state,
        caught,
        workers=options.workers,
        timeout=options.timeout,
        model_log=serve.model_log,
        log_offset=log_offset,
    )
    if failure:
        return stop_unready(
            state_file, state, failure, caught, foreground=options.foreground, serve=serve, log_offset=log_offset
        )
    print_started(options, state, manifest, threads)
    if not options.foreground:
        return 0
    return stay_attached(proc, state_file, state, caught)


@dataclass(frozen=True)
class ServeDir:
    """RUN/serve/: TorchServe's working directory (its config, key file and the workers' records),
    with its logs and temporary files; the model store is the run's export."""

    path: Path

    @property
    def export(self) -> Path:
        return self.path.parent / "export"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def config(self) -> Path:
        return self.path / "config.properties"

    @property
    def key_file(self) -> Path:
        return self.path / KEY_FILE

    @property
    def model_log(self) -> Path:
        return self.logs / "model_log.log"


def write_server_config(
    serve: ServeDir, options: StartOptions, manifest: dict, *, host: str, metrics_host: str
) -> None:
    """TorchServe's config.properties for this start: ports, model, workers, batching, token expiry."""
    write_config(
        serve.config,
        ports=options.ports,
        model_store=serve.export,
        model_name=options.model_name,
        version=manifest["model_version"],
        workers=options.workers,
        batch_size=options.batch_size,
        max_batch_delay=options.max_batch_delay,
        response_timeout=options.response_timeout,
        host=host,
        metrics_host=metrics_host,
        token_expiration_min=options.token_expiration_min,
    )


def prepare_serve_dir(run: Path) -> ServeDir:
    """RUN/serve/ with logs/ and an empty tmp/, without what an earlier start left that this
    one's readiness and health would mistake for its own."""
    serve = ServeDir(run / "serve")
    shutil.rmtree(serve.tmp, ignore_errors=True)  # models unpacked by an earlier start
    serve.logs.mkdir(parents=True, exist_ok=True)
    serve.tmp.mkdir(parents=True)
    serve.key_file.unlink(missing_ok=True)  # an earlier start's keys: readiness and health must wait for this one's
    for stale in serve.path.glob("worker-*.json"):  # an earlier start's workers
        stale.unlink(missing_ok=True)
    return serve


def warn_if_metrics_exposed(metrics_host: str, metrics_port: int) -> None:
    if not is_loopback(metrics_host):
        print(
            f"warning: the metrics listener on {metrics_host} needs no key: anyone who reaches "
            f"{metrics_host}:{metrics_port} can read the server's metrics",
            file=sys.stderr,
        )


def catch_stop_signals() -> list[int]:
    """SIGTERM and SIGINT are appended to the returned list instead of ending this process, so
    that start stops TorchServe first. As a container's PID 1 this process would otherwise
    ignore SIGTERM (the kernel sends PID 1 no signal it has no handler for)."""
    caught: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: caught.append(number))
    return caught


def launch(command: list[str], env: dict[str, str], serve: ServeDir, log_backups: int) -> subprocess.Popen:
    """TorchServe in a session of its own (its process group is how `stop` finds the whole tree),
    its console appended to RUN/serve/logs/console.log."""
    with open(roll_console_log(serve.logs, log_backups), "ab", opener=private_file) as console:
        # umask 077: TorchServe creates key_file.json with the process umask and only then narrows
        # it to 0600, so that with the usual 022 the keys are world-readable for a moment; its
        # logs and unpacked model are the server user's alone too
        return subprocess.Popen(
            command,
            cwd=serve.path,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            umask=0o077,
        )


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


def wait_until_ready(
    proc: subprocess.Popen,
    state: dict,
    caught: list[int],
    *,
    workers: int,
    timeout: float,
    model_log: Path,
    log_offset: int,
) -> str | None:
    """None once the model's `workers` are READY, else why not. TorchServe restarts a worker that
    fails to load forever, so the first failure in the model log ends the wait."""
    deadline = time.monotonic() + timeout
    while not workers_ready(state, workers):
        if caught:
            return f"interrupted by {signal.Signals(caught[0]).name}"
        if proc.poll() is not None:
            return f"TorchServe exited with code {proc.returncode}"
        if "Backend worker process died" in new_log_text(model_log, log_offset):
            return "the model's worker failed to load"
        if time.monotonic() > deadline:
            return f"the model was not ready within {timeout:.0f} s"
        time.sleep(0.5)
    return None


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


def stop_unready(
    state_file: Path,
    state: dict,
    failure: str,
    caught: list[int],
    *,
    foreground: bool,
    serve: ServeDir,
    log_offset: int,
) -> int:
    """Stop a server whose workers did not become ready and say why; returns start's exit code:
    a stop signal is a stop asked for (0 attached, else 128 + the signal), anything else is 1,
    reported with the model log's new lines."""
    if caught:
        stop_recorded(state_file)
        print(
            f"stopped the TorchServe on port {state['ports']['inference']} before it was ready: {failure}",
            file=sys.stderr,
        )
        return 0 if foreground else 128 + caught[0]
    lines = new_log_text(serve.model_log, log_offset).splitlines()[-40:]
    tail = "\n".join(line.split(" MODEL_LOG - ", 1)[-1] for line in lines)  # without the log4j prefixes
    print(f"error: {failure}; last lines of {serve.model_log}:\n{tail}\n(all logs: {serve.logs})", file=sys.stderr)
    stop_recorded(state_file)
    return 1


def print_started(options: StartOptions, state: dict, manifest: dict, threads: int) -> None:
    ports, port = state["ports"], options.ports["inference"]
    stop_hint = "make serve-stop" if port == 8080 else f"python -m serving stop --inference-port {port}"
    if options.foreground:
        stop_hint = f"SIGTERM or Ctrl-C to this process, or {stop_hint}"
    renewal = (
        "renewed before they expire while this process runs"
        if options.foreground
        else f"valid {options.token_expiration_min:g} min; `serving key` renews one that is about to expire"
    )
    print(
        f"serving {manifest['model_name']} {manifest['model_version']} at "
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
        f"  stop with: {stop_hint}"
    )


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
    return (
        f'curl -H "Authorization: Bearer $({key_command(state["ports"]["inference"])})" '
        f'-H "Content-Type: application/octet-stream" --data-binary @VIDEO.mp4 {url}'
    )


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
            print(
                f"error: TorchServe exited on its own with code {proc.returncode} (logs: {state['logs']})",
                file=sys.stderr,
            )
            return 1
        renew_at = renew_when_due(state, renew_at)
        time.sleep(0.5)
    ended = stop_recorded(state_file)
    print(
        f"stopped the TorchServe on port {state['ports']['inference']} on {signal.Signals(caught[0]).name} "
        f"({ended} processes)"
    )
    return 0
