"""`make bench-accuracy`: the paper's Table 1 (and Table 5) in miniature.

Trains the ablation rows of Table 1 at one matched budget (same config, epochs, batches and
steps; only the `loss.*` switches differ), for several seeds each, on the synthetic motion
dataset by default:

    fixmatch-rgb   FixMatch on RGB alone (the baseline)
    fixmatch-tg    FixMatch on temporal gradient alone
    align          RGB student + TG teacher, fused pseudo-labels, dense alignment
    contrast       RGB student + TG teacher, fused pseudo-labels, cross-modal contrastive loss
    full           both losses: the method
    supervised     reference: RGB, every training video labeled, no unlabeled loss (first seed only)

(`fused`, FixMatch with both networks and fused pseudo-labels but neither loss, can be added
with --configs to separate the effect of pseudo-label fusion from the two losses.)

Each run lives in ROOT/<config>-seed<k>/ and is an ordinary `python -m training train` run
folder, so a finished run is reused, an interrupted one resumes, and any of them can be
inspected, evaluated or exported like any other. The seed is `train.seed` (model init, sampler
order, augmentation draws); the labeled split is the config's own and is the same for every
seed, as the paper uses one published split. Every run is then evaluated with `python -m
training evaluate --figures` (frames, curves, confusion matrices into RUN/figures/), and the
baseline and the full method with `--robustness` too (Table 5).

Results: benchmarks/results/accuracy-<machine>-<date>.json and .md (Table-1-shaped markdown:
30-view Top-1/Top-5 of the deployed RGB student and of the TG teacher, mean ± sample standard
deviation over seeds; the robustness table; a verdict line), with the figures of the first
seed's baseline and full runs copied next to them.

Full size on GPUs (UCF-101 split 1, 20 % labels, the paper's recipe and 180 epochs):
    python -m training prepare ucf101 --root data/ucf101
    python -m benchmarks.accuracy --config configs/ucf101_20.yaml --root runs/accuracy-ucf101 --gpus 8
(`--set data.root=DIR` where the dataset lives elsewhere; `--epochs` for a shorter schedule.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training.config import Config, ConfigError, config_from_dict, diff_configs, load_config, save_config
from training.distributed import training_device
from training.robustness import CORRUPTIONS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "synthetic.yaml"


@dataclass
class Setting:
    """One row of the table: its label, the config switches it sets, the paper's Top-1."""

    label: str
    overrides: list[str]
    paper_top1: float | None = None  # UCF-101 20 %, R3D-18 from scratch (Tables 1 and 3a)
    note: str = ""


ONE_STREAM = ["loss.align=off", "loss.contrast=false", "loss.fusion=self"]
SETTINGS = {
    "fixmatch-rgb": Setting("FixMatch, RGB", ["loss.streams=rgb", *ONE_STREAM], 54.1),
    "fixmatch-tg": Setting("FixMatch, TG", ["loss.streams=tg", *ONE_STREAM], 68.3, "paper: Table 3a, fast TG"),
    "fused": Setting("FixMatch, fused pseudo-labels", ["loss.streams=both", "loss.align=off", "loss.contrast=false"]),
    "align": Setting("+ alignment", ["loss.streams=both", "loss.align=cosine", "loss.contrast=false"], 74.6),
    "contrast": Setting("+ contrastive", ["loss.streams=both", "loss.align=off", "loss.contrast=true"], 68.6),
    "full": Setting("both (ours)", ["loss.streams=both", "loss.align=cosine", "loss.contrast=true"], 76.1),
    "supervised": Setting(
        "supervised, all labels (RGB)",
        ["loss.streams=rgb", *ONE_STREAM],
        None,
        "reference: every training video labeled, unlabeled loss off",
    ),
}
DEFAULT_CONFIGS = ("fixmatch-rgb", "fixmatch-tg", "align", "contrast", "full", "supervised")
REFERENCE_CONFIGS = ("supervised",)  # trained with the first seed only
BASELINE, METHOD = "fixmatch-rgb", "full"
ROBUSTNESS_CONFIGS = (BASELINE, METHOD)


class BenchmarkError(RuntimeError):
    """A problem that stops the benchmark; the message says what to do."""


