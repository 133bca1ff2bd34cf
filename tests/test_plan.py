"""`python -m training train --dry-run`: the plan of a run, printed without training or writing."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tests.layouts import make_ucf101_tree, write_videossl_list
from tests.tinyrun import tiny_overrides
from training import plan as plan_module
from training.config import load_config
from training.plan import build_plan, format_plan
from training.train import main as train_main

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups", "YoYo"]
VIDEOSSL = "videossl/ucf101_train_20_percent_labeled_split_1_rawframes.txt"


@pytest.fixture(scope="module")
def ucf_tree(tmp_path_factory) -> Path:
    """A UCF-101-layout tree (4 classes, 6 training and 1 test video each, real tiny videos),
    prepared, with an imbalanced labeled list in VideoSSL's published format."""
    root = tmp_path_factory.mktemp("ucf")
    entries = make_ucf101_tree(root, CLASSES, train_per_class=6)["train"]
    write_videossl_list(root / VIDEOSSL, entries[0:3] + entries[6:7] + entries[18:20], CLASSES)  # 3, 1, 0, 2
    return root


def dry_run(capsys, *args: str) -> tuple[int, str]:
    code = train_main([*args, "--dry-run"])
    return code, capsys.readouterr().out


def ucf20_dry_run(capsys, root: Path, run: Path, *args: str) -> tuple[int, str]:
    """The dry run of configs/ucf101_20.yaml on `root`, without the time estimate."""
    config = str(REPO / "configs/ucf101_20.yaml")
    return dry_run(capsys, "--config", config, "--data-root", str(root), "--run", str(run), "--no-time", *args)


def test_paper_config_with_a_videossl_list_prints_its_class_counts_and_the_authors_warm_up(ucf_tree, tmp_path, capsys):
    run = tmp_path / "run"
    code, out = ucf20_dry_run(capsys, ucf_tree, run, "--set", f"data.labeled_list={VIDEOSSL}")
    assert code == 0, out
    assert "ApplyEyeMakeup 3, Basketball 1, HandstandPushups 0, YoYo 2" in out  # the list's imbalance
    assert re.search(r"labeled\s+6 videos\s+3 of 4 classes; per class min 0, median 1.5, max 3", out)
    assert f"source: given list {VIDEOSSL}" in out
    assert re.search(r"unlabeled\s+24 videos", out) and re.search(r"val\s+4 videos", out)
    assert "files labeled   all listed videos found; 6 probed, all open" in out
    # the authors' warm-up: lr ramp and supervised-only phase over the same 30 epochs
    assert (
        "supervised warm-up: unlabeled loss off for the first 30 epochs (120 steps); strong views forwarded "
        "from the first step"
    ) in out
    assert "lr warm-up: linear from 0.1x over the first 120 steps, per iteration; one cosine over the whole run" in out
    # 1 process x (5 + 5): lr 0.025; the UCF-101 values of tests/test_recipe.py scaled by 0.025 / 0.2
    assert "budget 180 epochs (optim.epochs) of 4 steps; total 720 steps" in out
    for epoch, lr in ((0, 0.0025), (5, 0.006238), (10, 0.009924), (20, 0.01697), (30, 0.02333)):
        assert f" {epoch}: {lr:.4g}" in out
    assert "== resolved config\ndata:\n  root: " + str(ucf_tree) in out  # the config as YAML
    assert "HandstandPushups" in out.split("== notes")[1]  # the class without a labeled video
    assert "== problems\nnone" in out
    assert not run.exists()  # nothing written into the run folder


