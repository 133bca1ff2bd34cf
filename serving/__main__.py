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

This module is only the command line: starting is serving/lifecycle.py (after the checks of
serving/preflight.py), the recorded servers and their processes serving/server_records.py,
readiness and health serving/probes.py, keys serving/tokens.py, the addresses and ports
serving/addresses.py, and what TorchServe is given serving/torchserve_config.py.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from serving import lifecycle
from serving.addresses import DEFAULT_PORTS, HOST
from serving.backends import BACKEND_CHOICES
from serving.errors import ServeError
from serving.probes import ping_failure, serving_summary
from serving.server_records import no_server, recorded_state, state_path, stop_recorded
from serving.tokens import KEY_KINDS, current_key
from serving.torchserve_config import StartOptions


def start_options(args: argparse.Namespace) -> StartOptions:
    """The start command's options as the library takes them (each field is the option's dest)."""
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    return StartOptions(
        ports=ports, **{f.name: getattr(args, f.name) for f in fields(StartOptions) if f.name != "ports"}
    )


def start(args: argparse.Namespace) -> int:
    return lifecycle.start(start_options(args))


def stop(args: argparse.Namespace) -> int:
    state_file = state_path(args.inference_port)
    if not state_file.is_file():
        print(no_server(args.inference_port))
        return 0
    ended = stop_recorded(state_file, timeout=args.timeout)
    print(f"stopped the TorchServe on port {args.inference_port} ({ended} processes)")
    return 0


def health(args: argparse.Namespace) -> int:
    """The serving image's HEALTHCHECK: exit 0 only if /ping says Healthy, else one line on why."""
    failure = ping_failure(args.inference_port, args.timeout)
    if failure:
        print(f"unhealthy: {failure}", file=sys.stderr)
        return 1
    serving = serving_summary(args.inference_port)
    print(f"healthy: the TorchServe on port {args.inference_port}" + (f"; {serving}" if serving else ""))
    return 0


def key(args: argparse.Namespace) -> int:
    """Print the recorded server's key of --kind (alone on stdout, for $(...)), renewed first when
    it is about to expire: the printed key is valid for at least the renewal margin."""
    state = recorded_state(args.inference_port)
    if state is None:
        raise ServeError(no_server(args.inference_port))
    try:
        found = current_key(state, args.kind)
    except (OSError, ValueError, KeyError) as exc:
        raise ServeError(
            f"cannot read or renew the {args.kind} key in {state['key_file']} "
            f"({getattr(exc, 'reason', None) or exc}); is the server on port {args.inference_port} "
            "still running (`python -m serving health`)?"
        ) from None
    if found is None:
        raise ServeError(
            f"the server on port {args.inference_port} was started without token authorization "
            "(by an older version of this command): restart it"
        )
    print(found)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ServeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_start_command(sub)
    add_stop_command(sub)
    add_health_command(sub)
    add_key_command(sub)
    return parser


def add_start_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("start", help="serve RUN/export/model.mar with TorchServe (on 127.0.0.1 unless --host)")
    p.add_argument("--run", required=True, help="run folder holding export/model.mar (make export)")
    p.add_argument("--model-name", default="action", help="the name in /predictions/<name>")
    p.add_argument(
        "--host",
        default=HOST,
        help="address the inference listener binds (0.0.0.0: every interface); management and gRPC "
        "stay on 127.0.0.1. Token authorization is on whatever the address",
    )
    p.add_argument(
        "--metrics-host",
        default=HOST,
        help="address the Prometheus metrics listener binds (it takes no key: keep it on 127.0.0.1 "
        "unless a scraper elsewhere needs it)",
    )
    p.add_argument(
        "--token-expiration-min",
        type=float,
        default=60,
        help="minutes a key lives (--foreground renews the keys before that, `key` on demand)",
    )
    p.add_argument(
        "--log-file-size",
        default="10MB",
        help="size at which each TorchServe log file under RUN/serve/logs is rotated (KB, MB or GB)",
    )
    p.add_argument("--log-backups", type=int, default=2, help="rotated files kept per log, besides the live one")
    p.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached after readiness; SIGTERM/SIGINT stop the server (a container's entry point)",
    )
    add_model_options(p)
    p.add_argument("--timeout", type=float, default=180.0, help="s to wait for the model's workers to be ready")
    for name, default in DEFAULT_PORTS.items():
        p.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=default)
    p.set_defaults(func=start)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """How the model is served: workers, batching, backend, views and the upload decoders' limits."""
    p.add_argument("--workers", type=int, default=1, help="worker processes for the model")
    p.add_argument("--batch-size", type=int, default=1, help="requests TorchServe batches into one handler call")
    p.add_argument("--max-batch-delay", type=int, default=50, help="ms to wait for a batch to fill")
    p.add_argument("--response-timeout", type=int, default=300, help="s a worker may take for one batch")
    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_CHOICES,
        help="auto: the fastest runtime that runs here, timed by each worker; openvino: its fastest "
        "precision that passed the export's parity gate (openvino-int8, -bf16, -fp32: that one)",
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads per worker (default: cores / workers)")
    p.add_argument("--max-views", type=int, default=30, help="views per model call (bounds the memory of a batch)")
    p.add_argument(
        "--adaptive-views",
        action="store_true",
        help="answer requests that do not choose (views=all|adaptive) with adaptive views: clips "
        "coarse-to-fine until the export's calibrated stopping rule holds (SERVING_VIEWS)",
    )
    p.add_argument("--decoders", type=int, help="upload decode helpers per worker (default 2; SERVING_DECODERS)")
    p.add_argument(
        "--decode-timeout", type=float, help="s one upload's decode may take (default 30; SERVING_DECODE_TIMEOUT)"
    )
    p.add_argument(
        "--decode-memory-mb", type=int, help="address space of a decode helper (default 3072; SERVING_DECODE_MEMORY_MB)"
    )


def add_stop_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stop", help="stop the server started on --inference-port, and all its processes")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=60.0, help="s to wait before killing what did not stop")
    p.set_defaults(func=stop)


def add_health_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("health", help="exit 0 if the server started on --inference-port answers /ping with Healthy")
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument("--timeout", type=float, default=5.0, help="s to wait for the answer")
    p.set_defaults(func=health)


def add_key_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "key",
        help="print the key of the server started on --inference-port, renewed first when "
        'it is about to expire: curl -H "Authorization: Bearer $(python -m serving key)"',
    )
    p.add_argument("--inference-port", type=int, default=8080)
    p.add_argument(
        "--kind",
        choices=KEY_KINDS,
        default="inference",
        help="inference: /ping and /predictions; management: the management API (HTTP and gRPC)",
    )
    p.set_defaults(func=key)


if __name__ == "__main__":
    sys.exit(main())