# ----------------------------------------------------------------------------- the plan
def setting_overrides(name: str, base: Config) -> list[str]:
    """The `key=value` switches of one table row on top of the base config."""
    setting = SETTINGS[name]
    items = list(setting.overrides)
    if name == "supervised":
        if base.data.format != "lists" or not base.data.train_list:
            raise BenchmarkError(
                "the 'supervised' reference needs a list-file dataset with a train list "
                "(data.format=lists, data.train_list); leave it out with --configs"
            )
        # every training video labeled; the unlabeled loss never starts (its warm-up lasts the whole run)
        items += [
            f"data.labeled_list={base.data.train_list}",
            "data.labeled_ratio=0",
            "data.labeled_per_class=0",
            f"optim.sup_warmup_steps={base.optim.steps}"
            if base.optim.steps
            else f"optim.sup_warmup_epochs={base.optim.epochs}",
        ]
    return items


def dataset_root(base: Config, user_sets: list[str]) -> list[str]:
    """A separate folder per synthetic dataset setting (data/synthetic-<digest>), so that a
    different `data.synthetic_size` never collides with an existing dataset; a given data.root
    is kept as is."""
    if not base.data.synthetic or any(s.split("=", 1)[0].strip() == "data.root" for s in user_sets):
        return []
    size = base.to_dict()["data"]["synthetic_size"]
    if not size["family"]:  # the key postdates the first datasets: leaving it out keeps their folders
        del size["family"]
    size = json.dumps(size, sort_keys=True)
    digest = hashlib.sha1(size.encode()).hexdigest()[:8]
    return [f"data.root={base.data.root.rstrip('/')}-{digest}"]


@dataclass
class Run:
    name: str
    seed: int
    folder: Path
    overrides: list[str]  # everything passed to `python -m training train --set`
    config: Config


def plan_runs(
    config: Path,
    names: list[str],
    seeds: list[int],
    root: Path,
    *,
    user_sets: list[str],
    epochs: int | None = None,
    steps: int | None = None,
) -> tuple[list[Run], list[str]]:
    """Resolve every run's config up front, so a bad combination fails before any training.
    Returns the runs and the overrides common to all of them."""
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise BenchmarkError(f"unknown configs: {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    common = (
        list(user_sets) + ([f"optim.epochs={epochs}"] if epochs else []) + ([f"optim.steps={steps}"] if steps else [])
    )
    base = load_config(config, common)
    common += dataset_root(base, user_sets)
    runs = []
    for name in names:
        # the supervised row is a reference (where the ceiling is), not a compared row: one seed
        for seed in seeds[:1] if name in REFERENCE_CONFIGS else seeds:
            overrides = common + setting_overrides(name, base) + [f"train.seed={seed}"]
            try:
                cfg = load_config(config, overrides)
            except ConfigError as exc:
                raise BenchmarkError(f"config {name!r} is not valid on {config}: {exc}") from exc
            runs.append(Run(name, seed, root / f"{name}-seed{seed}", overrides, cfg))
    return runs, common


# ----------------------------------------------------------------------------- running
def finished(run: Run) -> bool:
    """True if the run folder holds this exact run, trained to the end; an error if it holds
    another one (the folder would refuse to resume anyway)."""
    saved = run.folder / "config.yaml"
    if not saved.is_file():
        return False
    changed = diff_configs(config_from_dict(yaml.safe_load(saved.read_text())), run.config)
    if changed:
        raise BenchmarkError(
            f"{run.folder} holds a run with different settings ({', '.join(changed)}): "
            "pass another --root, or delete that folder"
        )
    metrics = run.folder / "metrics.json"
    return metrics.is_file()  # written once, when the run's last epoch and its test are done


def _call(args: list[str], what: str, env: dict[str, str] | None = None) -> None:
    print("  $ " + " ".join(args[1:]), flush=True)
    # relative paths (runs, data roots) mean what they mean to the caller
    code = subprocess.call(args, env=None if env is None else {**os.environ, **env})
    if code != 0:
        raise BenchmarkError(f"{what} failed with exit code {code} (see the output above)")


def train(run: Run, *, gpus: int = 1) -> dict:
    """Train (or resume) one run from its planned config, written into the run folder first:
    the run is then what was planned even if the config file is edited while it trains."""
    if finished(run):
        print(f"[{run.folder.name}] trained already: reusing {run.folder / 'metrics.json'}", flush=True)
    else:
        print(f"[{run.folder.name}] training: {' '.join(run.overrides)}", flush=True)
        planned = run.folder / "config.yaml"
        if not planned.is_file():
            run.folder.mkdir(parents=True, exist_ok=True)
            save_config(run.config, planned)
        # torchrun (torch.distributed.run) for several GPUs; its parser needs --run-dir, not --run
        launch = [sys.executable] + (
            ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"] if gpus > 1 else []
        )
        _call(
            launch + ["-m", "training", "train", "--run-dir", str(run.folder), "--config", str(planned)],
            f"training {run.folder}",
        )
    return json.loads((run.folder / "metrics.json").read_text())


