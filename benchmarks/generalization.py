"""`make bench-generalization`: does the own-data default learn motions it was not tuned on?

The default recipe was chosen on one family of synthetic motions (the four directions). This
benchmark gives it families it never saw, each as a small user dataset would come: cluttered
videos (textured background, distractors, camera jitter, noise) in the folder layout
labeled/<class>/, unlabeled/, val/<class>/ (training/synthetic.py writes them). On each family
and seed it trains, at one budget:

    method        what a user runs on their own videos, no --config:
                  python -m training train --data-root DATA --run ROOT/<family>/method-seed<k>
                      --set train.seed=<k> [--set ...]
    fixmatch-rgb  the same plus loss.streams=rgb loss.align=off loss.contrast=false loss.fusion=self

Each run is an ordinary run folder: a finished one (metrics.json) is reused, an interrupted one
resumes when the benchmark is run again. The target, per family: the method's RGB student
(what is deployed) above FixMatch-RGB on the mean over seeds and on every seed, and at least
twice chance on the mean. The table says plainly where it is not met within the budget.

Results: benchmarks/results/generalization-<machine>-<date>.json and .md.
    python -m benchmarks.generalization --set optim.steps=600         # the budget, for every run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.accuracy import (
    REPO,
    SETTINGS,
    BenchmarkError,
    Run,
    _call,
    _pm,
    _shown,
    _yes,
    finished,
    results_files,
    spread,
)
from training.config import Config, ConfigError, config_from_dict, load_config, parse_overrides
from training.synthetic import FAMILIES

TUNED_FAMILY = "directions"  # the family the default recipe was chosen on
DEFAULT_FAMILIES = ("paths", "periodic", "accelerating", "combined")
# A horizontal flip turns these families' classes into one another (right <-> left, cw <-> ccw).
MIRRORED_FAMILIES = ("directions", "turns", "paths", "combined")
METHOD, BASELINE = "method", "fixmatch-rgb"
ARMS = {METHOD: [], BASELINE: list(SETTINGS[BASELINE].overrides)}


@dataclass
class DatasetShape:
    """The size of each family's dataset: a small user dataset, not the synthetic default."""

    width: int = 128
    height: int = 96
    frames: int = 48
    train_per_class: int = 16  # labeled ones included
    labeled_per_class: int = 4
    val_per_class: int = 8
    seed: int = 0


@dataclass
class FamilyRun(Run):
    """One training run: `argv` is the `python -m training` command line, `config` what it resolves to."""

    family: str = ""
    argv: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- the plan
def dataset_folder(root: Path, family: str) -> Path:
    return root / family / "data"


def train_argv(data: Path, folder: Path, seed: int, arm: str, user_sets: list[str]) -> list[str]:
    """The command line of one run: the own-data default (no --config), the arm's switches last."""
    sets = [*user_sets, f"train.seed={seed}", *ARMS[arm]]
    return ["train", "--data-root", str(data), "--run", str(folder), "--set", *sets]


def resolve(argv: list[str]) -> Config:
    """The config `python -m training <argv>` trains, resolved here by the trainer's own code.
    Before its dataset exists (the recipe reads the data) the keys are checked against the
    recipe's base; the run folder's config.yaml is the one reported."""
    from training.own_data import CPU_BASE
    from training.train import parse_args, resolve_config

    args = parse_args(argv[1:])
    if not Path(args.data_root).is_dir():
        return load_config(CPU_BASE, [f"data.root={args.data_root}", *args.set])
    return resolve_config(args)[0]


def saved_config(run: FamilyRun) -> Config:
    return config_from_dict(yaml.safe_load((run.folder / "config.yaml").read_text()))


