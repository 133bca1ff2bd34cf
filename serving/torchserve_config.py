"""What one `python -m serving start` hands TorchServe: the start's options (StartOptions), its
config.properties (serving/config.properties with this start's ports, addresses and model
settings), the log4j configuration, the environment the handler reads, and the command line."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from serving.addresses import HOST, url_host

TEMPLATE = Path(__file__).with_name("config.properties")
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")
LOG_SIZE_PATTERN = re.compile(r"^\d+ ?(KB|MB|GB)$", re.IGNORECASE)  # what log4j's SizeBasedTriggeringPolicy reads


# `start` options -> the environment variables the handler reads (serving/handler.py)
DECODE_OPTIONS = {
    "decoders": "SERVING_DECODERS",
    "decode_timeout": "SERVING_DECODE_TIMEOUT",
    "decode_memory_mb": "SERVING_DECODE_MEMORY_MB",
}
DECODE_MINIMUMS = {"decoders": 1, "decode_timeout": 0.1, "decode_memory_mb": 512}  # a helper imports in ~200 MB


@dataclass(frozen=True, kw_only=True)
class StartOptions:
    """The options of one start, as `python -m serving start` documents them (its defaults live
    there); ports by listener name, as in DEFAULT_PORTS."""

    run: str  # as given: the messages repeat it (make export RUN=...)
    model_name: str
    ports: dict[str, int]
    host: str
    metrics_host: str
    token_expiration_min: float
    log_file_size: str
    log_backups: int
    foreground: bool
    workers: int
    batch_size: int
    max_batch_delay: int
    response_timeout: int
    backend: str
    threads: int  # 0: cores / workers
    max_views: int
    adaptive_views: bool
    decoders: int | None  # None: the environment's, else the handler's default
    decode_timeout: float | None
    decode_memory_mb: int | None
    timeout: float  # s to wait for the model's workers to be ready


def write_config(
    path: Path,
    *,
    ports: dict,
    model_store: Path,
    model_name: str,
    version: str,
    workers: int,
    batch_size: int,
    max_batch_delay: int,
    response_timeout: int,
    host: str = HOST,
    metrics_host: str = HOST,
    token_expiration_min: float = 60,
) -> None:
    """serving/config.properties with this start's ports, addresses, key lifetime (minutes) and
    model settings replacing its own."""
    models = {
        model_name: {
            version: {
                "defaultVersion": True,
                "marName": "model.mar",
                "minWorkers": workers,
                "maxWorkers": workers,
                "batchSize": batch_size,
                "maxBatchDelay": max_batch_delay,
                "responseTimeout": response_timeout,
            }
        }
    }
    settings = {
        "inference_address": f"http://{url_host(host)}:{ports['inference']}",
        "management_address": f"http://{HOST}:{ports['management']}",
        "metrics_address": f"http://{url_host(metrics_host)}:{ports['metrics']}",
        "grpc_inference_port": str(ports["grpc_inference"]),
        "grpc_management_port": str(ports["grpc_management"]),
        "model_store": str(model_store),
        "load_models": f"{model_name}=model.mar",
        "models": json.dumps(models),
        "token_expiration_min": f"{token_expiration_min:g}",  # TorchServe reads a double
    }
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if line.lstrip().startswith("#"):
            pass
        elif key in settings:
            line = f"{key}={settings.pop(key)}"
        lines.append(line)
    lines += ["", "# added by python -m serving start"] + [f"{k}={v}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")


def torchserve_executable() -> Path:
    """The `torchserve` launcher of this environment (installed by `make setup`)."""
    return Path(sys.executable).parent / "torchserve"


def torchserve_command(config: Path, model_store: Path) -> list[str]:
    return [
        str(torchserve_executable()),
        "--start",
        "--foreground",
        "--ts-config",
        str(config),
        "--model-store",
        str(model_store),
        "--no-config-snapshots",
        "--log-config",
        str(LOG_CONFIG),
    ]


def server_environment(
    options: StartOptions, *, threads: int, serve_dir: Path, log_dir: Path, tmp_dir: Path
) -> dict[str, str]:
    """This process's environment plus what TorchServe, serving/log4j2.xml and the handler read."""
    env = dict(
        os.environ,
        TEMP=str(tmp_dir),  # java.io.tmpdir: unpacked models and the workers' sockets
        TMPDIR=str(tmp_dir),  # the launcher's pid file, so that other TorchServes do not collide
        LOG_LOCATION=str(log_dir),
        METRICS_LOCATION=str(log_dir),  # read by serving/log4j2.xml
        SERVING_LOG_FILE_SIZE=options.log_file_size,
        SERVING_LOG_BACKUPS=str(options.log_backups),
        SERVING_BACKEND=options.backend,
        SERVING_THREADS=str(threads),
        SERVING_MAX_VIEWS=str(options.max_views),
        SERVING_VIEWS="adaptive" if options.adaptive_views else "all",
        SERVING_STATUS_DIR=str(serve_dir),
    )
    # the upload decoders' limits (serving/handler.py): given options win over the environment
    for option, name in DECODE_OPTIONS.items():
        if getattr(options, option) is not None:
            env[name] = str(getattr(options, option))
    return env