def evaluated(run: Run, robustness: bool) -> dict | None:
    """The run's eval.json if it is newer than its checkpoint and holds what is asked."""
    path, ckpt = run.folder / "eval.json", run.folder / "last.pt"
    if not path.is_file() or path.stat().st_mtime_ns < ckpt.stat().st_mtime_ns:
        return None
    report = json.loads(path.read_text())
    figures = report.get("figures") or []
    if not figures or not all(Path(f).is_file() for f in figures):
        return None
    if robustness and "robustness" not in report:
        return None
    return report


def evaluate(run: Run, *, robustness: bool, workers: int) -> dict:
    report = evaluated(run, robustness)
    if report is not None:
        print(f"[{run.folder.name}] evaluated already: reusing {run.folder / 'eval.json'}", flush=True)
        return report
    print(f"[{run.folder.name}] evaluating: figures{' and robustness' if robustness else ''}", flush=True)
    _call(
        [sys.executable, "-m", "training", "evaluate", "--run", str(run.folder), "--figures", "--workers", str(workers)]
        + (["--robustness"] if robustness else []),
        f"evaluating {run.folder}",
    )
    return json.loads((run.folder / "eval.json").read_text())


# ----------------------------------------------------------------------------- summary
def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min, max and the values themselves."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "values": [float(v) for v in a],
        "n": int(len(a)),
    }


def summarize(results: dict[str, dict[int, dict]]) -> dict:
    """{config: {seed: {"metrics": ..., "eval": ...}}} -> the table: per config and model,
    Top-1/Top-5 over seeds, and robustness Top-1 and drop per corruption."""
    table = {}
    for name, by_seed in results.items():
        row: dict[str, Any] = {
            "label": SETTINGS[name].label,
            "paper_top1": SETTINGS[name].paper_top1,
            "seeds": sorted(by_seed),
        }
        for model in ("student", "teacher"):
            present = [r["metrics"][model] for r in by_seed.values() if model in r["metrics"]]
            if present:
                row[model] = {k: spread([m[k] for m in present]) for k in ("top1", "top5", "mean_class")}
        robust = [r for r in by_seed.values() if "robustness" in (r.get("eval") or {})]
        if robust:
            row["robustness"] = {"clean": spread([r["metrics"]["student"]["top1"] for r in robust])}
            for kind in CORRUPTIONS:
                top1 = [r["eval"]["robustness"]["student"][kind]["top1"] for r in robust]
                drop = [r["metrics"]["student"]["top1"] - t for r, t in zip(robust, top1, strict=True)]
                row["robustness"][kind] = {"top1": spread(top1), "drop": spread(drop)}
        table[name] = row
    return table


def verdict(table: dict) -> dict:
    """Does the miniature show the paper's effect? The full method's student above the FixMatch
    RGB baseline by more than the seed spread, and the one-loss rows between the two."""
    if BASELINE not in table or METHOD not in table:
        return {"checked": False, "reason": f"needs both {BASELINE!r} and {METHOD!r} in --configs"}
    base, full = table[BASELINE]["student"]["top1"], table[METHOD]["student"]["top1"]
    margin = full["mean"] - base["mean"]
    seed_spread = max(base["std"], full["std"])
    out = {
        "checked": True,
        "baseline_top1": base["mean"],
        "method_top1": full["mean"],
        "margin": margin,
        "seed_spread": seed_spread,
        "beats_by_more_than_spread": bool(margin > seed_spread),
        "every_seed_beats_every_seed": bool(full["min"] > base["max"]),
    }
    for name in ("align", "contrast"):
        if name in table:
            m = table[name]["student"]["top1"]["mean"]
            out[f"{name}_between"] = bool(base["mean"] < m < full["mean"])
    if "align" in table and "contrast" in table:
        out["align_above_contrast"] = bool(
            table["align"]["student"]["top1"]["mean"] > table["contrast"]["student"]["top1"]["mean"]
        )
    if "supervised" in table:  # is the label ratio one where semi-supervised learning has room?
        out["supervised_top1"] = table["supervised"]["student"]["top1"]["mean"]
        out["baseline_below_supervised"] = out["supervised_top1"] - base["mean"]
    return out


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _pm(s: dict | None) -> str:
    """ "mean ± std" of a spread() record, or a dash."""
    if not s:
        return "–"
    text = f"{s['mean']:.1f}"
    return text + (f" ± {s['std']:.1f}" if s["n"] > 1 else "")