def plan_runs(families: list[str], seeds: list[int], root: Path, user_sets: list[str]) -> list[FamilyRun]:
    """Every run with its resolved config, so a bad --set fails before anything is generated."""
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise BenchmarkError(f"unknown families: {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    ours = {"train.seed"} | {key for arm in ARMS.values() for key, _ in parse_overrides(arm)}
    try:
        clash = sorted({key for key, _ in parse_overrides(user_sets)} & ours)
    except ConfigError as exc:
        raise BenchmarkError(str(exc)) from exc
    if clash:
        raise BenchmarkError(
            f"--set {', '.join(clash)}: the benchmark sets these for each run (train.seed from --seeds, "
            "the FixMatch-RGB arm's switches), so they cannot be given"
        )
    runs = []
    # seed by seed over the families, both arms of a seed next to each other: a benchmark stopped
    # early has compared both arms on every family before it starts a second seed
    for seed in seeds:
        for family in families:
            for arm in ARMS:
                folder = root / family / f"{arm}-seed{seed}"
                argv = train_argv(dataset_folder(root, family), folder, seed, arm, user_sets)
                try:
                    config = resolve(argv)
                except ConfigError as exc:
                    raise BenchmarkError(f"{arm} on {family}: {exc}") from exc
                runs.append(FamilyRun(arm, seed, folder, argv[argv.index("--set") + 1 :], config, family, argv))
    return runs


# ----------------------------------------------------------------------------- running
def make_dataset(root: Path, family: str, shape: DatasetShape, workers: int) -> dict:
    """Generate (or find) one family's cluttered dataset; the summary of `generate`."""
    from training.synthetic import generate

    folder = dataset_folder(root, family)
    try:
        summary = generate(folder, num_classes=0, family=family, clutter=True, workers=workers, **asdict(shape))
    except ValueError as exc:
        raise BenchmarkError(f"dataset of {family}: {exc}") from exc
    state = f"generated in {summary['seconds']:.0f} s" if summary["generated"] else "present already"
    print(
        f"[{family}] data {folder}: {len(summary['classes'])} classes, {summary['train']} training videos "
        f"({summary['labeled']} labeled), {summary['val']} val; {state}",
        flush=True,
    )
    return summary


def threads_per_job(jobs: int) -> dict[str, str]:
    """Runs trained side by side share the cores: each gets its share of torch threads (more
    threads than cores slows every run). Empty with one job or an OMP_NUM_THREADS already set."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def train(run: FamilyRun, env: dict[str, str] | None = None) -> dict:
    """Train (or resume, or reuse) one run with the user's command line; its metrics.json."""
    name = f"{run.family}/{run.folder.name}"
    if finished(run):
        print(f"[{name}] trained already: reusing {run.folder / 'metrics.json'}", flush=True)
    else:
        print(f"[{name}] training", flush=True)
        _call([sys.executable, "-m", "training", *run.argv], f"training {run.folder}", env)
    return json.loads((run.folder / "metrics.json").read_text())


def run_steps(metrics: dict, cfg: Config) -> int:
    """Optimizer steps of a finished run (recorded by the trainer, else from its epochs)."""
    if "steps" in metrics:
        return int(metrics["steps"])
    from training.schedule import resolve_schedule

    return resolve_schedule(cfg, metrics["unlabeled_videos"], metrics.get("processes", 1)).total_steps


# ----------------------------------------------------------------------------- summary
def family_verdict(classes: int, student: dict[int, float], baseline: dict[int, float]) -> dict:
    """The targets on one family from Top-1 (%) per seed: the student above the baseline on the
    mean and on every seed (paired by seed), and at least twice chance on the mean."""
    if not student or sorted(student) != sorted(baseline):
        raise ValueError(f"need the same seeds for both arms, got {sorted(student)} and {sorted(baseline)}")
    chance = 100.0 / classes
    s, b = spread(list(student.values())), spread(list(baseline.values()))
    out = {
        "chance": chance,
        "twice_chance": 2 * chance,
        "student_mean": s["mean"],
        "baseline_mean": b["mean"],
        "margin": s["mean"] - b["mean"],
        "beats_baseline_mean": s["mean"] > b["mean"],
        "beats_baseline_every_seed": all(student[k] > baseline[k] for k in student),
        "at_least_twice_chance": s["mean"] >= 2 * chance,
    }
    out["met"] = out["beats_baseline_mean"] and out["beats_baseline_every_seed"] and out["at_least_twice_chance"]
    out["failures"] = failures(out)
    return out


def failures(v: dict) -> list[str]:
    """What a family's verdict misses, in words."""
    out = []
    if not v["beats_baseline_mean"]:
        out.append(f"student not above FixMatch-RGB ({v['student_mean']:.1f} vs {v['baseline_mean']:.1f})")
    elif not v["beats_baseline_every_seed"]:
        out.append("student not above FixMatch-RGB on every seed")
    if not v["at_least_twice_chance"]:
        out.append(f"student below twice chance ({v['student_mean']:.1f} < {v['twice_chance']:.1f})")
    return out


def summarize(runs: list[FamilyRun], metrics: dict[Path, dict]) -> dict:
    """Per family: classes, Top-1 of each arm over seeds (per-seed values kept), the verdict."""
    table = {}
    for family in dict.fromkeys(r.family for r in runs):
        mine = [r for r in runs if r.family == family]
        by_arm = {arm: {r.seed: metrics[r.folder] for r in mine if r.name == arm} for arm in ARMS}
        classes = next(iter(by_arm[METHOD].values()))["classes"]
        student = {seed: m["student"]["top1"] for seed, m in by_arm[METHOD].items()}
        baseline = {seed: m["student"]["top1"] for seed, m in by_arm[BASELINE].items()}
        teacher = [m["teacher"]["top1"] for m in by_arm[METHOD].values() if "teacher" in m]
        table[family] = {
            "classes": classes,
            "class_names": sorted(FAMILIES[family]),
            "tuned_on": family == TUNED_FAMILY,
            "student": spread(list(student.values())),
            "teacher": spread(teacher) if teacher else None,
            "fixmatch_rgb": spread(list(baseline.values())),
            "verdict": family_verdict(classes, student, baseline),
        }
    return table


def overall(table: dict) -> dict:
    """The verdict over all families: met where every family meets its target."""
    missed = {f: row["verdict"]["failures"] for f, row in table.items() if not row["verdict"]["met"]}
    untuned = [f for f in table if f != TUNED_FAMILY]
    return {
        "families": len(table),
        "met": len(table) - len(missed),
        "all_met": not missed,
        "missed": missed,
        "untuned_families": len(untuned),
        "enough_untuned_families": len(untuned) >= 3,
    }


def budget(runs: list[FamilyRun], metrics: dict[Path, dict]) -> dict:
    steps = sorted({run_steps(metrics[r.folder], r.config) for r in runs})
    minutes = [metrics[r.folder].get("train_time_s", 0.0) / 60 for r in runs]
    return {
        "steps": steps[0] if len(steps) == 1 else steps,
        "epochs": metrics[runs[0].folder].get("epochs"),
        "train_minutes_per_run": spread(minutes),
        "train_minutes_total": sum(minutes),
        "batch": [runs[0].config.optim.batch_labeled, runs[0].config.optim.batch_unlabeled],
        "flip": runs[0].config.input.flip,
    }


# ----------------------------------------------------------------------------- report
def _seeds(s: dict | None) -> str:
    return "–" if not s else f"{_pm(s)} [{', '.join(f'{v:.1f}' for v in s['values'])}]"


def markdown(results: dict) -> str:
    table, total, b, shape = results["table"], results["overall"], results["budget"], results["dataset"]
    m = results["machine"]
    gpu = f", {m['gpu']['name']}" if m.get("gpu") else ", no GPU"
    per_run = b["train_minutes_per_run"]
    within = f"{b['steps']} steps, {per_run['mean']:.1f} min of training per run on {results['machine_slug']}"
    lines = [
        f"# Generalization benchmark: {results['machine_slug']}, {results['created_utc'][:10]}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores{gpu} (device: {results['device']})",
        f"- Command: `{results['command']}`",
        f"- Method: the own-data default, `python -m training train --data-root DATA --run RUN --set "
        f"train.seed=K{''.join(' ' + s for s in results['user_sets'])}` (no --config); FixMatch-RGB adds "
        f"`{' '.join(ARMS[BASELINE])}`",
        f"- Budget of every run: {b['steps']} steps ({b['epochs']} epochs on this data), "
        f"batch {b['batch'][0]} labeled + "
        f"{b['batch'][1]} unlabeled clips; training {per_run['mean']:.1f} min per run on average "
        f"(max {per_run['max']:.1f}), {b['train_minutes_total']:.0f} min in all; wall time of this invocation "
        f"{results['wall_time_s'] / 60:.1f} min (finished runs are reused)",
        f"- Data per family: {shape['width']}x{shape['height']}, {shape['frames']} frames, "
        f"{shape['train_per_class']} training videos per class ({shape['labeled_per_class']} labeled), "
        f"{shape['val_per_class']} validation videos per class; clutter on; generator seed {shape['seed']}",
        f"- Seeds: {', '.join(map(str, results['seeds']))} (`train.seed`)"
        + (
            "; fewer for the families with runs listed as not run below (per-seed values in brackets)"
            if results.get("not_run")
            else ""
        )
        + f"; test: {results['views']}",
        "",
        "## Top-1 per family (%, mean ± sample std over seeds, per seed in brackets)",
        "",
        "| Family | classes | chance | RGB student (method) | TG teacher (method) | FixMatch-RGB "
        "| student > FixMatch-RGB: mean / every seed | student ≥ 2× chance | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, row in table.items():
        v = row["verdict"]
        name = f"{family}{' (tuned on)' if row['tuned_on'] else ''}: {', '.join(row['class_names'])}"
        target = "met" if v["met"] else "**NOT met**"
        lines.append(
            f"| {name} | {row['classes']} | {v['chance']:.1f} | {_seeds(row['student'])} "
            f"| {_seeds(row['teacher'])} | {_seeds(row['fixmatch_rgb'])} "
            f"| {_yes(v['beats_baseline_mean'])} ({v['margin']:+.1f}) / {_yes(v['beats_baseline_every_seed'])} "
            f"| {_yes(v['at_least_twice_chance'])} (≥ {v['twice_chance']:.1f}) | {target} |"
        )
    lines += [
        "",
        "Target per family: the RGB student above FixMatch-RGB on the mean and on every seed (paired by "
        "seed), and at least twice chance on the mean.",
        "",
        "## Verdict",
        "",
    ]
    if total["all_met"]:
        lines.append(f"- Target met on all {total['families']} families within {within}.")
    else:
        lines.append(f"- Target met on {total['met']} of {total['families']} families; NOT met within {within} on:")
        lines += [f"  - {family}: {'; '.join(reasons)}" for family, reasons in total["missed"].items()]
    if not total["enough_untuned_families"]:
        lines.append(f"- Only {total['untuned_families']} families the recipe was not tuned on (the claim needs 3).")
    mirrored = [f for f in table if f in MIRRORED_FAMILIES]
    if b["flip"] and mirrored:
        lines.append(
            f"- input.flip is on: a horizontal flip turns the classes of {', '.join(mirrored)} into one "
            "another, so their results say little."
        )
    lines += [
        "",
        "## Runs",
        "",
        "| Run | steps | train time (min) | student Top-1 | teacher Top-1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        top1 = [f"{r[k]:.1f}" if r[k] is not None else "–" for k in ("student_top1", "teacher_top1")]
        lines.append(f"| `{r['folder']}` | {r['steps']} | {r['train_minutes']:.1f} | {top1[0]} | {top1[1]} |")
    missing = results.get("not_run") or []
    if missing:
        lines += [
            "",
            f"Not run within this machine's time ({len(missing)} runs; the table holds the seeds whose two "
            "arms finished): " + ", ".join(f"{m['family']}/{m['arm']}-seed{m['seed']}" for m in missing) + ".",
        ]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.generalization",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    shape = DatasetShape()
    p.add_argument(
        "--families",
        nargs="+",
        default=list(DEFAULT_FAMILIES),
        metavar="NAME",
        help=f"motion families (default: {' '.join(DEFAULT_FAMILIES)}; known: {', '.join(FAMILIES)}; "
        f"{TUNED_FAMILY} is the one the recipe was tuned on)",
    )
    p.add_argument("--seeds", type=int, default=2, help="seeds per family and arm: train.seed = 0 .. N-1 (default 2)")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for every run, e.g. the budget (optim.steps=600)",
    )
    p.add_argument("--root", default="runs/generalization", help="datasets and run folders: ROOT/<family>/...")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the JSON/markdown go")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes generating videos")
    for name in ("width", "height", "frames", "train_per_class", "labeled_per_class", "val_per_class"):
        p.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=getattr(shape, name),
            help=f"dataset of each family (default {getattr(shape, name)})",
        )
    p.add_argument("--data-seed", type=int, default=shape.seed, help="seed of the generated datasets (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their command lines, run nothing")
    p.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: report the seeds whose two arms have finished, and name the runs left out",
    )
    return p.parse_args(argv)


