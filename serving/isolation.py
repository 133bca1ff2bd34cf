"""Upload decoding in isolated, bounded helper processes.

A TorchServe worker holds the model; an upload's bytes are parsed only in one of a few helper
processes that the worker starts ahead of time (`DecodePool`). Each helper runs
`training.view_decode.read_view_crops` under hard limits:

- address space (RLIMIT_AS): an allocation past it fails inside the helper (MemoryError, or an
  abort in native code), never in the worker;
- CPU time per job (RLIMIT_CPU, raised before each job to the time used so far + the budget):
  the kernel ends a helper that spins;
- wall time: the worker stops waiting and kills the helper;
- what it returns: the crops are written into a shared buffer sized by the worker for exactly
  the views asked for, and the reply is a short JSON message of bounded length;
- no core dumps, no file writes (RLIMIT_FSIZE 0), few descriptors, stdout and stderr to
  /dev/null (FFmpeg's messages can quote the upload).

Data crosses the process boundary once each way through one anonymous memory file (memfd)
passed over a Unix socket: the upload in, the uint8 crops out (a 10 x 3 request of 8 frames at
256 px is 47 MB of crops; normalizing them into 189 MB of float views happens in the worker,
in place). A helper that crashes, runs out of memory or time is replaced, and its request gets
a 422 JSON answer; a request that finds every helper busy for `queue_seconds` gets a 503.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import queue
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import numpy as np

from training.view_decode import UPLOAD_FORMATS, DecodeLimits, VideoRejected, ViewGeometry, read_view_crops

log = logging.getLogger(__name__)

T = TypeVar("T")
# a helper that answered these may hold memory or native state the failure left behind: it is
# replaced rather than given the next upload
RETIRE_AFTER = ("decode_memory_limit", "decode_failed")
MAX_MESSAGE = 64 * 1024  # bytes of one control message (JSON)
STARTUP_SECONDS = 60.0  # a helper's imports on a loaded machine


@dataclass(frozen=True)
class HelperLimits:
    """The hard limits of one helper process and of one job in it."""

    memory_mb: int = 3072  # address space: an 8K HEVC frame is 53 MB, its decoder keeps ~20
    cpu_seconds: int = 60  # CPU time per job (2 decoder threads: ~2x the wall limit)
    wall_seconds: float = 35.0  # the worker kills a helper that takes longer (decode limit + slack)
    threads: int = 2  # decoder threads
    decode: DecodeLimits = field(default_factory=DecodeLimits)


class RejectedUpload(Exception):
    """An upload answered with a 4xx or 503: `status`, `code`, `detail` (from the helper or
    from the way it ended)."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


# ----------------------------------------------------------------------------- messages
def send_message(sock: socket.socket, message: dict, fds: Sequence[int] = ()) -> None:
    payload = json.dumps(message).encode()
    data = struct.pack("!I", len(payload)) + payload
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def receive_message(sock: socket.socket) -> tuple[dict, list[int]]:
    """One length-prefixed JSON message (and the descriptors sent with it); EOFError when the
    peer is gone, ValueError on a message that breaks the protocol."""
    head, fds, _, _ = socket.recv_fds(sock, 4, 4)
    if not head:
        raise EOFError("the peer closed the connection")
    while len(head) < 4:
        more = sock.recv(4 - len(head))
        if not more:
            raise EOFError("the peer closed the connection")
        head += more
    (size,) = struct.unpack("!I", head)
    if size > MAX_MESSAGE:
        raise ValueError(f"a message of {size} bytes (limit {MAX_MESSAGE})")
    body = b""
    while len(body) < size:
        more = sock.recv(size - len(body))
        if not more:
            raise EOFError("the peer closed the connection")
        body += more
    return json.loads(body), fds


