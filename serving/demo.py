"""`python -m serving.demo`: the whole product in one command (what `make demo` runs).

Five stages, each the same command a user would type, run as a subprocess with its output
shown as it comes:
  [1/5] data + training   python -m training train --run RUN [--config C] [--set k=v ...]
  [2/5] export            python -m export --run RUN
  [3/5] start TorchServe  python -m serving start --run RUN --model-name NAME [ports]
  [4/5] classify          one held-out validation video of the run, POSTed over HTTP (urllib)
                          with the server's inference key (`python -m serving key`)
  [5/5] stop TorchServe   python -m serving stop --inference-port PORT

Checks that would otherwise fail late (Java, TorchServe installed, ports, disk) run before any
long work. The first failure ends the demo with one line naming the stage and the problem, and
a non-zero exit. The server is stopped whatever happens once its start has begun (errors,
Ctrl-C, SIGTERM). The served answer is also written to RUN/demo_answer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import cast

from serving.addresses import DEFAULT_PORTS, HOST, taken_ports
from serving.server_records import recorded_state, state_path
from serving.tokens import current_key
from serving.torchserve_config import torchserve_executable

STAGES = 5
MIN_JAVA = 17  # TorchServe 0.12's frontend
MIN_FREE_BYTES = 1 << 30  # the default run needs ~100 MB (data, checkpoints, export, unpacked archive)


class DemoError(Exception):
    """A stage that cannot go on; the message names the problem and, where it can, the fix."""


# ----------------------------------------------------------------------------- preflight
def java_major_version(version_output: str) -> int | None:
    """The major version in `java -version` output: 'openjdk version "17.0.15"' -> 17,
    'java version "1.8.0_392"' -> 8 (the old 1.x numbering), 'openjdk version "21"' -> 21."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str | None:
    """The java TorchServe will launch: $JAVA_HOME/bin/java when JAVA_HOME is set, else PATH's."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        return str(java) if java.is_file() else None
    return shutil.which("java")


def check_java() -> str:
    java = find_java()
    if java is None:
        where = f"$JAVA_HOME/bin/java ({os.environ['JAVA_HOME']})" if os.environ.get("JAVA_HOME") else "PATH"
        raise DemoError(
            f"Java not found on {where}: TorchServe needs Java {MIN_JAVA} or newer "
            "(e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME)"
        )
    try:
        shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoError(f"{java} -version failed: {exc}") from None
    major = java_major_version(shown.stderr + shown.stdout)
    if major is None:
        raise DemoError(f"could not read the version of {java} from `java -version`: {shown.stderr.strip()[:200]!r}")
    if major < MIN_JAVA:
        raise DemoError(
            f"{java} is Java {major}; TorchServe needs Java {MIN_JAVA} or newer "
            "(install openjdk-17-jre-headless and put it first on PATH, or set JAVA_HOME)"
        )
    return f"Java {major} ({java})"


def check_ports(ports: dict[str, int]) -> None:
    """Every port TorchServe opens must be free on the loopback interface (the check `serving
    start` makes, worded for the demo's options)."""
    taken = [f"{ports[name]} ({name.replace('_', ' ')})" for name in taken_ports(ports, dict.fromkeys(ports, HOST))]
    if not taken:
        return
    recorded = state_path(ports["inference"]).is_file()
    hint = (
        "a server started by `make serve` or an earlier demo is recorded there: stop it with "
        f"`python -m serving stop --inference-port {ports['inference']}`"
        if recorded
        else "stop the program using them (`ss -ltnp` shows it) or pick free ones with --inference-port, "
        "--management-port, --metrics-port, --grpc-inference-port, --grpc-management-port"
    )
    raise DemoError(f"port(s) already in use on {HOST}: {', '.join(taken)}; {hint}")


def check_disk(run: Path) -> str:
    existing = run.resolve()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise DemoError(
            f"only {free / 2**20:.0f} MiB free on the disk of {existing}; the demo needs "
            f"{MIN_FREE_BYTES / 2**30:.0f} GiB (free some space or choose another --run)"
        )
    return f"{free / 2**30:.1f} GiB free"


def preflight(args, ports: dict[str, int]) -> list[str]:
    """Everything that can fail before the long stages; returns what was found, for the log."""
    if not torchserve_executable().is_file():
        raise DemoError(f"torchserve is not installed beside {sys.executable} (`make setup` installs it)")
    found = [check_java()]
    check_ports(ports)
    found.append(f"ports {', '.join(str(p) for p in ports.values())} free on {HOST}")
    found.append(check_disk(Path(args.run)))
    if args.video is not None and not Path(args.video).is_file():
        raise DemoError(f"--video: no such file: {args.video}")
    return found


# ----------------------------------------------------------------------------- stages
class Stages:
    """Banners with elapsed time; remembers the current stage so a failure can name it."""

    def __init__(self):
        self.current = "preflight"
        self.t0 = self.started = time.monotonic()

    def begin(self, number: int, title: str) -> None:
        self.current = f"[{number}/{STAGES}] {title}"
        self.started = time.monotonic()
        print(f"\n=== {self.current}", flush=True)

    def done(self) -> None:
        print(
            f"=== {self.current}: done in {format_seconds(time.monotonic() - self.started)} "
            f"({format_seconds(time.monotonic() - self.t0)} so far)",
            flush=True,
        )


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s"


def run_command(cmd: list[str]) -> None:
    """Run one stage's command with its output going straight to the terminal (progress bars
    included); a non-zero exit is a DemoError."""
    shown = ["python" if cmd[0] == sys.executable else cmd[0], *cmd[1:]]
    print("$ " + shlex.join(shown), flush=True)
    # A Ctrl-C while Popen runs would leave a child nobody stops: hold SIGINT/SIGTERM until the
    # child is known (the child itself starts with them unblocked)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        )
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)  # one that came meanwhile is raised here
        code = proc.wait()
    except BaseException:
        # Ctrl-C or SIGTERM to the demo alone: pass it on and let the command stop what it has
        # started (`serving start` stops a half-started TorchServe); killing it would orphan that
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    if code != 0:
        raise DemoError(f"`{shlex.join(shown[:4])} ...` exited with code {code} (its messages are above)")


