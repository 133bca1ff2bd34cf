"""Asking a recorded server over HTTP whether it serves: readiness (/ping healthy and the
model's workers READY, what `start` waits for) and health (/ping, what `health` and the serving
image's HEALTHCHECK report), each with the server's own keys; and what its live workers serve
with, from the records they write once ready."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from serving.addresses import HOST, connect_host, url_host
from serving.server_records import no_server, recorded_state
from serving.tokens import current_key


def get_json(url: str, timeout: float = 2.0, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def inference_url(state: dict, path: str) -> str:
    return f"http://{url_host(connect_host(state['host']))}:{state['ports']['inference']}{path}"


def workers_ready(state: dict, workers: int) -> bool:
    """/ping is healthy and the model has `workers` workers in state READY."""
    try:
        if get_json(inference_url(state, "/ping"), key=current_key(state, "inference")).get("status") != "Healthy":
            return False
        described = get_json(
            f"http://{HOST}:{state['ports']['management']}/models/{state['model_name']}",
            key=current_key(state, "management"),
        )
    except (OSError, ValueError):  # not listening yet, no key file yet, or the model is not registered yet
        return False
    states = [w.get("status") for w in described[0].get("workers", [])] if described else []
    return states.count("READY") >= workers


def ping_failure(inference_port: int, timeout: float) -> str | None:
    """None if the server recorded for `inference_port` answers /ping with Healthy, else why not."""
    state = recorded_state(inference_port)
    if state is None:
        return no_server(inference_port)
    url = inference_url(state, "/ping")
    try:
        key = current_key(state, "inference")
    except (OSError, ValueError, KeyError) as exc:
        return f"no valid inference key from {state['key_file']} ({getattr(exc, 'reason', None) or exc})"
    try:
        answer = get_json(url, timeout=timeout, key=key)
    except urllib.error.HTTPError as exc:
        refused = f" (the inference key from {state['key_file']} was refused)" if key and exc.code in (400, 401) else ""
        return f"{url} answered HTTP {exc.code}{refused}"
    except (OSError, ValueError) as exc:
        return f"no answer from {url} ({getattr(exc, 'reason', None) or exc})"
    status = answer.get("status") if isinstance(answer, dict) else answer
    return None if status == "Healthy" else f"{url} answered status {status!r}"


def worker_summary(serve_dir: Path) -> str:
    """What the live workers serve with and on which device, e.g. "1 worker: onnxruntime-cuda on
    cuda:0 (NVIDIA H200)", from the records they write once ready; "" before any is ready."""
    seen: dict[str, int] = {}
    for path in sorted(serve_dir.glob("worker-*.json")):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced right now
            continue
        if not psutil.pid_exists(int(status.get("pid", -1))):
            continue
        line = f"{status['backend']} on {status['device']}" + (
            "" if status.get("parity_checked", True) else " (parity not checked at export)"
        )
        seen[line] = seen.get(line, 0) + 1
    count = sum(seen.values())
    return f"{count} worker{'s' if count != 1 else ''}: " + ", ".join(seen) if seen else ""


def serving_summary(inference_port: int) -> str:
    """worker_summary of the server recorded for `inference_port`; "" when there is nothing to say."""
    try:  # what serves is extra information: a missing or unreadable record never makes it unhealthy
        state = recorded_state(inference_port)
        return worker_summary(Path(state["run"]) / "serve") if state else ""
    except (OSError, ValueError, KeyError):
        return ""