# ----------------------------------------------------------------------------- worker side
class Helper:
    """One helper process and the worker's end of its socket."""

    def __init__(self, limits: HelperLimits):
        self.limits = limits
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.isolation", str(theirs.fileno()), json.dumps(asdict(limits))],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        theirs.close()
        self.sock = ours
        self.ready = False
        self.killed_by_us = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> None:
        if not self.ready:
            self.sock.settimeout(STARTUP_SECONDS)
            message, _ = receive_message(self.sock)
            if message.get("ready") != self.pid:
                raise ValueError(f"unexpected greeting {message!r}")
            self.ready = True

    def run(self, job: dict, memfd: int) -> dict:
        self.wait_ready()
        send_message(self.sock, job, [memfd])
        self.sock.settimeout(self.limits.wall_seconds)
        reply, fds = receive_message(self.sock)
        for fd in fds:
            os.close(fd)
        return reply

    def kill(self) -> None:
        self.killed_by_us = True
        self.process.kill()
        self.process.wait()
        self.sock.close()

    def close(self, timeout: float = 5.0) -> None:
        self.sock.close()  # the helper reads EOF and exits
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def ended_helper_error(helper: Helper, what: str) -> RejectedUpload:
    """The 422 for a helper that did not answer, from how it ended."""
    code = helper.process.returncode
    if helper.killed_by_us and what == "timeout":
        return RejectedUpload(
            422, "decode_timeout", f"decoding the upload took longer than {helper.limits.wall_seconds:g} s"
        )
    if code == -signal.SIGXCPU:
        return RejectedUpload(
            422, "decode_cpu_limit", f"decoding the upload used more than {helper.limits.cpu_seconds} s of CPU time"
        )
    if code == -signal.SIGKILL and not helper.killed_by_us:  # the kernel's out-of-memory killer
        return RejectedUpload(
            422, "decode_memory_limit", "decoding the upload needed more memory than the machine could give"
        )
    reason = signal.Signals(-code).name if code is not None and code < 0 else f"exit status {code}"
    return RejectedUpload(
        422, "decoder_crashed", f"the decoder failed on this file ({reason}); the file is malformed or hostile"
    )