def test_missing_and_unreadable_videos_are_problems(ucf_tree, tmp_path, capsys):
    listed = tmp_path / "with_missing.txt"
    listed.write_text((ucf_tree / VIDEOSSL).read_text() + "YoYo/v_YoYo_g42_c01 20 3\n")
    args = ["--set", f"data.labeled_list={listed}"]
    code, out = ucf20_dry_run(capsys, ucf_tree, tmp_path / "run", *args)
    assert code == 1 and "labeled: 1 listed videos not found" in out and "missing: YoYo/v_YoYo_g42_c01" in out
    code, out = ucf20_dry_run(capsys, ucf_tree, tmp_path / "run", *args, "--allow-missing")
    assert code == 0 and "labeled: 1 listed videos not found" in out.split("== notes")[1]

    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(ucf_tree, broken)
    (broken / "UCF-101/YoYo/v_YoYo_g03_c01.avi").write_bytes(b"not a video" * 100)
    code, out = ucf20_dry_run(capsys, broken, tmp_path / "run", "--probe", "-1")
    assert code == 1 and "unlabeled: 1 of 24 probed videos cannot be opened" in out
    # as a training run sees them: skipped and counted, a note that does not fail the dry run
    code, out = ucf20_dry_run(capsys, broken, tmp_path / "run", "--probe", "-1", "--allow-missing")
    notes = out.split("== notes")[1].split("== problems")[0]
    assert code == 0 and "unlabeled: 1 of 24 probed videos cannot be opened" in notes
    assert "(training skips and counts them)" in notes
    assert "drawn class-balanced" not in out  # 4 classes: not a paper dataset, no note about VideoSSL


def test_a_config_problem_and_a_changed_run_folder(ucf_tree, tmp_path, capsys):
    code, out = ucf20_dry_run(capsys, tmp_path / "nowhere", tmp_path / "run")
    assert code == 1 and "data.root: dataset folder not found" in out
    run = tmp_path / "started"
    run.mkdir()
    cfg = load_config(REPO / "configs/ucf101_20.yaml", [f"data.root={ucf_tree}", "optim.epochs=90"])
    from training.config import save_config

    save_config(cfg, run / "config.yaml")
    code, out = ucf20_dry_run(capsys, ucf_tree, run)
    assert code == 1 and "was started with a different config (optim.epochs)" in out
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_the_default_config_plans_the_synthetic_data_without_generating_it(tmp_path, capsys):
    data = tmp_path / "synthetic"
    code, out = dry_run(capsys, "--run", str(tmp_path / "run"), "--no-time", "--set", f"data.root={data}")
    assert code == 0, out
    assert re.search(r"labeled\s+80 videos\s+4 of 4 classes; per class min 20", out)
    assert "budget 1,200 steps (optim.steps): 60 epochs of 20 steps on this data; total 1,200 steps" in out
    assert "then a cosine over the remaining iterations" in out  # the CPU default's own schedule
    assert "training generates it first" in out
    assert not data.exists() and not (tmp_path / "run").exists()


def test_time_from_a_timed_step_or_from_flops_and_a_measured_rate(ucf_tree, monkeypatch):
    small = [o for o in tiny_overrides(ucf_tree) if not o.startswith(("data.root", "data.synthetic"))]
    cfg = load_config(REPO / "configs/ucf101_20.yaml", [f"data.root={ucf_tree}", *small, "optim.epochs=4"])
    plan = build_plan(cfg, probe=0)
    assert plan.time is not None and plan.time.method == "timed step" and plan.time.device == "cpu"
    assert plan.time.total_s == pytest.approx(plan.steps_per_epoch * 4 * plan.time.warmup_step_s)  # all in warm-up
    text = format_plan(plan)
    assert "(timed step, cpu)" in text and "data loading, PreciseBN and evaluation not included" in text
    monkeypatch.setattr(plan_module, "TIMED_STEP_LIMIT_S", 0.0)  # as if a step took minutes
    plan = build_plan(cfg, probe=0)
    assert plan.time.method == "FLOP count / measured rate"
    assert "GFLOP per step (10 clips per network, forward and backward)" in format_plan(plan)  # 2 + 4 + 4 strong


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("dry", [True, False])
def test_cuda_asked_for_on_a_machine_without_it_is_a_config_error(tmp_path, capsys, dry):
    args = ["--run", str(tmp_path / "run"), "--no-plan", "--set", "train.device=cuda", f"data.root={tmp_path / 'd'}"]
    assert train_main(["--dry-run", *args] if dry else args) == 2
    err = capsys.readouterr().err
    assert "config error: train.device: cuda, but this machine has no CUDA device" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--set", "loss.threshold=0.8", "optim.steps=10", "loss.threshold=0.2"],
            "--set gives loss.threshold more than once",
        ),
        (
            ["--data-root", "/data/a", "--set", "data.root=/data/b"],
            "--data-root and --set data.root both name the data",
        ),
    ],
)
def test_an_ambiguous_command_line_is_a_config_error(tmp_path, capsys, args, says):
    assert train_main(["--run", str(tmp_path / "run"), "--dry-run", "--no-time", *args]) == 2
    assert f"config error: {says}" in capsys.readouterr().err