def markdown(results: dict) -> str:
    """The markdown report: settings, Table 1 in miniature, the robustness table, the verdict."""
    table, v, data = results["table"], results["verdict"], results["dataset"]
    m = results["machine"]
    gpu = f", {m['gpu']['name']}" if m.get("gpu") else ", no GPU"
    lines = [
        f"# Accuracy benchmark: {results['machine_slug']}, {results['created_utc'][:10]}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores{gpu}; training time of all runs "
        f"{results['train_time_s'] / 60:.1f} min; wall time of this invocation "
        f"{results['wall_time_s'] / 60:.1f} min (finished runs are reused, not redone)",
        f"- Command: `{results['command']}`",
        f"- Config `{results['config']}` with the overrides in the command; "
        f"{results.get('budget') or str(results['epochs']) + ' epochs'} for "
        f"every run; seeds {', '.join(map(str, results['seeds']))} (`train.seed`)",
        f"- Data: {data['classes']} classes, {data['labeled_videos']} labeled of {data['unlabeled_videos']} "
        f"training videos ({data['labeled_split']}), {data['val_videos']} validation videos; "
        f"test: {data['views']}",
        "",
        f"## Table 1 in miniature (test accuracy over {data['views']}, %, mean ± sample std over seeds)",
        "",
        "| Setting | RGB student Top-1 | RGB student Top-5 | TG teacher Top-1 | TG teacher Top-5 "
        "| paper Top-1 (UCF-101 20 %) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in table.items():
        s, t = row.get("student", {}), row.get("teacher", {})
        paper = "–" if row["paper_top1"] is None else f"{row['paper_top1']:.1f}"
        note = f" ({SETTINGS[name].note})" if SETTINGS[name].note else ""
        lines.append(
            f"| {row['label']}{note} | {_pm(s.get('top1'))} | {_pm(s.get('top5'))} | {_pm(t.get('top1'))} "
            f"| {_pm(t.get('top5'))} | {paper} |"
        )
    lines += [
        "",
        "Paper: Table 1 (UCF-101 20 %, R3D-18 from scratch); FixMatch TG from Table 3a. Per-seed values "
        "are in the JSON file.",
    ]
    robust = {n: r["robustness"] for n, r in table.items() if "robustness" in r}
    if robust:
        names = list(robust)
        lines += [
            "",
            "## Robustness (Table 5): RGB student Top-1 under corrupted test input (change from clean)",
            "",
            "| Corruption | " + " | ".join(table[n]["label"] for n in names) + " |",
            "| --- |" + " --- |" * len(names),
        ]
        lines.append("| none | " + " | ".join(_pm(robust[n]["clean"]) for n in names) + " |")
        for kind in CORRUPTIONS:
            cells = [f"{_pm(robust[n][kind]['top1'])} ({-robust[n][kind]['drop']['mean']:+.1f})" for n in names]
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Contrast and brightness: PIL ImageEnhance factors drawn uniformly in [0.5, 1.5) per video "
            "(seeded, the same videos for every model); grayscale: luma in all three channels. "
            "Paper (UCF-101 20 %): grayscale costs the baseline 28.0 points and the student 14.6.",
        ]
    lines += ["", "## Verdict", ""]
    if v.get("checked"):
        outcome = (
            "beats the baseline by more than the seed spread"
            if v["beats_by_more_than_spread"]
            else "NOT above the baseline by more than the seed spread"
        )
        lines.append(
            f"- Full method vs FixMatch RGB: {v['method_top1']:.1f} vs {v['baseline_top1']:.1f} Top-1, "
            f"margin {v['margin']:+.1f} points; larger seed std {v['seed_spread']:.1f} → {outcome}; "
            f"every seed above every baseline seed: {_yes(v['every_seed_beats_every_seed'])}"
        )
        for name, text in (("align", "alignment-only"), ("contrast", "contrastive-only")):
            if f"{name}_between" in v:
                lines.append(
                    f"- {text} between baseline and full method (as in the paper): {_yes(v[name + '_between'])}"
                )
        if "align_above_contrast" in v:
            lines.append(
                f"- alignment-only above contrastive-only (as in the paper): {_yes(v['align_above_contrast'])}"
            )
        if "supervised_top1" in v:
            lines.append(
                f"- supervised with every label: {v['supervised_top1']:.1f} Top-1; the baseline is "
                f"{v['baseline_below_supervised']:.1f} points below it"
            )
    else:
        lines.append(f"- not checked: {v['reason']}")
    if results.get("figures"):
        lines += ["", "## Figures (first seed)", ""]
        for name, files in results["figures"].items():
            links = ", ".join(
                f"[{Path(f).stem}]({Path(f).relative_to(Path(results['markdown']).parent).as_posix()})" for f in files
            )
            lines.append(f"- {SETTINGS[name].label}: {links}")
    lines += [
        "",
        "## Runs",
        "",
        "| Run | train time (s) | student Top-1 | teacher Top-1 |",
        "| --- | --- | --- | --- |",
    ]
    for by_seed in results["runs"].values():
        for r in by_seed.values():
            top1 = [f"{r['metrics'][k]['top1']:.1f}" if k in r["metrics"] else "–" for k in ("student", "teacher")]
            lines.append(f"| `{r['folder']}` | {r['metrics'].get('train_time_s', '–')} | {top1[0]} | {top1[1]} |")
    return "\n".join(lines) + "\n"


