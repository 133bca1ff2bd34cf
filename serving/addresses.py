"""Where TorchServe's listeners live: the five ports, the address each binds, and whether a port
is free there (one check for `python -m serving start` and the demo's preflight)."""

from __future__ import annotations

import ipaddress
import socket

from serving.errors import ServeError

HOST = "127.0.0.1"  # management and gRPC always, inference and metrics unless --host / --metrics-host say otherwise
# TorchServe's listeners and their default ports, in the order of the start options
DEFAULT_PORTS = {
    "inference": 8080,
    "management": 8081,
    "metrics": 8082,
    "grpc_inference": 7070,
    "grpc_management": 7071,
}


def parse_host(text: str, option: str = "--host") -> str:
    """--host / --metrics-host as a normalised IP address ('localhost' is 127.0.0.1): TorchServe's
    addresses are URLs, and the port checks bind the same address."""
    try:
        return str(ipaddress.ip_address("127.0.0.1" if text == "localhost" else text))
    except ValueError:
        raise ServeError(
            f"{option} {text!r} is not an IP address: give 127.0.0.1 (this machine only), "
            "0.0.0.0 (every interface) or one of this machine's addresses"
        ) from None


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


def taken_ports(ports: dict[str, int], hosts: dict[str, str]) -> list[str]:
    """The names of the listeners whose port is already in use on the address it binds."""
    return [name for name, port in ports.items() if port_in_use(port, hosts[name])]


def check_local_address(host: str, option: str = "--host") -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            raise ServeError(
                f"{option} {host} cannot be bound here ({exc.strerror}): it must be one of this "
                "machine's addresses, 0.0.0.0 or 127.0.0.1"
            ) from None


def listener_hosts(host: str, metrics_host: str) -> dict[str, str]:
    """The address each of TorchServe's listeners binds, by port name."""
    return {
        "inference": host,
        "management": HOST,
        "metrics": metrics_host,
        "grpc_inference": HOST,
        "grpc_management": HOST,
    }
