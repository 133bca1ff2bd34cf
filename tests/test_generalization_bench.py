"""The generalization benchmark: its run plan (the user's own command line), the verdict
arithmetic on hand-made numbers, the report, and a tiny end-to-end benchmark that resumes."""

import json

import pytest

from benchmarks.accuracy import BenchmarkError, spread
from benchmarks.generalization import (
    ARMS,
    BASELINE,
    METHOD,
    family_verdict,
    markdown,
    overall,
    plan_runs,
    threads_per_job,
)
from benchmarks.generalization import main as bench_main
from training.synthetic import FAMILIES

# A few seconds per run: the smoke budget plus a small input and model.
TINY_SETS = [
    "optim.steps=2",
    "optim.warmup_steps=0",
    "optim.sup_warmup_steps=0",
    "train.max_steps_per_epoch=2",
    "train.eval_every=0",
    "train.precise_bn=false",
    "data.num_workers=0",
    "model.width=4",
    "input.short_side=32",
    "input.crop_size=28",
    "input.test_short_side=32",
    "input.test_crop=32",
    "input.test_clips=2",
    "optim.batch_labeled=2",
    "optim.batch_unlabeled=4",
]
TINY_DATA = [
    "--width",
    "32",
    "--height",
    "24",
    "--frames",
    "16",
    "--train-per-class",
    "2",
    "--labeled-per-class",
    "1",
    "--val-per-class",
    "1",
    "--workers",
    "1",
]


# ----------------------------------------------------------------------------- the plan
def test_runs_are_the_users_command_line_with_only_the_arms_switches_added(tmp_path):
    runs = plan_runs(["paths", "periodic"], [0, 1], tmp_path, ["optim.steps=700"])
    assert len(runs) == 2 * 2 * len(ARMS)
    for run in runs:
        assert "--config" not in run.argv and run.argv[:3] == [
            "train",
            "--data-root",
            str(tmp_path / run.family / "data"),
        ]
        assert run.folder == tmp_path / run.family / f"{run.name}-seed{run.seed}"
        assert run.overrides == ["optim.steps=700", f"train.seed={run.seed}", *ARMS[run.name]]
        cfg = run.config
        assert cfg.data.format == "folder" and not cfg.data.synthetic and cfg.optim.steps == 700
        assert cfg.train.seed == run.seed
        assert cfg.loss.streams == ("both" if run.name == METHOD else "rgb")
    method, baseline = (
        [r.config for r in runs if r.name == arm and r.seed == 0 and r.family == "paths"][0]
        for arm in (METHOD, BASELINE)
    )
    assert (baseline.loss.align, baseline.loss.contrast, baseline.loss.fusion) == ("off", False, "self")
    assert method.optim == baseline.optim and method.input == baseline.input  # the same budget and views
    # seed by seed: every family's two arms of seed 0 come before any run of seed 1
    assert [(r.seed, r.family) for r in runs][:: len(ARMS)] == [
        (0, "paths"),
        (0, "periodic"),
        (1, "paths"),
        (1, "periodic"),
    ]


def test_parallel_runs_share_the_cores_unless_the_user_set_the_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_job(1) == {} and threads_per_job(2) == {"OMP_NUM_THREADS": "4"}
    assert threads_per_job(16) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_job(2) == {}


def test_unknown_family_and_bad_override_fail_before_anything_runs(tmp_path):
    with pytest.raises(BenchmarkError, match="unknown families: spirals"):
        plan_runs(["spirals"], [0], tmp_path, [])
    with pytest.raises(BenchmarkError, match=r"input\.interval"):
        plan_runs(["paths"], [0], tmp_path, ["input.interval=sideways"])
    # keys the benchmark sets per run would be given twice
    with pytest.raises(BenchmarkError, match=r"--set loss\.align, train\.seed: the benchmark sets these"):
        plan_runs(["paths"], [0], tmp_path, ["train.seed=3", "loss.align=off"])
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the verdict
def test_family_verdict_needs_the_student_above_fixmatch_on_mean_and_every_seed_and_twice_chance():
    met = family_verdict(4, {0: 70.0, 1: 60.0}, {0: 40.0, 1: 50.0})
    assert met["met"] and met["chance"] == 25.0 and met["twice_chance"] == 50.0 and met["margin"] == 20.0
    assert met["failures"] == []

    one_seed_behind = family_verdict(4, {0: 90.0, 1: 51.0}, {0: 40.0, 1: 52.0})
    assert one_seed_behind["beats_baseline_mean"] and not one_seed_behind["beats_baseline_every_seed"]
    assert not one_seed_behind["met"] and one_seed_behind["failures"] == [
        "student not above FixMatch-RGB on every seed"
    ]

    near_chance = family_verdict(4, {0: 45.0, 1: 50.0}, {0: 25.0, 1: 25.0})
    assert near_chance["beats_baseline_every_seed"] and not near_chance["at_least_twice_chance"]
    assert near_chance["failures"] == ["student below twice chance (47.5 < 50.0)"]

    behind = family_verdict(5, {0: 30.0}, {0: 30.0})  # a tie is not a win
    assert behind["failures"] == [
        "student not above FixMatch-RGB (30.0 vs 30.0)",
        "student below twice chance (30.0 < 40.0)",
    ]
    assert family_verdict(4, {0: 50.0}, {0: 10.0})["at_least_twice_chance"]  # exactly twice chance counts

    with pytest.raises(ValueError, match="same seeds"):
        family_verdict(4, {0: 70.0, 1: 60.0}, {0: 40.0})


