"""End-to-end training runs at a tiny size: real synthetic videos, real loaders, real checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tinyrun import tiny_overrides
from training.distributed import DistInfo
from training.train import SkipLog
from training.train import main as train_main

REPO = Path(__file__).resolve().parent.parent


def run_train(run: Path, overrides: list[str], *extra_args: str) -> int:
    return train_main(["--run", str(run), "--set", *overrides, *extra_args])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data") / "synthetic"


@pytest.mark.slow
def test_tiny_run_writes_the_run_folder_and_reruns_as_complete(tmp_path, data_root):
    run = tmp_path / "run"
    assert run_train(run, tiny_overrides(data_root)) == 0
    for name in ("config.yaml", "last.pt", "metrics.json", "train.log", "classes.txt"):
        assert (run / name).is_file(), name
    assert any((run / "logs").iterdir())  # TensorBoard events
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("student", "teacher"):
        assert set(metrics[name]) >= {"top1", "top5", "mean_class", "videos"} and metrics[name]["videos"] == 6
    assert metrics["views"] == "2 clips x 3 crops" and metrics["skipped_train_videos"]["count"] == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 3 and set(ckpt["model"]) == {"student", "teacher", "proj_rgb", "proj_tg"}
    history = ckpt["history"]
    assert "loss/unsup_rgb" not in history[0] and "loss/unsup_rgb" in history[1]  # supervised warm-up
    assert {"loss/align", "loss/contrast", "pseudo/mask_rate_rgb"} <= set(history[0])

    mtime = (run / "last.pt").stat().st_mtime_ns
    assert run_train(run, tiny_overrides(data_root)) == 0  # same command: already complete
    assert (run / "last.pt").stat().st_mtime_ns == mtime
    assert run_train(run, tiny_overrides(data_root, **{"optim.epochs": 5})) == 2  # different config: refused


@pytest.mark.slow
@pytest.mark.parametrize("dist_align", [False, True], ids=["plain", "dist_align"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, data_root, dist_align):
    # with loss.dist_align the running means of the pseudo-label alignment are part of the state
    overrides = tiny_overrides(data_root, **{"train.eval_every": 0, "loss.dist_align": str(dist_align).lower()})
    assert run_train(tmp_path / "straight", overrides) == 0
    assert run_train(tmp_path / "pieces", overrides, "--stop-after", "1") == 0
    assert torch.load(tmp_path / "pieces" / "last.pt", weights_only=True)["epoch"] == 1
    assert run_train(tmp_path / "pieces", overrides) == 0
    ckpt_a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    ckpt_b = torch.load(tmp_path / "pieces" / "last.pt", weights_only=True)
    a, b = ckpt_a["model"], ckpt_b["model"]
    for part in a:
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    assert set(ckpt_a["dist_align"]) == ({"fused"} if dist_align else set())
    for source, running in ckpt_a["dist_align"].items():
        assert torch.equal(running, ckpt_b["dist_align"][source]), source
        assert running.sum().item() == pytest.approx(1.0) and not torch.allclose(running, running.mean())


@pytest.mark.slow
def test_loss_falls_on_a_short_run(tmp_path, data_root):
    overrides = tiny_overrides(
        data_root,
        **{
            "optim.epochs": 8,
            "optim.sup_warmup_epochs": 8,
            "loss.contrast": "off",
            "loss.align": "off",
            "train.eval_every": 0,
            "train.precise_bn": "off",
            "model.dropout": 0.0,
            "optim.lr": 0.5,
        },
    )
    assert run_train(tmp_path / "run", overrides) == 0
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]
    first, last = history[0]["loss/sup_rgb"], history[-1]["loss/sup_rgb"]
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_fixmatch_single_stream_and_ablation_switches_run(tmp_path, data_root):
    rgb_only = tiny_overrides(
        data_root,
        **{
            "optim.epochs": 2,
            "loss.streams": "rgb",
            "loss.align": "off",
            "loss.contrast": "off",
            "loss.fusion": "self",
        },
    )
    assert run_train(tmp_path / "rgb", rgb_only) == 0
    ckpt = torch.load(tmp_path / "rgb" / "last.pt", weights_only=True)
    assert ckpt["model"]["teacher"] is None and ckpt["model"]["proj_rgb"] is None
    assert "teacher" not in json.loads((tmp_path / "rgb" / "metrics.json").read_text())
    ablation = tiny_overrides(
        data_root,
        **{
            "optim.epochs": 2,
            "loss.align": "l2",
            "loss.stop_gradient": "off",
            "loss.align_stages": "[4]",
            "loss.fusion": "probs",
            "tg.stride": 3,
            "model.temporal_pool": "false",
        },
    )
    assert run_train(tmp_path / "ablation", ablation) == 0


@pytest.mark.slow
def test_unreadable_training_videos_are_counted_in_metrics(tmp_path, data_root):
    assert run_train(tmp_path / "first", tiny_overrides(data_root, **{"optim.epochs": 1})) == 0  # makes the data
    corrupt = tmp_path / "corrupt"
    import shutil

    shutil.copytree(data_root, corrupt)
    victims = sorted((corrupt / "unlabeled").rglob("*.mp4"))[:2]
    victims[0].write_bytes(b"garbage" * 100)
    victims[1].write_bytes(victims[1].read_bytes()[:200])
    overrides = tiny_overrides(corrupt, **{"optim.epochs": 1, "data.synthetic": "false"})
    assert run_train(tmp_path / "run", overrides) == 0
    skipped = json.loads((tmp_path / "run" / "metrics.json").read_text())["skipped_train_videos"]
    assert skipped["count"] == 2
    assert all(str(v.relative_to(corrupt)) in skipped["videos"] for v in victims)


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_continues_to_the_same_weights(tmp_path, data_root):
    # loader worker processes that live for the whole run (data.num_workers=1) and are killed with it
    overrides = tiny_overrides(data_root, **{"optim.epochs": 6, "train.eval_every": 0, "data.num_workers": 1})
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "training", "train", "--run", str(run), "--set", *overrides]
    straight = [*cmd[: cmd.index("--run") + 1], str(tmp_path / "straight"), *cmd[cmd.index("--run") + 2 :]]
    assert subprocess.run(straight, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "last.pt").is_file() and torch.load(run / "last.pt", weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch_at_kill = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert 2 <= epoch_at_kill < 6
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"resumed from {run / 'last.pt'} at epoch {epoch_at_kill}" in out.stdout
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 6 and (run / "metrics.json").is_file()
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    for part in a:
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"


def _tiny_video(path: Path, seed: int) -> None:
    from tests.videofiles import write_video

    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 255, (20, 32, 40, 3), dtype=np.uint8))


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_two_cpu_processes(tmp_path, data_root):
    run = tmp_path / "ddp"
    overrides = tiny_overrides(data_root, **{"optim.epochs": 2, "train.eval_every": 1})
    assert run_train(tmp_path / "warm", tiny_overrides(data_root, **{"optim.epochs": 1})) == 0  # data made once
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training",
        "train",
        "--run-dir",
        str(run),
        "--set",
        *overrides,
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["student"]["videos"] == 6  # every val video once, gathered
    assert "total batch 12" in (run / "train.log").read_text()  # 2 x (2 + 4) clips


@pytest.mark.slow
def test_ucf101_layout_trains_with_the_paper_config(tmp_path):
    root = tmp_path / "ucf"
    classes = ["ApplyEyeMakeup", "Basketball", "YoYo"]
    (root / "ucfTrainTestlist").mkdir(parents=True)
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(classes)))
    train_lines, test_lines = [], []
    for ci, c in enumerate(classes):
        for g in range(1, 6):
            name = f"{c}/v_{c}_g{g:02d}_c01.avi"
            _tiny_video(root / "UCF-101" / name, seed=ci * 10 + g)
            (train_lines if g <= 4 else test_lines).append(name)
    (root / "ucfTrainTestlist" / "trainlist01.txt").write_text(
        "".join(f"{n} {classes.index(n.split('/')[0]) + 1}\r\n" for n in train_lines)
    )
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("".join(n + "\r\n" for n in test_lines))
    prep = subprocess.run(
        [sys.executable, "-m", "training", "prepare", "ucf101", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prep.returncode == 0, prep.stderr
    small = [
        o
        for o in tiny_overrides(root, **{"optim.epochs": 1, "data.num_workers": 0})
        if not o.startswith(("data.root", "data.synthetic"))
    ]
    run = tmp_path / "run"
    assert (
        train_main(
            [
                "--config",
                str(REPO / "configs" / "ucf101_20.yaml"),
                "--data-root",
                str(root),
                "--run",
                str(run),
                "--set",
                *small,
            ]
        )
        == 0
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == 3 and metrics["labeled_videos"] == 3  # 20 % of 4 per class, at least 1 each
    assert metrics["unlabeled_videos"] == 12 and metrics["student"]["videos"] == 3
    assert (run / "splits" / "labeled.txt").is_file()


@pytest.mark.slow
def test_a_users_folder_dataset_trains_with_the_default_config(tmp_path):
    root = tmp_path / "mine"
    for cls in ("jump", "wave"):
        for i in range(3):
            _tiny_video(root / "labeled" / cls / f"{i}.mp4", seed=i + len(cls))
        _tiny_video(root / "val" / cls / "v.mp4", seed=50 + len(cls))
    for i in range(4):
        _tiny_video(root / "unlabeled" / "batch1" / f"u{i}.mp4", seed=100 + i)
    small = [
        o for o in tiny_overrides(root, **{"optim.epochs": 1}) if not o.startswith(("data.root", "data.synthetic"))
    ]
    run = tmp_path / "run"
    assert train_main(["--data-root", str(root), "--run", str(run), "--set", *small]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == 2 and metrics["labeled_videos"] == 6 and metrics["unlabeled_videos"] == 10
    assert (run / "classes.txt").read_text() == "jump\nwave\n"


def test_skip_log_counts_each_event_once_across_merges():
    skips = SkipLog()
    skips.add([("a.mp4", "a.mp4: not a readable video"), ("a.mp4", "again")])
    skips.merge(DistInfo())
    skips.merge(DistInfo())  # merged every epoch: nothing is counted twice
    skips.add([("b.mp4", "b.mp4: empty file")])
    assert skips.summary()["count"] == 2 and skips.summary()["events"] == 3
    assert SkipLog(skips.state()).summary()["events"] == 3  # survives a checkpoint round trip


@pytest.mark.parametrize("forward_strong, expected", [(True, 2 + 2 * 3), (False, 2 + 3)])
def test_strong_views_go_through_the_networks_during_the_supervised_warm_up(forward_strong, expected):
    """The authors' recognizer always forwards labeled + weak + strong clips (their BN sees the
    strong ones from the first step); only the unlabeled loss waits for the warm-up to end."""
    from training.config import load_config
    from training.models import TwoStreamNet
    from training.train import training_step

    cfg = load_config(
        REPO / "configs" / "ucf101_20.yaml",
        ["input.clip_len=4", "input.crop_size=32", f"train.forward_strong_in_warmup={forward_strong}"],
    )
    torch.manual_seed(0)
    net = TwoStreamNet(4, width=4)
    seen = []
    net.student.stem.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    frames = lambda n: torch.randint(0, 256, (n, 2, 3, 4, 32, 32), dtype=torch.uint8)  # noqa: E731
    batch_l = {"frames": frames(2), "label": torch.tensor([0, 1])}
    batch_u = {"frames": frames(3), "label": torch.tensor([-1, -1, -1])}
    terms, _ = training_step(net, batch_l, batch_u, cfg, use_unlabeled=False, device=torch.device("cpu"))
    assert seen == [expected] and "unsup_rgb" not in terms and "unsup_tg" not in terms
    seen.clear()
    terms, _ = training_step(net, batch_l, batch_u, cfg, use_unlabeled=True, device=torch.device("cpu"))
    assert seen == [2 + 2 * 3] and "unsup_rgb" in terms