def held_out_video(run: Path) -> tuple[Path, str]:
    """The first validation video of the run's dataset and its true class name."""
    import yaml

    from training.config import ConfigError, config_from_dict
    from training.data import resolve_splits

    try:
        cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        splits = resolve_splits(cfg.data, run, is_main=False)
    except (OSError, ConfigError) as exc:
        raise DemoError(f"cannot read the run's validation set: {exc}") from None
    if not splits.val:
        raise DemoError(f"the dataset {splits.root} has no validation videos; classify a file of your own with --video")
    item = splits.val[0]
    return splits.root / item.path, splits.classes[item.label]


def inference_key(inference_port: int) -> str:
    """The inference key of the server the demo started (token authorization is always on)."""
    state = recorded_state(inference_port)
    if state is None:
        raise DemoError(f"no server is recorded for port {inference_port} after its start")
    try:
        # token authorization is always on for the servers `serving start` records: a key exists
        return cast(str, current_key(state, "inference"))
    except (OSError, ValueError, KeyError) as exc:
        raise DemoError(f"cannot read the server's inference key from {state['key_file']}: {exc}") from None


def classify(url: str, video: Path, key: str, timeout: float) -> dict:
    """POST the video as the raw body; the JSON answer, or a DemoError with the server's error."""
    request = urllib.request.Request(
        url,
        data=video.read_bytes(),
        method="POST",
        headers={"Content-Type": "application/octet-stream", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            answer = json.loads(body)
            problem = f"{answer.get('error')}: {answer.get('detail', '')}" if isinstance(answer, dict) else body
        except ValueError:
            problem = body[:300] or exc.reason
        raise DemoError(f"the server answered HTTP {exc.code} for {video}: {problem}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DemoError(f"no answer from {url}: {getattr(exc, 'reason', exc)}") from None


def show_answer(answer: dict, true_label: str | None) -> None:
    model, views, ms = answer["model"], answer["views"], answer["timings_ms"]
    print(
        f"  model {model['name']} {model['version']} on {answer['backend']}: {views['count']} views "
        f"({views['clips']} clips x {views['crops']} crops) from {answer['frames']} frames"
    )
    print("  timings: " + ", ".join(f"{k} {v:.0f} ms" for k, v in ms.items()))
    width = max(len(p["label"]) for p in answer["predictions"])
    print(f"  top-{len(answer['predictions'])}:")
    for rank, p in enumerate(answer["predictions"], 1):
        mark = "  <- true label" if p["label"] == true_label else ""
        print(f"    {rank}. {p['label']:<{width}}  {p['score']:.4f}  {'#' * round(30 * p['score'])}{mark}")
    if true_label is not None:
        verdict = "correct" if answer["predictions"][0]["label"] == true_label else "wrong"
        print(f"  true label: {true_label} (top-1 {verdict})")


def stop_server(inference_port: int) -> None:
    run_command([sys.executable, "-m", "serving", "stop", "--inference-port", str(inference_port)])


def demo(args, ports: dict[str, int], stages: Stages) -> str:
    """The five stages; returns the closing line."""
    python, run = sys.executable, Path(args.run)
    stages.begin(1, "data + training")
    run_command(train_command(args, python))
    stages.done()

    stages.begin(2, "export (student-only ONNX, manifest, TorchServe archive)")
    run_command([python, "-m", "export", "--run", args.run, "--model-name", args.model_name])
    stages.done()

    port_args = [arg for name, port in ports.items() for arg in (f"--{name.replace('_', '-')}-port", str(port))]
    stages.begin(3, "start TorchServe")
    args.server_begun = True  # from here on main() stops the server whatever happens
    run_command(start_command(args, python, port_args))
    stages.done()

    stages.begin(4, "classify a held-out video over HTTP")
    if args.video:
        video, true_label = Path(args.video), None
    else:
        video, true_label = held_out_video(run)
    url = f"http://{HOST}:{ports['inference']}/predictions/{args.model_name}"
    answer = classify_and_show(args, run, ports, url, video, true_label)
    stages.done()

    stages.begin(5, "stop TorchServe")
    stop_server(ports["inference"])
    args.server_begun = False
    stages.done()

    print_next_steps(args, ports, port_args, video, url)
    best = answer["predictions"][0]
    truth = f"; true label {true_label}" if true_label is not None else ""
    return (
        f"demo finished in {format_seconds(time.monotonic() - stages.t0)}: the served model says "
        f"{best['label']} ({best['score']:.4f}) for {video.name}{truth}"
    )


def train_command(args: argparse.Namespace, python: str) -> list[str]:
    train = [python, "-m", "training", "train", "--run", args.run]
    if args.config:
        train += ["--config", args.config]
    if args.set:
        train += ["--set", *args.set]
    return train


def start_command(args: argparse.Namespace, python: str, port_args: list[str]) -> list[str]:
    return [
        python,
        "-m",
        "serving",
        "start",
        "--run",
        args.run,
        "--model-name",
        args.model_name,
        "--timeout",
        str(args.start_timeout),
        *port_args,
    ]


def classify_and_show(
    args: argparse.Namespace, run: Path, ports: dict[str, int], url: str, video: Path, true_label: str | None
) -> dict:
    """Send the video to the served model, save its answer in the run folder and show it."""
    print(f"  POST {url}  <- {video} ({video.stat().st_size / 1024:.0f} KiB, application/octet-stream)", flush=True)
    answer = classify(url, video, inference_key(ports["inference"]), timeout=args.request_timeout)
    (run / "demo_answer.json").write_text(
        json.dumps({"video": str(video), "true_label": true_label, "answer": answer}, indent=2)
    )
    show_answer(answer, true_label)
    print(f"  full answer: {run / 'demo_answer.json'}")
    return answer


def print_next_steps(
    args: argparse.Namespace, ports: dict[str, int], port_args: list[str], video: Path, url: str
) -> None:
    """How to serve the model again and ask it, with the ports the demo used."""
    default_ports = ports == DEFAULT_PORTS
    serve = (
        f"make serve RUN={args.run} MODEL_NAME={args.model_name}"
        if default_ports
        else f"python -m serving start --run {args.run} --model-name {args.model_name} {shlex.join(port_args)}"
    )
    key = "python -m serving key" + ("" if ports["inference"] == 8080 else f" --inference-port {ports['inference']}")
    print(
        f'\nto serve it again: {serve}\nto ask it: curl -H "Authorization: Bearer $({key})" '
        f"-H 'Content-Type: application/octet-stream' --data-binary @{shlex.quote(str(video))} {url}"
    )


def raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the server


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m serving.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/synthetic", help="run folder (created, or resumed if it exists)")
    p.add_argument("--model-name", default="action", help="the name in /predictions/<name>")
    p.add_argument("--config", default=None, help="training config (default: the embedded synthetic one)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training config overrides")
    p.add_argument("--video", default=None, help="classify this file instead of the run's first validation video")
    p.add_argument("--start-timeout", type=float, default=180.0, help="s to wait for TorchServe's workers")
    p.add_argument("--request-timeout", type=float, default=600.0, help="s to wait for the answer")
    for name, default in DEFAULT_PORTS.items():
        p.add_argument(f"--{name.replace('_', '-')}-port", type=int, default=default)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.server_begun = False
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    stages = Stages()
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    # Ctrl-C is KeyboardInterrupt even where this process inherited SIGINT ignored (started
    # in the background, e.g. by CI): the demo must still stop what it started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        print("=== preflight", flush=True)
        for line in preflight(args, ports):
            print(f"  ok: {line}", flush=True)
        closing = demo(args, ports, stages)
    except DemoError as exc:
        print(f"\ndemo failed at {stages.current}: {exc}", file=sys.stderr, flush=True)
        code = 1
    except KeyboardInterrupt:
        print(f"\ndemo interrupted at {stages.current}", file=sys.stderr, flush=True)
        code = 130
    except SystemExit as exc:
        print(f"\ndemo terminated at {stages.current}", file=sys.stderr, flush=True)
        code = int(exc.code or 1)
    finally:
        if args.server_begun:
            try:
                stop_server(ports["inference"])
            except DemoError as exc:
                print(f"the server could not be stopped: {exc}", file=sys.stderr, flush=True)
                code = code or 1
    if code == 0:
        print(f"\n{closing}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
