"""Training on the user's own videos: the recipe chosen from the data and the machine, the budget
in steps, the plan printed before the run, and the training log."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.videofiles import write_video
from training.config import ConfigError, load_config
from training.own_data import CPU_BASE, confidence_threshold, resolve_own_data
from training.plan import build_plan, format_plan
from training.schedule import learning_rate, resolve_schedule

REPO = Path(__file__).resolve().parent.parent


def make_folder_dataset(
    root: Path,
    classes=("swipe_left", "swipe_right", "wave hand"),  # a space: folder names are often phrases
    *,
    labeled=2,
    unlabeled=4,
    val=1,
    frames=20,
    width=40,
    height=32,
    fps=25,
) -> Path:
    rng = np.random.default_rng(0)

    def video(path: Path) -> None:
        write_video(path, rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8), fps=fps)

    for c in classes:
        for i in range(labeled):
            video(root / "labeled" / c / f"{c}_{i}.mp4")
        for i in range(val):
            video(root / "val" / c / f"{c}_v{i}.mp4")
    for i in range(unlabeled):
        video(root / "unlabeled" / f"u{i}.mp4")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("own") / "data")


# ----------------------------------------------------------------------------- the recipe
def test_threshold_runs_from_the_measured_four_class_value_to_the_papers():
    assert confidence_threshold(4) == 0.8 and confidence_threshold(101) == 0.3
    assert confidence_threshold(400) == 0.3 and confidence_threshold(2) == pytest.approx(0.91)
    values = [confidence_threshold(n) for n in (2, 3, 5, 10, 20, 51, 101)]
    assert values == sorted(values, reverse=True) and all(0.3 <= v <= 0.95 for v in values)
    # log-linear: 20 classes sit where ln(20/4) / ln(101/4) puts them
    assert confidence_threshold(20) == pytest.approx(0.8 - 0.5 * np.log(5) / np.log(101 / 4), abs=0.005)


def test_recipe_follows_the_data_and_says_why(folder):
    cfg, recipe = resolve_own_data(str(folder), [])
    assert recipe.device == "cpu" and recipe.base == CPU_BASE and recipe.classes == 3
    assert cfg.loss.threshold == confidence_threshold(3) and cfg.input.flip is False
    # 40 x 32 videos: trained at their own 32 px short side, not upscaled to the recipe's 64
    assert (cfg.input.short_side, cfg.input.crop_size, cfg.input.test_short_side, cfg.input.test_crop) == (
        32,
        28,
        32,
        32,
    )
    # 20 frames hold a clip of 8 at interval 2 (15 frames): the recipe's interval at 25 fps stays
    assert cfg.input.interval == 2 and cfg.optim.steps == 2400 and cfg.data.format == "folder"
    # 10 unlabeled videos (labeled ones included) in batches of 8: 1 step per epoch, 2400 epochs
    assert resolve_schedule(cfg, 10, 1).epochs == 2400
    assert (cfg.train.eval_every, cfg.train.precise_bn_every, cfg.train.checkpoint_every) == (120, 240, 60)
    text = "\n".join(recipe.describe())
    assert (
        "loss.threshold = 0.84: 3 classes" in text
        and "input.flip = false: off: a mirrored video may change class" in text
    )
    assert "median short side is 32 px" in text and recipe.videos.opened == 10


def test_the_plan_says_what_the_cpu_recipe_does_not_learn_unless_the_network_is_widened(folder):
    cfg, recipe = resolve_own_data(str(folder), [])
    plan = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe)
    (note,) = [n for n in plan.notes if "learns where things move" in n]
    assert "width 16, 28 px crops" in note and "rotation, zoom" in note and "CUDA GPU" in note
    assert note in format_plan(plan)
    cfg, recipe = resolve_own_data(str(folder), ["model.width=64"])
    assert recipe.notes(cfg) == []


def test_mirror_invariant_turns_flip_on_and_the_users_keys_win(folder):
    cfg, recipe = resolve_own_data(str(folder), ["data.mirror_invariant=true", "loss.threshold=0.5"])
    assert cfg.input.flip is True and cfg.loss.threshold == 0.5
    text = "\n".join(recipe.describe())
    assert "loss.threshold = 0.5 (your --set; the recipe would choose 0.84" in text
    assert "input.flip = true: data.mirror_invariant=true" in text


def test_interval_scales_with_the_frame_rate_and_fits_short_videos(tmp_path):
    fast = make_folder_dataset(tmp_path / "fast", classes=("a", "b"), labeled=1, unlabeled=1, frames=40, fps=50)
    assert resolve_own_data(str(fast), [])[0].input.interval == 4  # 2 at 25 fps = 4 at 50 fps
    short = make_folder_dataset(tmp_path / "short", classes=("a", "b"), labeled=1, unlabeled=1, frames=10)
    cfg, recipe = resolve_own_data(str(short), [])
    assert cfg.input.interval == 1  # 8 frames at interval 1 fit in 10 frames, at 2 they would not
    assert "the median video has 10 frames" in "\n".join(recipe.describe())
    # 15 frames: 8 at interval 2 cover 15, but the temporal gradient takes the frame after the last
    exact = make_folder_dataset(tmp_path / "exact", classes=("a", "b"), labeled=1, unlabeled=1, frames=15)
    cfg, recipe = resolve_own_data(str(exact), [])
    assert cfg.input.interval == 1
    assert not [n for n in build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes if "shorter than" in n]


def test_a_dataset_without_labeled_folders_is_a_config_error(tmp_path):
    (tmp_path / "empty" / "unlabeled").mkdir(parents=True)
    with pytest.raises(ConfigError, match="labeled"):
        resolve_own_data(str(tmp_path / "empty"), [])
    # videos in class folders right under the root, as many datasets ship: the error says what to move
    for name in ("jump", "run", "sit", "unlabeled", "val/jump"):  # the layout's own names are no classes
        write_video(tmp_path / "flat" / name / "0.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"it has 3 folders with videos \(jump, run, sit\): if they are classes"):
        resolve_own_data(str(tmp_path / "flat"), [])


def test_the_plan_warns_of_a_class_folder_with_no_video_at_all(tmp_path):
    root = make_folder_dataset(tmp_path / "data", classes=("swipe_left", "swipe_right"), labeled=1, unlabeled=1)
    (root / "labeled" / "later class").mkdir()  # an empty folder is a class: the model gets an output
    (root / "labeled" / "val only").mkdir()
    write_video(root / "val" / "val only" / "v.mp4", np.zeros((20, 32, 40, 3), np.uint8))
    cfg, recipe = resolve_own_data(str(root), [])
    notes = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes
    (empty,) = [n for n in notes if "no video at all" in n]
    assert empty.startswith("warning: 1 of 4 classes have no video at all (later class)")
    assert "labeled: 1 of 4 classes have no labeled video (val only)" in notes
    assert "warning: 2 of 4 classes have fewer than 5 labeled videos (swipe_left 1, swipe_right 1)" in "\n".join(notes)


@pytest.mark.parametrize(
    ("folders", "says"),
    [
        (("train/a", "train/b", "val/a"), "rename train/ to labeled/ (the layout: "),
        (("Labeled/a", "Labeled/b", "Val/a"), "rename Labeled/ to labeled/, Val/ to val/"),
        (("labelled/a", "labelled/b", "unlabelled"), "rename labelled/ to labeled/, unlabelled/ to unlabeled/"),
        (("train/a", "train/b", "val/a", "test/a"), "rename train/ to labeled/ (the"),  # val/ exists: test/ stays
    ],
)
def test_split_folders_under_other_names_are_named_with_their_rename(tmp_path, folders, says):
    for folder in folders:
        write_video(tmp_path / folder / "0.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="missing .*labeled") as caught:
        resolve_own_data(str(tmp_path), [])
    assert says in str(caught.value) and "if they are classes" not in str(caught.value)


def test_a_val_class_differing_only_in_case_says_so(tmp_path):
    root = make_folder_dataset(tmp_path / "data", classes=("wave", "clap"), labeled=1, unlabeled=1, val=0)
    write_video(root / "val" / "Wave" / "v.mp4", np.zeros((4, 16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"not in labeled/: Wave; names must match exactly, case included") as caught:
        resolve_own_data(str(root), [])
    assert "(labeled/ has wave)" in str(caught.value) and "for list files" not in str(caught.value)


def test_videos_outside_the_layout_are_named_and_linked_folders_are_read(tmp_path):
    root = make_folder_dataset(tmp_path / "data", classes=("wave", "clap"), labeled=2, unlabeled=2)
    still = np.zeros((20, 32, 40, 3), np.uint8)
    for stray in ("labeled/stray.mp4", "val/stray.mp4", "extra.mp4", "validation/wave/0.mp4"):
        write_video(root / stray, still)
    more = make_folder_dataset(tmp_path / "more", classes=("wave", "clap"), labeled=0, unlabeled=3, val=0)
    (root / "unlabeled" / "more").symlink_to(more / "unlabeled", target_is_directory=True)
    (more / "unlabeled" / "loop").symlink_to(root / "unlabeled", target_is_directory=True)  # a loop: read once
    cfg, recipe = resolve_own_data(str(root), [])
    plan = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe)
    (unread,) = [n for n in plan.notes if "outside the folder layout" in n]
    assert unread.startswith("warning: 4 videos are outside the folder layout and not read, e.g. extra.mp4, ")
    unlabeled = next(s for s in plan.sets if s.name == "unlabeled")
    assert unlabeled.count == 4 + 2 + 3  # the labeled videos, unlabeled/, and the 3 in the linked folder


def test_the_plan_warns_of_look_alike_classes_and_of_validation_videos_copied_from_training(tmp_path):
    root = make_folder_dataset(tmp_path / "data", classes=("wave", "Wave", "clap", "clap "), labeled=1, unlabeled=1)
    shutil.copy(root / "labeled" / "clap" / "clap_0.mp4", root / "val" / "clap" / "copy.mp4")
    cfg, recipe = resolve_own_data(str(root), [])
    notes = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes
    alike = [n for n in notes if "differ only in case or spaces" in n]
    assert len(alike) == 2 and "classes 'Wave', 'wave' differ only" in alike[0] + alike[1]
    (copies,) = [n for n in notes if "byte for byte" in n]
    assert copies.startswith("warning: 1 validation videos are byte for byte training videos (val/clap/copy.mp4)")


def test_a_labeled_folder_of_unread_formats_names_them_and_the_read_ones(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "labeled" / name).mkdir(parents=True)
        (tmp_path / "labeled" / name / "0.wmv").write_bytes(b"x")
    with pytest.raises(
        ConfigError, match=r"no videos under .*\(files ending \.wmv are not read as videos\); videos end"
    ):
        resolve_own_data(str(tmp_path), [])


def test_one_class_is_a_config_error_that_names_it(tmp_path):
    root = make_folder_dataset(tmp_path / "data", classes=("wave",), labeled=2, unlabeled=1)
    with pytest.raises(
        ConfigError, match=r"one class folder under .*labeled \(wave\): a classifier needs at least two"
    ):
        resolve_own_data(str(root), [])


def test_the_plan_warns_of_videos_shorter_than_a_clip_and_of_no_validation_videos(tmp_path):
    # 4-frame videos: even at interval 1 a clip covers 9 frames (8 and the next one for TG)
    root = make_folder_dataset(tmp_path / "short", classes=("a", "b"), labeled=1, unlabeled=2, val=0, frames=4)
    cfg, recipe = resolve_own_data(str(root), [])
    notes = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes
    (short,) = [n for n in notes if "shorter than one training clip" in n]
    assert short.startswith("warning: 4 of 4 probed training videos are shorter than one training clip (9 frames: ")
    assert "(4 frames): their clips wrap around to the first frame" in short
    assert "the median video has 4 frames: fewer than a clip's 9 even at interval 1" in "\n".join(recipe.describe())
    assert any(n.startswith("warning: no validation videos: the run can report no accuracy") for n in notes)

    # one short video among long ones is a note, not a warning; the interval follows the median
    mixed = make_folder_dataset(tmp_path / "mixed", classes=("a", "b"), labeled=2, unlabeled=2, frames=40)
    write_video(mixed / "unlabeled" / "clip.mp4", np.zeros((6, 32, 40, 3), np.uint8))
    cfg, recipe = resolve_own_data(str(mixed), [])
    notes = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes
    (short,) = [n for n in notes if "shorter than one training clip" in n]
    assert short.startswith("1 of 7 probed training videos are shorter than one training clip (16 frames: 8 every 2, ")
    assert "e.g. unlabeled/clip.mp4 (6 frames)" in short
    assert not any("no validation videos" in n for n in notes)


# ----------------------------------------------------------------------------- the budget
def test_a_budget_in_steps_becomes_epochs_of_the_data():
    cfg = load_config(CPU_BASE)
    small, large = resolve_schedule(cfg, 61, 1), resolve_schedule(cfg, 30000, 1)
    assert (small.steps_per_epoch, small.epochs, small.total_steps) == (7, 343, 2401)
    assert (large.steps_per_epoch, large.epochs) == (2400, 1)  # a pass longer than the budget is cut to it
    # whole epochs, the nearest number to the budget: 8000 videos are 2 passes of 1000 steps
    assert resolve_schedule(cfg, 8000, 1).total_steps == 2000
    assert small.warmup_iters == 100 and small.sup_warmup_epochs == 29  # first epoch boundary at or after 200 steps
    # the lr ramp is the same 100 iterations however the steps fall into epochs
    for sched in (small, resolve_schedule(cfg, 160, 1)):
        assert learning_rate(0, base_lr=1.0, schedule=sched, cfg=cfg) == pytest.approx(0.1)
        assert learning_rate(100, base_lr=1.0, schedule=sched, cfg=cfg) == pytest.approx(1.0)


def test_steps_and_epochs_both_stated_is_an_error_that_names_them():
    with pytest.raises(ConfigError, match=r"optim.epochs=3 and optim.steps=1200: the budget is one or the other"):
        load_config(REPO / "configs" / "synthetic.yaml", ["optim.epochs=3"])
    with pytest.raises(ConfigError, match="optim.warmup_steps"):
        load_config(None, ["optim.warmup_steps=5"])  # an epoch budget has no warm-up in steps
    with pytest.raises(ConfigError, match=r"optim.warmup_steps \(50\) exceeds optim.steps \(10\)"):
        load_config(None, ["optim.steps=10", "optim.warmup_steps=50"])
    cfg = load_config(
        REPO / "configs" / "synthetic.yaml",
        ["optim.steps=0", "optim.warmup_steps=0", "optim.sup_warmup_steps=0", "optim.epochs=3"],
    )
    assert resolve_schedule(cfg, 160, 1).budget == "epochs"


# ----------------------------------------------------------------------------- a run
def test_pseudo_label_accuracy_leaves_out_the_memorised_labeled_videos(folder):
    """The unlabeled pool holds the labeled videos too; their labels would report memorised clips
    as pseudo-label accuracy (1.0 on a folder dataset), so the loader sees them as unknown."""
    import torch

    from training.data import resolve_splits
    from training.distributed import DistInfo
    from training.train import build_loaders

    cfg, _ = resolve_own_data(str(folder), ["data.num_workers=0"], probe=0)
    splits = resolve_splits(cfg.data, None, is_main=False)
    labeled = {it.path for it in splits.labeled}
    assert labeled <= {it.path for it in splits.unlabeled}  # the pool includes them
    pool = build_loaders(cfg, splits, torch.device("cpu"), DistInfo()).unlabeled.dataset.items
    assert [it.path for it in pool] == [it.path for it in splits.unlabeled]
    assert {it.path for it in pool if it.label >= 0} == set()  # folder layout: no known label left
    assert all(it.label == -1 for it in pool if it.path in labeled)


TINY = [
    "model.width=4",
    "input.clip_len=4",
    "input.test_clips=2",
    "optim.batch_labeled=2",
    "optim.batch_unlabeled=4",
    "optim.steps=5",
    "optim.warmup_steps=1",
    "optim.sup_warmup_steps=2",
    "train.precise_bn_batches=1",
    "train.precise_bn_batch_size=4",
    "data.num_workers=1",
    "train.log_every=1",
]


TRAIN_TIMEOUT_S = 600
# a test that trains waits for the run: the command's own timeout must fire first, with its output
WAITS_FOR_TRAINING = pytest.mark.timeout(TRAIN_TIMEOUT_S + 300)


def train_cli(folder: Path, run: Path) -> str:
    """`python -m training train --data-root FOLDER` as a user runs it (its own process: loader
    workers are forked from a process that imported only what training imports)."""
    cmd = [sys.executable, "-m", "training", "train", "--data-root", str(folder), "--run", str(run), "--set", *TINY]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@WAITS_FOR_TRAINING
def test_the_default_command_prints_the_plan_trains_by_steps_and_logs_one_line_per_step_group(folder, tmp_path):
    run = tmp_path / "run"
    out = train_cli(folder, run)
    plan = out[: out.index("== problems")]
    assert out.startswith("Training plan\n") and f"resolved config: {run / 'config.yaml'}" in plan
    assert "== recipe chosen from the data and this machine" in plan and "loss.threshold = 0.84: 3 classes" in plan
    assert "budget 5 steps (optim.steps): 2 epochs of 2 steps on this data" in plan  # 10 unlabeled / 4 per batch
    assert "warning: 3 of 3 classes have fewer than 5 labeled videos" in plan
    assert "videos    10 of 10 probed: 40x32 most common" in plan and "== time on this machine" in plan
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["loss"]["threshold"] == 0.84 and saved["input"]["flip"] is False and saved["optim"]["steps"] == 5
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["epochs"] == 2 and metrics["schedule"]["budget"] == "steps"
    log = (run / "train.log").read_text()
    assert "\r" not in log and "it/s" not in log  # no progress bar in a file
    assert log.count("epoch 1/2  step 1/2") == 1 and "epoch 1/2  align=" in log and "epoch 2/2  align=" in log
    # a second invocation finds the run complete and prints no plan
    assert "Training plan" not in train_cli(folder, run)


def test_the_plan_names_the_most_common_size_and_notes_long_recordings(tmp_path):
    root = make_folder_dataset(tmp_path / "long", classes=("a", "b"), labeled=2, unlabeled=2, frames=100, fps=2)
    write_video(root / "unlabeled" / "wide.mp4", np.zeros((100, 32, 64, 3), np.uint8), fps=2)
    cfg, recipe = resolve_own_data(str(root), [])
    assert "7 of 7 probed: 40x32 (6 of them) most common (short side 32-32)" in recipe.videos.summary()
    notes = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes
    (long,) = [n for n in notes if "cut long recordings down to the action" in n]
    assert long.startswith("the median training video lasts 50 s and one clip covers 9 of its 100 frames")

    short = make_folder_dataset(tmp_path / "short", classes=("a", "b"), labeled=2, unlabeled=2, frames=100, fps=25)
    cfg, recipe = resolve_own_data(str(short), [])
    assert "40x32 most common" in recipe.videos.summary()
    notes = build_plan(cfg, probe=0, estimate_time=False, recipe=recipe).notes
    assert not any("long recordings" in n for n in notes)  # 4 s videos: a clip covers a sixth of them
