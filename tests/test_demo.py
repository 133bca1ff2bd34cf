"""`python -m serving.demo` (what `make demo` runs) at a tiny size, as a subprocess: it trains,
exports, serves, classifies one held-out video over HTTP, prints the answer and stops the
server, leaving no process behind; the served answer equals offline evaluation of the same
ONNX model; Ctrl-C during the start still stops the server; preflight failures (a taken port,
no Java) say so in one line before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from serving.core import spec_from_manifest
from serving.demo import java_major_version
from serving.server_records import state_path
from tests.processes import listening, processes_of
from tests.served_answers import offline_scores
from tests.server import free_ports, port_args
from tests.tinyrun import tiny_overrides

DEMO_TIMEOUT_S = 900
# a test that needs the finished demo waits for it: the demo's own timeout must fire first, with its output
WAITS_FOR_DEMO = pytest.mark.timeout(DEMO_TIMEOUT_S + 300)


def demo_cmd(run: Path, data: Path, ports: list[int]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "serving.demo",
        "--run",
        str(run),
        "--model-name",
        "tiny",
        "--set",
        *tiny_overrides(data),
        *port_args(ports),
    ]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo")
    run, data, ports = base / "run", base / "data", free_ports(5)
    done = subprocess.run(demo_cmd(run, data, ports), capture_output=True, text=True, timeout=DEMO_TIMEOUT_S)
    return done, run, data, ports


@pytest.mark.slow
@WAITS_FOR_DEMO
def test_demo_ends_with_the_served_prediction_and_leaves_nothing_running(finished_demo):
    done, run, data, ports = finished_demo
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    banners = [line for line in done.stdout.splitlines() if line.startswith("=== [")]
    titles = ("data + training", "export", "start TorchServe", "classify", "stop TorchServe")
    assert len(banners) == 2 * len(titles)  # each stage's start and its "done in"
    for n, title in enumerate(titles, 1):
        assert banners[2 * n - 2].startswith(f"=== [{n}/5] {title}")
        assert banners[2 * n - 1].startswith(f"=== [{n}/5] {title}") and ": done in " in banners[2 * n - 1]
    saved = json.loads((run / "demo_answer.json").read_text())
    answer, video, true_label = saved["answer"], Path(saved["video"]), saved["true_label"]
    # the first validation video of the run's list, with its class
    first = (data / "lists" / "val.txt").read_text().split()
    classes = (data / "classes.txt").read_text().split()
    assert (video, true_label) == (data / first[0], classes[int(first[1])])
    best = answer["predictions"][0]
    last_line = done.stdout.strip().splitlines()[-1]
    assert last_line.startswith("demo finished in ")
    assert (
        f"the served model says {best['label']} ({best['score']:.4f}) for {video.name}; true label {true_label}"
        in last_line
    )
    for rank, p in enumerate(answer["predictions"], 1):
        assert f"    {rank}. {p['label']}" in done.stdout and f"{p['score']:.4f}" in done.stdout
    assert len(answer["predictions"]) == 3  # top-5 capped at the 3 classes
    assert answer["model"]["name"] == "tiny" and answer["views"]["count"] == 2 * 3

    # the served scores are offline evaluation of the same ONNX model on that file: to fp32
    # rounding where `auto` chose an fp32 backend, within a reduced precision's rounding (and the
    # same ranking) where it chose OpenVINO bf16, which it does where that is fastest
    reduced = any(p in answer["backend"] for p in ("bf16", "int8", "fp16"))
    export_dir = run / "export"
    manifest = json.loads((export_dir / "manifest.json").read_text())
    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = offline_scores(video, export_dir, spec_from_manifest(manifest), session)
    served = np.zeros(len(classes))
    for p in answer["predictions"]:
        served[p["index"]] = p["score"]
    np.testing.assert_allclose(served, expected, atol=1e-2 if reduced else 1e-4, rtol=0)
    assert int(np.argmax(served)) == int(np.argmax(expected))

    assert "stopped the TorchServe on port" in done.stdout
    assert (
        f'to ask it: curl -H "Authorization: Bearer $(python -m serving key --inference-port {ports[0]})"'
        in done.stdout
    )  # the key is fetched when curl runs, never printed
    assert processes_of(run) == []
    assert not any(listening(port) for port in ports)
    assert not state_path(ports[0]).exists()


@pytest.mark.slow
@WAITS_FOR_DEMO
def test_ctrl_c_while_the_server_starts_still_stops_it(finished_demo, tmp_path):
    _, run, data, _ = finished_demo
    ports = free_ports(5)
    # unbuffered: the stage banner must reach the test when it is printed, not when the demo exits
    demo = subprocess.Popen(
        demo_cmd(run, data, ports),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        seen = []
        for line in demo.stdout:  # printed right before the server is launched; its start takes seconds
            seen.append(line)
            if line.startswith("=== [3/5]"):
                break
        else:
            raise AssertionError("the demo never reached the server start: " + "".join(seen)[-3000:])
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=180)
        out = "".join(seen) + out
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, out[-3000:] + err[-3000:]
    assert "demo interrupted at [3/5] start TorchServe" in err
    assert processes_of(run) == [], err
    assert not any(listening(port) for port in ports)
    assert not state_path(ports[0]).exists()


def test_a_taken_port_fails_the_preflight_before_anything_starts(tmp_path):
    ports = free_ports(5)
    run = tmp_path / "run"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[2]))
        busy.listen()
        done = subprocess.run(demo_cmd(run, tmp_path / "data", ports), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"demo failed at preflight: port(s) already in use on 127.0.0.1: {ports[2]} (metrics); stop the program "
        "using them (`ss -ltnp` shows it) or pick free ones with --inference-port, --management-port, "
        "--metrics-port, --grpc-inference-port, --grpc-management-port"
    )
    assert "[1/5]" not in done.stdout
    assert not run.exists() and not (tmp_path / "data").exists()


def test_missing_java_fails_the_preflight_with_its_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java there; the demo's own python is called by its full path
    done = subprocess.run(
        demo_cmd(tmp_path / "run", tmp_path / "data", free_ports(5)),
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("demo failed at preflight: Java not found on PATH: TorchServe needs Java 17 or newer")
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "output, major",
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment (build 17.0.15+6)', 17),
        ('java version "1.8.0_392"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("Error: could not find libjava.so", None),
    ],
)
def test_java_major_version(output, major):
    assert java_major_version(output) == major


def test_a_failing_stage_is_named_in_one_line_and_nothing_is_served(tmp_path):
    ports = free_ports(5)
    cmd = demo_cmd(tmp_path / "run", tmp_path / "data", ports)
    cmd.insert(cmd.index("--inference-port"), "optim.epochs=many")  # the last --set item wins
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "optim.epochs" in done.stderr  # the training CLI's own message, shown as it came
    assert done.stderr.strip().splitlines()[-1] == (
        "demo failed at [1/5] data + training: `python -m training train ...` exited with code 2 "
        "(its messages are above)"
    )
    assert "[2/5]" not in done.stdout and "serving stop" not in done.stdout
    assert not state_path(ports[0]).exists()