def hand_made_results(student: dict[int, float], baseline: dict[int, float]) -> dict:
    table = {}
    for family in ("paths", "periodic", "accelerating"):
        s = student if family == "paths" else {0: 80.0, 1: 90.0}
        table[family] = {
            "classes": 4,
            "class_names": sorted(FAMILIES[family]),
            "tuned_on": False,
            "student": spread(list(s.values())),
            "teacher": spread([95.0, 97.0]),
            "fixmatch_rgb": spread(list(baseline.values())),
            "verdict": family_verdict(4, s, baseline),
        }
    return {
        "table": table,
        "overall": overall(table),
        "machine_slug": "amd-epyc-2c",
        "created_utc": "2026-01-02T03:04:05",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None},
        "device": "cpu",
        "command": "python -m ...",
        "user_sets": ["optim.steps=600"],
        "seeds": [0, 1],
        "views": "10 clips x 3 crops",
        "dataset": {
            "width": 128,
            "height": 96,
            "frames": 48,
            "train_per_class": 16,
            "labeled_per_class": 4,
            "val_per_class": 8,
            "seed": 0,
        },
        "budget": {
            "steps": 480,
            "epochs": 60,
            "batch": [8, 8],
            "flip": False,
            "train_minutes_total": 40.0,
            "train_minutes_per_run": spread([3.0, 3.5]),
        },
        "wall_time_s": 100.0,
        "runs": [],
    }


def test_report_says_plainly_which_family_misses_the_target_and_within_which_budget():
    results = hand_made_results({0: 35.0, 1: 45.0}, {0: 40.0, 1: 30.0})
    assert results["overall"]["met"] == 2 and not results["overall"]["all_met"]
    text = markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| paths"))
    assert "40.0 ± 7.1 [35.0, 45.0]" in row and "**NOT met**" in row and "yes (+5.0) / no" in row
    assert "Target met on 2 of 3 families; NOT met within 480 steps, 3.2 min of training per run on amd-epyc-2c" in text
    assert "  - paths: student not above FixMatch-RGB on every seed; student below twice chance (40.0 < 50.0)" in text

    results = hand_made_results({0: 80.0, 1: 90.0}, {0: 40.0, 1: 30.0})
    text = markdown(results)
    assert "Target met on all 3 families within 480 steps" in text and "NOT met" not in text
    results["budget"]["flip"] = True
    assert "input.flip is on: a horizontal flip turns the classes of paths into one another" in markdown(results)


def test_fewer_than_three_untuned_families_is_flagged():
    table = hand_made_results({0: 80.0, 1: 90.0}, {0: 40.0, 1: 30.0})["table"]
    table["directions"] = dict(table.pop("periodic"), tuned_on=True)
    del table["accelerating"]
    assert overall(table)["untuned_families"] == 1 and not overall(table)["enough_untuned_families"]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_benchmark_writes_the_table_and_reuses_finished_runs(tmp_path, capsys):
    args = [
        "--families",
        "periodic",
        "--seeds",
        "1",
        "--root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "results"),
        *TINY_DATA,
        "--set",
        *TINY_SETS,
    ]
    assert bench_main(args) == 0
    (json_path,) = (tmp_path / "results").glob("generalization-*.json")
    (md_path,) = (tmp_path / "results").glob("generalization-*.md")
    assert md_path.stem == json_path.stem
    results = json.loads(json_path.read_text())
    assert results["families"] == ["periodic"] and results["dataset"]["width"] == 32
    assert results["budget"]["steps"] == 2 and results["views"] == "2 clips x 3 crops"
    row = results["table"]["periodic"]
    assert row["classes"] == 4 and row["class_names"] == sorted(FAMILIES["periodic"])
    assert row["student"]["n"] == 1 and row["teacher"]["n"] == 1 and row["fixmatch_rgb"]["n"] == 1
    assert row["verdict"]["met"] == (row["verdict"]["failures"] == [])
    assert results["overall"]["families"] == 1 and not results["overall"]["enough_untuned_families"]
    assert {(r["arm"], r["seed"]) for r in results["runs"]} == {(METHOD, 0), (BASELINE, 0)}
    assert all("--config" not in r["command"] for r in results["runs"])
    text = md_path.read_text()
    assert "| periodic: bounce_vertical, oscillate_horizontal, pulsate, swing | 4 | 25.0 |" in text
    assert "## Verdict" in text and "Only 1 families the recipe was not tuned on" in text
    data = tmp_path / "runs" / "periodic" / "data"
    assert sorted(p.name for p in (data / "labeled").iterdir()) == sorted(FAMILIES["periodic"])

    capsys.readouterr()
    assert bench_main(args) == 0  # everything is done: nothing is generated or trained again
    out = capsys.readouterr().out
    assert "present already" in out and out.count("trained already") == 2 and "$ -m training" not in out


def test_finished_only_keeps_the_seeds_whose_two_arms_finished(tmp_path):
    from benchmarks.generalization import finished_pairs
    from training.config import save_config

    runs = plan_runs(["paths", "periodic"], [0, 1], tmp_path, ["optim.steps=700"])
    done = {
        ("paths", 0, "method"),
        ("paths", 0, "fixmatch-rgb"),
        ("paths", 1, "method"),
        ("periodic", 0, "method"),
        ("periodic", 0, "fixmatch-rgb"),
    }
    for r in runs:
        if (r.family, r.seed, r.name) in done:
            r.folder.mkdir(parents=True)
            save_config(r.config, r.folder / "config.yaml")
            (r.folder / "metrics.json").write_text("{}")
    keep, left = finished_pairs(runs)
    assert sorted((r.family, r.seed) for r in keep) == [("paths", 0)] * 2 + [("periodic", 0)] * 2
    assert sorted((r.family, r.seed, r.name) for r in left) == [
        ("paths", 1, "fixmatch-rgb"),
        ("paths", 1, "method"),
        ("periodic", 1, "fixmatch-rgb"),
        ("periodic", 1, "method"),
    ]
