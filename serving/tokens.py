"""The server's API keys: TorchServe's token authorization is always on, and TorchServe writes
the keys into RUN/serve/key_file.json (owner only). Reading a key that stays valid for the
renewal margin, renewing keys through the token API under the key file's lock, and the
attached start's renewal schedule."""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from serving.addresses import HOST

KEY_FILE = "key_file.json"  # TorchServe writes it into its working directory, RUN/serve/
KEY_KINDS = ("inference", "management")  # the keys clients use; the key file's third, "API", only renews them
RENEW_MARGIN_S = 300.0  # keys are renewed this long (or half their lifetime, when shorter) before they expire


def read_keys(state: dict) -> dict:
    """TorchServe 0.12's key file: {"management": {"key", "expiration time"}, "inference": {...},
    "API": {"key"}} (the API key never expires). Raises OSError/ValueError while the file is not
    (completely) written."""
    return json.loads(Path(state["key_file"]).read_text())


def expiry_of(keys: dict, kind: str) -> datetime:
    """The key's expiration time; TorchServe writes nanoseconds and a Z, which Python 3.10 does not parse."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", keys[kind]["expiration time"]).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def renew_margin_s(state: dict) -> float:
    """How long before its expiry a key is renewed: 5 min, or half its lifetime when that is shorter."""
    return min(RENEW_MARGIN_S, state["token_expiration_min"] * 30.0)


@contextlib.contextmanager
def locked_key_file(state: dict):
    """An exclusive lock on the key file while a process reads or renews keys: `start` (readiness
    and --foreground), `key` and `health` may run at once, and one renewal must not make the key
    another process has just read stale, nor can anyone read the file while TorchServe rewrites
    it for a renewal (only these renewals make it rewrite the file)."""
    with open(state["key_file"], "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def request_new_key(state: dict, kind: str, api_key: str) -> None:
    """TorchServe's token API: the API key asks the management listener (loopback only) for a new
    key of `kind`, which TorchServe writes into the key file; the old key stops working."""
    url = f"http://{HOST}:{state['ports']['management']}/token?type={kind}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(request, timeout=10):
        pass


def renew_expiring_keys(state: dict, kinds: tuple[str, ...] = KEY_KINDS) -> tuple[dict, list[str]]:
    """The server's keys, after renewing those of `kinds` that expire within the margin; returns
    (keys, the kinds renewed). Raises OSError/ValueError when the key file cannot be read or the
    server does not renew."""
    with locked_key_file(state):
        keys = read_keys(state)
        renew_before = time.time() + renew_margin_s(state)
        expiring = [kind for kind in kinds if expiry_of(keys, kind).timestamp() <= renew_before]
        for kind in expiring:
            request_new_key(state, kind, keys["API"]["key"])
        return (read_keys(state) if expiring else keys), expiring


def current_key(state: dict, kind: str) -> str | None:
    """A key of `kind` ('inference' or 'management') that stays valid for at least the renewal
    margin; None for a server recorded before token authorization was always on."""
    if not state.get("key_file"):
        return None
    return renew_expiring_keys(state, (kind,))[0][kind]["key"]


def next_renewal(state: dict) -> float:
    """When (time.time()) the first of the server's keys enters its renewal margin."""
    with locked_key_file(state):
        keys = read_keys(state)
    return min(expiry_of(keys, kind).timestamp() for kind in KEY_KINDS) - renew_margin_s(state)


def renew_when_due(state: dict, renew_at: float) -> float:
    """Renew the keys that are due at `renew_at` and say so; returns the next time to look (10 s
    later when the server did not renew, e.g. while it is busy)."""
    if time.time() < renew_at:
        return renew_at
    try:
        keys, renewed = renew_expiring_keys(state)
        for kind in renewed:
            print(
                f"renewed the {kind} key in {state['key_file']} "
                f"(valid until {expiry_of(keys, kind):%Y-%m-%d %H:%M:%S} UTC)"
            )
        return next_renewal(state)
    except (OSError, ValueError, KeyError) as exc:
        print(f"warning: could not renew the keys ({exc}); trying again in 10 s", file=sys.stderr)
        return time.time() + 10
