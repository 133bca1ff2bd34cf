"""Everything `python -m serving start` checks before it launches TorchServe, in this order (the
first failure is the one reported): the addresses, the start's settings, the run's export, the
model settings against it, the installation, servers already recorded, free ports. Each failure
is a ServeError whose message says what to do. The port check and the torchserve launcher are
the ones the demo's preflight uses too (serving/addresses.py, serving/torchserve_config.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from serving.addresses import HOST, check_local_address, parse_host, taken_ports
from serving.backends import BackendError, select_backend
from serving.errors import ServeError
from serving.manifest import MODEL_NAME_PATTERN, load_manifest
from serving.server_records import alive, server_processes, state_path
from serving.torchserve_config import DECODE_MINIMUMS, LOG_SIZE_PATTERN, StartOptions, torchserve_executable


def check_hosts(options: StartOptions) -> tuple[str, str]:
    """--host and --metrics-host as normalised IP addresses that this machine can bind."""
    host, metrics_host = parse_host(options.host), parse_host(options.metrics_host, "--metrics-host")
    check_local_address(host)
    check_local_address(metrics_host, "--metrics-host")
    return host, metrics_host


def check_startable(options: StartOptions, run: Path, hosts: dict[str, str]) -> dict:
    """Everything that can be checked before launching, each with a message that says what to
    do; returns the export's manifest."""
    check_server_settings(options)
    export_dir = run / "export"
    manifest = load_export(export_dir, options.run)
    check_model_settings(options, export_dir, manifest)
    check_installed()
    check_not_served(run, options.ports["inference"])
    check_ports_free(options.ports, hosts)
    return manifest


def check_server_settings(options: StartOptions) -> None:
    if not options.token_expiration_min > 0:
        raise ServeError("--token-expiration-min must be more than 0")
    if not LOG_SIZE_PATTERN.match(options.log_file_size) or options.log_backups < 1:
        raise ServeError(
            f"--log-file-size {options.log_file_size!r} must be a number and KB, MB or GB (e.g. '10MB'), "
            "and --log-backups at least 1"
        )


def load_export(export_dir: Path, run_text: str) -> dict:
    """The manifest of the run's export, once its archive is there (`run_text`: --run as given)."""
    mar = export_dir / "model.mar"
    if not mar.is_file():
        raise ServeError(f"no model archive at {mar}: export the run first (make export RUN={run_text})")
    return load_manifest(export_dir)


def check_model_settings(options: StartOptions, export_dir: Path, manifest: dict) -> None:
    """The model's name, workers, batch, views, decode limits and backend against the export."""
    from serving.core import adaptive_rule, unavailable_reason

    if not MODEL_NAME_PATTERN.match(options.model_name):
        raise ServeError(
            f"model name {options.model_name!r} must be letters, digits, '_', '.', '-' (it is part of the URL)"
        )
    if min(options.workers, options.batch_size, options.max_views) < 1:
        raise ServeError("--workers, --batch-size and --max-views must be at least 1")
    for option, minimum in DECODE_MINIMUMS.items():
        value = getattr(options, option)
        if value is not None and value < minimum:
            raise ServeError(f"--{option.replace('_', '-')} must be at least {minimum}, got {value}")
    if options.adaptive_views and adaptive_rule(manifest) is None:
        raise ServeError(
            f"--adaptive-views: {export_dir} has no calibrated stopping rule "
            f"({unavailable_reason(manifest)}); re-export the run (make export RUN={options.run})"
        )
    try:  # the check each worker makes on load, made here once so that a failure reads plainly
        select_backend(export_dir, manifest, prefer=options.backend, threads=1, probe_views=0)
    except BackendError as exc:
        raise ServeError(f"the model in {export_dir} cannot be served here: {exc}") from exc


def check_installed() -> None:
    """TorchServe beside this Python, and a java for its frontend."""
    if not torchserve_executable().is_file():
        raise ServeError(f"torchserve is not installed beside {sys.executable} (make setup installs .[dev,serve])")
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise ServeError("java not found: TorchServe needs Java 17 (set JAVA_HOME or put java on PATH)")


def check_not_served(run: Path, inference_port: int) -> None:
    """No live recorded server on `inference_port` nor for `run`; records of servers that are
    gone are removed on the way."""
    state_file = state_path(inference_port)
    for recorded_file in state_file.parent.glob("*.json"):
        recorded = json.loads(recorded_file.read_text())
        if not alive(server_processes(recorded)):
            recorded_file.unlink()  # a server that is gone (machine restarted, processes killed)
        elif recorded_file == state_file:
            raise ServeError(
                f"a server started by `python -m serving start` already runs on port {inference_port} "
                f"(pid {recorded['pid']}, run {recorded['run']}): stop it with `make serve-stop` first"
            )
        elif recorded["run"] == str(run):
            raise ServeError(
                f"run {run} is already served on port {recorded['ports']['inference']} (its logs and "
                f"unpacked model live in {run / 'serve'}): stop that server first"
            )


def check_ports_free(ports: dict[str, int], hosts: dict[str, str]) -> None:
    only_loopback = set(hosts.values()) == {HOST}
    taken = [
        f"{name.replace('_', ' ')} {ports[name]}" + ("" if only_loopback else f" on {hosts[name]}")
        for name in taken_ports(ports, hosts)
    ]
    if taken:
        where = f" on {HOST}" if only_loopback else ""
        raise ServeError(
            f"port(s) already in use{where}: {', '.join(taken)}; stop the program using them "
            "(`make serve-stop` stops a server started by `make serve`) or choose other ports"
        )