def test_the_time_estimate_says_when_other_work_kept_the_cpu_busy(ucf_tree, monkeypatch):
    small = [o for o in tiny_overrides(ucf_tree) if not o.startswith(("data.root", "data.synthetic"))]
    cfg = load_config(REPO / "configs/ucf101_20.yaml", [f"data.root={ucf_tree}", *small, "optim.epochs=4"])
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(plan_module.os, "getloadavg", lambda: (cores + 2.5, 1.0, 1.0))  # as under other jobs
    (busy,) = [n for n in build_plan(cfg, probe=0).notes if "busy" in n]
    assert busy.startswith("warning: time: other work kept this machine busy while the step was timed")
    assert f"(load average {cores + 2.5:.1f} on {cores} cores)" in busy
    monkeypatch.setattr(plan_module.os, "getloadavg", lambda: (cores - 0.2, 0.5, 0.2))  # e.g. the plan's own timing
    assert not [n for n in build_plan(cfg, probe=0).notes if "busy" in n]


def test_make_train_dry_run_passes_the_flag_and_the_process_count():
    # --no-print-directory: under `make test` this make is nested and would print its directory
    out = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "train",
            "DRY_RUN=1",
            "GPUS=8",
            "CONFIG=configs/k400_10.yaml",
            "DATA_ROOT=/data/k400",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.endswith("--dry-run --processes 8") and "torchrun" not in line
    assert '--config "configs/k400_10.yaml" --data-root "/data/k400"' in line
    assert '--run-dir "runs/k400_10"' in line  # RUN defaults to the config's name


@pytest.mark.parametrize(
    ("args", "run"),
    [
        ([], "runs/synthetic"),
        (["DATA_ROOT=/data/my_videos/"], "runs/my_videos"),  # your own videos: the folder's name
        (["DATA_ROOT=/data/my_videos", "RUN=runs/mine"], "runs/mine"),
        (["DATA_ROOT=/data/my_videos/."], "runs/my_videos"),  # never runs/. or runs/..
        (["CONFIG=configs/ucf101_5.yaml", "DATA_ROOT=/data/ucf101"], "runs/ucf101_5"),
    ],
)
def test_make_finds_the_run_folder_of_a_data_root_without_run(args, run):
    demo = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert demo.returncode == 0, demo.stderr
    assert f'--run "{run if "RUN=runs/mine" in args else "runs/synthetic"}"' in demo.stdout  # the demo's own data
    for target in ("train", "export"):
        out = subprocess.run(
            ["make", "--no-print-directory", "-n", target, *args], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert f'"{run}"' in out.stdout.strip().splitlines()[-1]


def test_the_dry_run_opens_each_training_video_once(ucf_tree, tmp_path, capsys, monkeypatch):
    """The probe that looks for unreadable files also reads the videos' format for the plan: the
    labeled videos (also in the unlabeled pool) are not decoded a second time."""
    from training import own_data

    opened: list[str] = []
    real = own_data.open_video

    def counting(source, **kwargs):
        opened.append(str(source))
        return real(source, **kwargs)

    monkeypatch.setattr(own_data, "open_video", counting)
    monkeypatch.setattr(plan_module, "open_video", counting)
    args = ["--set", f"data.labeled_list={VIDEOSSL}", "--probe", "-1"]
    code, out = ucf20_dry_run(capsys, ucf_tree, tmp_path / "run", *args)
    assert code == 0, out
    assert len(opened) == len(set(opened)) == 24 + 4  # every training and validation video, once each
    assert re.search(r"videos\s+24 of 24 probed: \d+x\d+( \(\d+ of them\))? most common", out)