def finished_pairs(runs: list[FamilyRun]) -> tuple[list[FamilyRun], list[FamilyRun]]:
    """The runs of every (family, seed) whose two arms have finished, and the runs left out."""
    done = {(r.family, r.seed, r.name) for r in runs if finished(r)}
    keep = [r for r in runs if all((r.family, r.seed, arm) in done for arm in ARMS)]
    return keep, [r for r in runs if r not in keep]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    families = list(dict.fromkeys(args.families))
    if args.seeds < 1 or args.jobs < 1:
        print("error: --seeds and --jobs must be >= 1", file=sys.stderr)
        return 2
    shape = dataset_shape(args)
    root = Path(args.root)
    try:
        runs = plan_runs(families, list(range(args.seeds)), root, args.set)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"generalization benchmark: {len(families)} families x {len(ARMS)} arms x {args.seeds} seeds = {len(runs)} "
        f"runs under {root}",
        flush=True,
    )
    if args.dry_run:
        for run in runs:
            print("  python -m training " + " ".join(run.argv))
        return 0

    from benchmarks.machine import describe_machine

    machine = describe_machine()
    try:
        runs, left_out, families, metrics = train_all(runs, families, root, shape, args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    device, slug, created, json_path, md_path = results_files("generalization-", machine, runs[0].config, args.out)
    table = summarize(runs, metrics)
    results = {
        "benchmark": "generalization",
        "created_utc": created.isoformat(timespec="seconds"),
        "machine": machine,
        "machine_slug": slug,
        "device": device,
        "command": "python -m benchmarks.generalization " + " ".join(sys.argv[1:] if argv is None else argv),
        "user_sets": list(args.set),
        "arms": ARMS,
        "seeds": list(range(args.seeds)),
        "families": families,
        "dataset": asdict(shape),
        "views": metrics[runs[0].folder].get("views"),
        "budget": budget(runs, metrics),
        "table": table,
        "overall": overall(table),
        "runs": run_records(runs, metrics),
        "json": _shown(json_path),
        "markdown": _shown(md_path),
        "wall_time_s": round(time.time() - started, 1),
        "not_run": [{"family": r.family, "arm": r.name, "seed": r.seed, "folder": _shown(r.folder)} for r in left_out],
    }
    write_results(results, json_path, md_path)
    return 0


def dataset_shape(args: argparse.Namespace) -> DatasetShape:
    return DatasetShape(
        args.width,
        args.height,
        args.frames,
        args.train_per_class,
        args.labeled_per_class,
        args.val_per_class,
        args.data_seed,
    )


def train_all(
    runs: list[FamilyRun], families: list[str], root: Path, shape: DatasetShape, args: argparse.Namespace
) -> tuple[list[FamilyRun], list[FamilyRun], list[str], dict[Path, dict]]:
    """Generate each family's dataset and train every run, `args.jobs` at a time (or, with
    --finished-only, keep the seeds whose two arms are both finished). Returns the runs kept, the
    runs left out, their families and each run folder's final metrics."""
    left_out: list[FamilyRun] = []
    if args.finished_only:
        runs, left_out = finished_pairs(runs)
        if not runs:
            raise BenchmarkError(f"no family has both arms of a seed finished under {root}")
        families = list(dict.fromkeys(r.family for r in runs))
    else:
        for family in families:
            make_dataset(root, family, shape, args.workers)
    with ThreadPoolExecutor(args.jobs) as pool:  # each run is its own process; threads only wait
        env = threads_per_job(args.jobs)
        metrics = dict(zip((r.folder for r in runs), pool.map(lambda r: train(r, env), runs), strict=True))
    for run in runs:
        run.config = saved_config(run)  # what the recipe chose on the generated data
    return runs, left_out, families, metrics


def run_records(runs: list[FamilyRun], metrics: dict[Path, dict]) -> list[dict[str, Any]]:
    """One row per run: where it is, how to repeat it, its length and its two networks' Top-1."""
    return [
        {
            "family": r.family,
            "arm": r.name,
            "seed": r.seed,
            "folder": _shown(r.folder),
            "command": "python -m training " + " ".join(r.argv),
            "steps": run_steps(metrics[r.folder], r.config),
            "train_minutes": metrics[r.folder].get("train_time_s", 0.0) / 60,
            "student_top1": metrics[r.folder].get("student", {}).get("top1"),
            "teacher_top1": metrics[r.folder].get("teacher", {}).get("top1"),
        }
        for r in runs
    ]


def write_results(results: dict[str, Any], json_path: Path, md_path: Path) -> None:
    text = markdown(results)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(text)
    print("\n" + text)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    sys.exit(main())
