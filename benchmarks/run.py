"""`python -m benchmarks.run [--groups ...]` (what `make bench` runs): the latency suites ->
benchmarks/results/<machine>-<date>.{json,md,png}.

1. The run under test (default runs/synthetic) must be trained and exported; where it is not,
   it is trained on the synthetic default and exported with the commands `make train` and
   `make export` run (`python -m training train`, `python -m export`).
2. pytest runs the chosen groups' files in benchmarks/ with pytest-benchmark writing its JSON.
3. The figures are written as results: JSON (every record, with the machine, library
   versions and configuration), a markdown summary the README quotes, and a latency plot.
   Running only some groups replaces those groups in the day's file and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.machine import machine_slug
from benchmarks.profiles import PROFILES

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GROUP_FILES = {
    "no_added_cost": "test_no_added_cost.py",
    "backends": "test_backends.py",
    "serving": "test_serving_path.py",
    "training": "test_training.py",
}
FORMAT_VERSION = 1


class BenchError(Exception):
    """The benchmarks cannot run or their output is unusable; the message says why."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument(
        "--groups", nargs="+", choices=list(GROUP_FILES), default=list(GROUP_FILES), help="groups to run (default: all)"
    )
    p.add_argument("--run", default="runs/synthetic", help="trained and exported run under test")
    p.add_argument("--profile", choices=PROFILES, default="standard", help="standard: make bench; smoke: minimal")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results files")
    p.add_argument("--no-prepare", action="store_true", help="fail instead of training/exporting a missing run")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to run some cases only")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


# ----------------------------------------------------------------------------- the run
def needs_export(run: Path) -> bool:
    """No export yet, or one older than the checkpoint (training went on since)."""
    manifest, checkpoint = run / "export" / "manifest.json", run / "last.pt"
    if not manifest.is_file():
        return True
    return checkpoint.is_file() and manifest.stat().st_mtime < checkpoint.stat().st_mtime


def prepare_run(run: Path, *, allowed: bool) -> list[str]:
    """Train (synthetic default) and export the run where that has not been done; returns
    what was done, for the results' notes."""
    done = []
    steps = []
    if not (run / "metrics.json").is_file():
        steps.append(("train", [sys.executable, "-m", "training", "train", "--run-dir", str(run)]))
    if steps or needs_export(run):
        steps.append(("export", [sys.executable, "-m", "export", "--run", str(run)]))
    for name, cmd in steps:
        if not allowed:
            raise BenchError(
                f"run {run} is not {'trained' if name == 'train' else 'exported'}; "
                f"run `make {name} RUN={run}` first (or drop --no-prepare)"
            )
        print(f"[bench] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` failed; see its output above")
        done.append(f"{name} of {run} done by the benchmark run ({time.time() - t0:.0f} s)")
    return done


# ----------------------------------------------------------------------------- pytest
def run_pytest(args, raw_json: Path) -> int:
    files = [str(HERE / GROUP_FILES[g]) for g in args.groups]
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        f"--bench-run={args.run}",
        f"--bench-profile={args.profile}",
        f"--bench-device={args.device}",
        f"--benchmark-json={raw_json}",
        "--benchmark-sort=name",
        "--benchmark-columns=median,iqr,rounds",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEs",
        "--continue-on-collection-errors",  # a group whose imports fail here must not stop the others
        f"--rootdir={REPO}",
    ]
    if args.keyword:
        cmd += ["-k", args.keyword]
    print(f"[bench] {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def collect(raw: dict) -> dict[str, list[dict]]:
    """The records of each group from pytest-benchmark's JSON, in test order."""
    groups: dict[str, list[dict]] = {}
    for bench in raw.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "record" not in info:
            continue
        record = dict(info["record"], test=bench["name"])
        groups.setdefault(info["group"], []).append(record)
    return groups


def serving_default(run: Path) -> dict:
    """The backend `python -m serving start` picks here by default (serving.backends, "auto")."""
    from serving.backends import BackendError, select_backend
    from serving.manifest import load_manifest

    export_dir = run / "export"
    try:
        return {"backend": select_backend(export_dir, load_manifest(export_dir)).name}
    except (BackendError, OSError, ValueError) as exc:
        return {"backend": None, "reason": str(exc)}


def results_of(raw: dict, groups: dict, *, args, started: float, load_start: tuple, notes: list[str]) -> dict:
    info = raw["tg_action"]
    run = Path(args.run)
    manifest = json.loads((run / "export" / "manifest.json").read_text())
    measured = {
        "measured_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.time() - started, 1),
    }
    return {
        "format_version": FORMAT_VERSION,
        "created_utc": measured["measured_utc"],
        "command": "python -m benchmarks.run " + " ".join(args.argv),
        "machine": info["machine"],
        "machine_slug": machine_slug(info["machine"], info["device"]),
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
        "versions": info["versions"],
        "device": info["device"],
        "profile": info["profile"],
        "cudnn_benchmark": info["cudnn_benchmark"],
        "run": {
            "path": str(run),
            "model_version": manifest["model_version"],
            "architecture": manifest["architecture"],
            "input": manifest["input"],
            "params": manifest["params"],
            "flops_per_view": manifest["flops_per_view"],
        },
        "serving_default": serving_default(run),
        "matmul": info["matmul"],
        "groups": groups,
        "group_runs": {g: measured for g in groups},
        "skipped": info["skipped"],
        "failed": info["failed"],
        "notes": notes,
    }


def merge_previous(results: dict, path: Path) -> dict:
    """Keep the groups of an earlier results file of the same day and profile that this run
    did not measure."""
    if not path.is_file():
        return results
    old = json.loads(path.read_text())
    if old.get("profile", {}).get("name") != results["profile"]["name"] or old.get("device") != results["device"]:
        return results
    for group, records in old.get("groups", {}).items():
        if group not in results["groups"]:
            results["groups"][group] = records
            results["group_runs"][group] = old.get("group_runs", {}).get(group, {})
            for key in ("skipped", "failed"):
                results[key] += [s for s in old.get(key, []) if GROUP_FILES[group] in s["test"]]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_start = time.time(), os.getloadavg()
    run = Path(args.run)
    try:
        notes = prepare_run(run, allowed=not args.no_prepare)
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            raw_path = Path(tmp) / "pytest-benchmark.json"
            code = run_pytest(args, raw_path)
            if not raw_path.is_file():
                raise BenchError(f"pytest exited with code {code} before writing any benchmark data")
            raw = json.loads(raw_path.read_text())
        groups = collect(raw)
        if not groups:
            raise BenchError(f"no benchmark produced a record (pytest exit code {code})")
        results = results_of(raw, groups, args=args, started=started, load_start=load_start, notes=notes)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from benchmarks.report import plot_latency, write_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{results['machine_slug']}-{results['created_utc'][:10]}"
    if args.profile != "standard":
        stem += f"-{args.profile}"
    results = merge_previous(results, out / f"{stem}.json")
    json_path, md_path, png_path = out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    plotted = plot_latency(results, png_path)
    write_markdown(results, md_path, plot=png_path.name if plotted else None)
    print(f"[bench] results: {json_path}\n[bench] summary: {md_path}")
    if plotted:
        print(f"[bench] plot: {png_path}")
    print(md_path.read_text())
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