def copy_figures(runs: list[Run], out_dir: Path) -> dict[str, list[str]]:
    """Copy the first seed's figures of the baseline and the full method next to the results."""
    copied: dict[str, list[str]] = {}
    for name in ROBUSTNESS_CONFIGS:
        first = next((r for r in runs if r.name == name), None)
        if first is None or not (first.folder / "figures").is_dir():
            continue
        target = out_dir / name
        target.mkdir(parents=True, exist_ok=True)
        copied[name] = []
        for png in sorted((first.folder / "figures").glob("*.png")):
            shutil.copy2(png, target / png.name)
            copied[name].append(_shown(target / png.name))
    return copied


def _shown(path: Path) -> str:
    """A path as recorded in the results: relative to the repository where it lies inside it."""
    path = Path(path).resolve()
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


# ----------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="base config (default: the synthetic default)")
    p.add_argument(
        "--configs",
        nargs="+",
        default=list(DEFAULT_CONFIGS),
        metavar="NAME",
        help=f"table rows to run (default: {' '.join(DEFAULT_CONFIGS)}; also: fused)",
    )
    p.add_argument("--seeds", type=int, default=2, help="seeds per config: train.seed = 0 .. N-1 (default 2)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="budget of every run in epochs, for a config whose budget is in epochs (the paper configs)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="budget of every run in optimizer steps, for a config whose budget is in steps (the default)",
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    p.add_argument("--root", default="runs/accuracy", help="parent folder of the run folders")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="where the JSON/markdown go")
    p.add_argument("--workers", type=int, default=None, help="decode workers of the evaluation (default: the config's)")
    p.add_argument("--gpus", type=int, default=1, help="train each run on N GPUs with torchrun (default 1 process)")
    p.add_argument("--no-robustness", action="store_true", help="skip the corrupted-input evaluation")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their overrides, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    config = Path(args.config)
    names = list(dict.fromkeys(args.configs))
    if args.seeds < 1:
        print("error: --seeds must be >= 1", file=sys.stderr)
        return 2
    try:
        runs, common = plan_runs(
            config,
            names,
            list(range(args.seeds)),
            Path(args.root),
            user_sets=args.set,
            epochs=args.epochs,
            steps=args.steps,
        )
    except (BenchmarkError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    announce(runs, names, args)
    if args.dry_run:
        for run in runs:
            print(f"  {run.folder}: --set {' '.join(run.overrides)}")
        return 0

    from benchmarks.machine import describe_machine

    machine = describe_machine()
    try:
        results_by_run = train_and_evaluate(runs, args, started)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    prefix = "accuracy-" + ("" if config.resolve() == DEFAULT_CONFIG else f"{config.stem}-")
    device, slug, created, json_path, md_path = results_files(prefix, machine, runs[0].config, args.out)
    results = {
        "benchmark": "accuracy",
        "created_utc": created.isoformat(timespec="seconds"),
        "machine": machine,
        "machine_slug": slug,
        "device": device,
        "command": "python -m benchmarks.accuracy " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": _shown(config),
        "common_overrides": common,
        **collect_results(runs, names, args, results_by_run),
        "json": _shown(json_path),
        "markdown": _shown(md_path),
        "wall_time_s": round(time.time() - started, 1),
        "train_time_s": round(
            sum(r["metrics"].get("train_time_s", 0.0) for by in results_by_run.values() for r in by.values()), 1
        ),
        "figures": copy_figures(runs, Path(args.out) / f"{json_path.stem}-figures"),
    }
    write_results(results, json_path, md_path)
    return 0


def budget_of(run: Run) -> tuple[int, int, str]:
    """The runs' budget, their supervised warm-up and the unit of both (steps or epochs)."""
    o = run.config.optim
    budget, warm = (o.steps, o.sup_warmup_steps) if o.steps else (o.epochs, o.sup_warmup_epochs)
    return budget, warm, "steps" if o.steps else "epochs"


def announce(runs: list[Run], names: list[str], args: argparse.Namespace) -> None:
    """The benchmark's size, and a warning when no run would ever use its unlabeled videos."""
    budget, warm, unit = budget_of(runs[0])
    print(
        f"accuracy benchmark: {len(names)} configs x {args.seeds} seeds = {len(runs)} runs of {budget} {unit} "
        f"under {args.root}",
        flush=True,
    )
    if warm >= budget:
        print(
            f"warning: the supervised warm-up ({warm} {unit}) is as long as the run ({budget}): the unlabeled loss "
            "never starts, every semi-supervised row is supervised only",
            flush=True,
        )


def train_and_evaluate(runs: list[Run], args: argparse.Namespace, started: float) -> dict[str, dict[int, dict]]:
    """Train (or reuse) and evaluate every run in turn: config name -> seed -> folder, metrics, eval."""
    results_by_run: dict[str, dict[int, dict]] = {}
    for run in runs:
        t0 = time.time()
        metrics = train(run, gpus=args.gpus)
        robust = not args.no_robustness and run.name in ROBUSTNESS_CONFIGS
        workers = run.config.data.num_workers if args.workers is None else args.workers
        report = evaluate(run, robustness=robust, workers=workers)
        results_by_run.setdefault(run.name, {})[run.seed] = {
            "folder": str(run.folder),
            "metrics": metrics,
            "eval": report,
        }
        print(
            f"[{run.folder.name}] done in {time.time() - t0:.0f} s; total {(time.time() - started) / 60:.1f} min",
            flush=True,
        )
    return results_by_run


def collect_results(
    runs: list[Run], names: list[str], args: argparse.Namespace, results_by_run: dict[str, dict[int, dict]]
) -> dict[str, Any]:
    """The budget, the dataset, the Table-1 summary and its verdict, and each run's figures."""
    o = runs[0].config.optim
    budget, _, unit = budget_of(runs[0])
    table = summarize(results_by_run)
    return {
        "epochs": None if o.steps else o.epochs,
        "steps": o.steps or None,
        "budget": f"{budget} {unit}",
        "seeds": list(range(args.seeds)),
        "configs": names,
        "dataset": dataset_summary(runs[0].folder),
        "table": table,
        "verdict": verdict(table),
        "runs": {
            n: {
                s: {"folder": r["folder"], "metrics": r["metrics"], "robustness": r["eval"].get("robustness")}
                for s, r in by.items()
            }
            for n, by in results_by_run.items()
        },
    }


def write_results(results: dict[str, Any], json_path: Path, md_path: Path) -> None:
    text = markdown(results)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(text)
    print("\n" + text)
    print(f"wrote {json_path} and {md_path}")


def results_stem(prefix: str, slug: str, created: datetime) -> str:
    """The name of a benchmark's result files: what ran, where (benchmarks/machine.py) and when."""
    return f"{prefix}{slug}-{created:%Y-%m-%d}"


def results_files(prefix: str, machine: dict, cfg: Config, out: str | Path):
    """(device, machine slug, creation time, JSON path, markdown path) of a training benchmark's
    results, for runs of `cfg` on this machine; creates `out`."""
    from benchmarks.machine import machine_slug

    device = training_device(cfg.train.device)
    slug = machine_slug(machine, device)
    created = datetime.now(timezone.utc)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = results_stem(prefix, slug, created)
    return device, slug, created, out / f"{stem}.json", out / f"{stem}.md"


def dataset_summary(run_folder: Path) -> dict:
    """What the runs trained and tested on, from one run's metrics.json."""
    m = json.loads((run_folder / "metrics.json").read_text())
    model = m.get("student") or m.get("teacher") or {}
    return {
        "classes": m.get("classes"),
        "labeled_videos": m.get("labeled_videos"),
        "unlabeled_videos": m.get("unlabeled_videos"),
        "labeled_split": m.get("labeled_split"),
        "val_videos": model.get("videos"),
        "views": m.get("views"),
    }


if __name__ == "__main__":
    sys.exit(main())