class DecodePool:
    """`size` pre-started helpers; `decode` runs one upload in an idle one (thread-safe)."""

    def __init__(self, size: int = 2, *, limits: HelperLimits = HelperLimits(), queue_seconds: float = 10.0):
        if size < 1:
            raise ValueError(f"a decode pool needs at least 1 helper, got {size}")
        self.limits, self.queue_seconds = limits, queue_seconds
        self.idle: queue.Queue[Helper] = queue.Queue()
        self.lock = threading.Lock()
        self.helpers: list[Helper] = []
        self.replaced = 0
        for _ in range(size):
            self._add(Helper(limits))

    def _add(self, helper: Helper) -> None:
        with self.lock:
            self.helpers.append(helper)
        self.idle.put(helper)

    def _replace(self, helper: Helper) -> None:
        with self.lock:
            self.helpers.remove(helper)
            self.replaced += 1
        self._add(Helper(self.limits))

    def pids(self) -> list[int]:
        with self.lock:
            return [h.pid for h in self.helpers]

    def wait_ready(self) -> None:
        """Block until every helper has started (so the first request does not wait for imports)."""
        with self.lock:
            helpers = list(self.helpers)
        for helper in helpers:
            helper.wait_ready()

    def decode(self, data: bytes, geometry: ViewGeometry, convert: Callable[[np.ndarray], T]) -> tuple[T, dict]:
        """(convert(crops), info) for one upload: its uint8 crops (`geometry.shape`) are passed
        to `convert` while they are in shared memory; RejectedUpload for every refusal."""
        if geometry.tg_stride is not None:
            raise ValueError("the pool decodes serving views only (no temporal-gradient successors)")
        helper = self._idle_helper()
        memfd = os.memfd_create("upload", os.MFD_CLOEXEC)
        try:
            out_offset = (len(data) + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
            os.ftruncate(memfd, out_offset + geometry.nbytes)
            with mmap.mmap(memfd, out_offset + geometry.nbytes) as shared:
                shared[: len(data)] = data
                job = {"in_len": len(data), "out_offset": out_offset, "geometry": asdict(geometry)}
                reply = self._run(helper, job, memfd)
                if not reply.get("ok"):
                    raise RejectedUpload(
                        int(reply.get("status", 422)),
                        str(reply.get("code", "undecodable_video")),
                        str(reply.get("detail", ""))[:500],
                    )
                crops = np.ndarray(geometry.shape, dtype=np.uint8, buffer=shared, offset=out_offset)
                try:
                    result = convert(crops)
                finally:
                    del crops  # no view may outlive the mapping
                return result, reply.get("info", {})
        finally:
            os.close(memfd)

    def _idle_helper(self) -> Helper:
        """An idle, live helper; one that died while idle is replaced first."""
        deadline = time.monotonic() + self.queue_seconds
        while True:
            try:
                helper = self.idle.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RejectedUpload(
                    503, "decoders_busy", f"every decoder was busy for {self.queue_seconds:g} s; retry later"
                ) from None
            if helper.process.poll() is None:
                return helper
            log.warning("decoder helper %d ended while idle (%s); replacing it", helper.pid, helper.process.returncode)
            helper.sock.close()
            self._replace(helper)

    def _run(self, helper: Helper, job: dict, memfd: int) -> dict:
        """The helper's reply; a helper that fails to give one is killed, replaced and its end
        turned into the request's RejectedUpload."""
        try:
            reply = helper.run(job, memfd)
        except TimeoutError:
            what = "timeout"
        except (EOFError, ConnectionError, ValueError, OSError):
            what = "ended"
        else:
            if reply.get("code") in RETIRE_AFTER:
                self._retire(helper)
            else:
                self.idle.put(helper)
            return reply
        if helper.process.poll() is None:
            helper.kill()
        else:
            helper.process.wait()
            helper.sock.close()
        error = ended_helper_error(helper, what)
        log.warning(
            "decoder helper %d %s (%s); replacing it",
            helper.pid,
            "timed out" if what == "timeout" else f"ended with {helper.process.returncode}",
            error.code,
        )
        self._replace(helper)
        raise error

    def _retire(self, helper: Helper) -> None:
        """Replace a helper that answered but may be left in a bad state."""
        helper.close()
        self._replace(helper)

    def close(self) -> None:
        with self.lock:
            helpers, self.helpers = list(self.helpers), []
        for helper in helpers:
            helper.close()


# ----------------------------------------------------------------------------- helper side
def apply_limits(limits: HelperLimits) -> None:
    megabytes = limits.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (megabytes, megabytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def cpu_budget(seconds: int) -> None:
    """RLIMIT_CPU counts the process's whole life: allow `seconds` more from now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (used + seconds, hard))


def serve_job(job: dict, memfd: int, limits: HelperLimits) -> dict:
    geometry = ViewGeometry(**job["geometry"])
    size = job["out_offset"] + geometry.nbytes
    with mmap.mmap(memfd, size) as shared:
        data = shared[: job["in_len"]]
        out = np.ndarray(geometry.shape, dtype=np.uint8, buffer=shared, offset=job["out_offset"])
        t0 = time.perf_counter()
        try:
            decoded = read_view_crops(
                data, geometry, limits=limits.decode, formats=UPLOAD_FORMATS, out=out, threads=limits.threads
            )
        except VideoRejected as exc:
            return {"ok": False, "status": exc.status, "code": exc.code, "detail": exc.detail}
        except (MemoryError, BlockingIOError):  # BlockingIOError: no memory for a decoder thread
            return {
                "ok": False,
                "status": 422,
                "code": "decode_memory_limit",
                "detail": f"decoding the upload needed more than {limits.memory_mb} MB",
            }
        except Exception as exc:  # a file that breaks the decoder in a way not foreseen: that request only
            return {
                "ok": False,
                "status": 422,
                "code": "decode_failed",
                "detail": f"the decoder failed on this file ({type(exc).__name__})",
            }
        finally:
            del out
        info = decoded.info.to_dict()
        del decoded
        info["decode_ms"] = (time.perf_counter() - t0) * 1e3
        return {"ok": True, "info": info}


def helper_main(fd: int, limits: HelperLimits) -> None:
    sock = socket.socket(fileno=fd)
    apply_limits(limits)
    send_message(sock, {"ready": os.getpid()})
    while True:
        try:
            job, fds = receive_message(sock)
        except EOFError:
            return  # the worker closed the pool, or is gone
        if len(fds) != 1:
            return
        cpu_budget(limits.cpu_seconds)
        try:
            reply = serve_job(job, fds[0], limits)
        finally:
            os.close(fds[0])
        send_message(sock, reply)


if __name__ == "__main__":
    raw = json.loads(sys.argv[2])
    raw["decode"] = DecodeLimits(**raw["decode"])
    helper_main(int(sys.argv[1]), HelperLimits(**raw))
