"""`make bench-engines`: what each inference engine and precision the server can run does to
accuracy, on runs whose accuracy is not saturated.

A run at 100 % hides what a lower precision costs: a flipped decision on a video the model is
sure of is rare. This benchmark takes exported runs (RUN/export; exported here first when
missing, with `make export`'s defaults) and answers every validation video of each run with every
engine the export offers on this machine, as the server answers a default request: the same
decoded 10 x 3 views (`export.parity.decoded_views`, the server's view code) through the
server's own backends (`serving.backends.load_backend`), the views' softmax averaged. Per run
and engine it reports Top-1, the Top-1 agreement with ONNX Runtime fp32 (what `auto` served on
CPUs before OpenVINO) and the largest logit difference from it, and the median time of one
video's forward (all views in one call; the engines interleaved video by video) with the
speedup over ONNX Runtime fp32. With the export's calibrated stopping rule it adds adaptive
views on every engine: Top-1, mean views per video, and Top-1 agreement with the same engine's
all-view answer (`training.adaptive_views.adaptive_answer`, what the server computes).

An OpenVINO precision that its export's parity gate refused is never served; its row says so,
with the gate's reason.

Without --runs it measures three runs of the synthetic default that are not at 100 % (DEFAULT_RUNS:
FixMatch on RGB alone, and the method stopped at a quarter and at half of its budget), training them first
where they have not finished. Results: benchmarks/results/engines-<machine>-<date>.json and .md.
    python -m benchmarks.engines                       # what `make bench-engines` runs
    python -m benchmarks.engines --runs RUN [RUN ...]  # any exported (or exportable) runs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks.accuracy import BenchmarkError, _shown, results_files
from serving.manifest import input_spec_from_manifest
from training.config import config_from_dict

REFERENCE = "onnxruntime"  # fp32 on the CPU
# What `make bench-engines` measures without --runs: three runs of the synthetic default that are
# not at 100 %, trained here first where they are not finished (`python -m training train`).
DEFAULT_ROOT = Path("runs/engines")
DEFAULT_RUNS = {
    # the baseline: a from-scratch RGB network does not learn the directions (near chance)
    "fixmatch-rgb": ["loss.streams=rgb", "loss.align=off", "loss.contrast=false", "loss.fusion=self"],
    # the method stopped at a quarter and at half of its budget: the student on its way up
    "method-300": ["optim.steps=300", "optim.warmup_steps=25", "optim.sup_warmup_steps=50"],
    "method-600": ["optim.steps=600", "optim.warmup_steps=50", "optim.sup_warmup_steps=100"],
}
KINDS = ("onnxruntime", "torch", "openvino-fp32", "openvino-bf16", "openvino-int8")
TOP1_BOUND = 0.5  # points of Top-1 a reduced precision may cost (the serving target)


# ----------------------------------------------------------------------------- one run
def trained_default_runs(root: Path) -> list[Path]:
    """The DEFAULT_RUNS under `root`, each trained (or resumed) first unless it has finished."""
    runs = []
    for name, overrides in DEFAULT_RUNS.items():
        run = root / name
        if not (run / "metrics.json").is_file():
            cmd = [sys.executable, "-m", "training", "train", "--run-dir", str(run), "--no-plan", "--set", *overrides]
            print("  $ python " + " ".join(cmd[1:]), flush=True)
            if subprocess.call(cmd) != 0:
                raise BenchmarkError(f"training {run} failed (see the output above)")
        runs.append(run)
    return runs


def exported(run: Path) -> dict:
    """RUN/export/manifest.json, exporting the run first (`make export`'s defaults) if it has none."""
    from export.build import ExportError, export_run

    manifest_path = run / "export" / "manifest.json"
    if not manifest_path.is_file():
        print(f"exporting {run} (no export/manifest.json)", flush=True)
        try:
            export_run(run)
        except ExportError as exc:
            raise BenchmarkError(f"{run}: export failed: {exc}") from exc
    return json.loads(manifest_path.read_text())


def engines(export_dir: Path, manifest: dict, threads: int) -> tuple[dict, dict]:
    """({kind: backend} of every kind that loads here, {kind: why not} of the others)."""
    from serving.backends import BackendError, load_backend

    loaded, missing = {}, {}
    for kind in KINDS:
        try:
            loaded[kind] = load_backend(kind, export_dir, manifest, threads=threads)
        except BackendError as exc:
            missing[kind] = str(exc)
    if REFERENCE not in loaded:
        raise BenchmarkError(f"{export_dir}: ONNX Runtime, the reference, cannot run it ({missing[REFERENCE]})")
    return loaded, missing


def answer_videos(run: Path, manifest: dict, loaded: dict, limit: int | None) -> dict:
    """Per engine: each video's raw logits, its scores (softmax averaged over the views, as the
    server answers) and its forward seconds (the engines in a rotating order, so none always runs
    first); plus the labels and the view spec."""
    from export.build import ExportError
    from export.evaluate import validation_videos
    from export.parity import chunked, decoded_views
    from training.views import average_view_scores

    try:
        splits = validation_videos(run)
    except ExportError as exc:
        raise BenchmarkError(str(exc)) from exc
    spec = input_spec_from_manifest(manifest["input"])
    kinds = list(loaded)
    runners = {kind: chunked(backend, backend.max_views) for kind, backend in loaded.items()}
    out: dict[str, Any] = {k: {"logits": [], "scores": [], "seconds": []} for k in kinds}
    labels = []
    for n, (item, views) in enumerate(decoded_views(splits.val, splits.root, spec, limit=limit)):
        if n == 0:  # warm-up: the first calls allocate
            for run_views in runners.values():
                run_views(views)
        for kind in kinds[n % len(kinds) :] + kinds[: n % len(kinds)]:
            t0 = time.perf_counter()
            logits = runners[kind](views)
            out[kind]["seconds"].append(time.perf_counter() - t0)
            out[kind]["logits"].append(logits)
            out[kind]["scores"].append(average_view_scores(torch.from_numpy(logits)).numpy())
        labels.append(item.label)
    if not labels:
        raise BenchmarkError(f"{run}: none of the {len(splits.val)} validation videos could be decoded")
    out["labels"] = np.array(labels)
    # unreadable videos are logged and skipped by decoded_views; with a limit the count is unknown
    out["skipped"] = len(splits.val) - len(labels) if limit is None else None
    out["spec"] = spec
    return out


def engine_row(kind: str, backend, answers: dict, manifest: dict, rule) -> dict:
    """Accuracy, agreement with the reference, time and (with a rule) adaptive views of one engine."""
    from training.adaptive_views import adaptive_answer
    from training.evaluate import accuracy_metrics

    labels, spec, classes = answers["labels"], answers["spec"], len(manifest["classes"])
    own, ref = answers[kind], answers[REFERENCE]
    scores, ref_scores = np.stack(own["scores"]), np.stack(ref["scores"])
    seconds, ref_seconds = np.array(own["seconds"]), np.array(ref["seconds"])
    row = {
        "engine": kind,
        "backend": backend.name,
        **accuracy_metrics(scores, labels, classes),
        "top1_agreement_with_reference": float(np.mean(scores.argmax(1) == ref_scores.argmax(1))),
        "max_abs_logit_diff": float(
            max(np.abs(a - b).max() for a, b in zip(own["logits"], ref["logits"], strict=True))
        ),
        "ms_per_video": float(np.median(seconds) * 1e3),
        "speedup": float(np.median(ref_seconds / seconds)),
    }
    if rule is not None:
        adaptive = [adaptive_answer(x, rule, clips=spec.test_clips, crops=spec.test_crops) for x in own["logits"]]
        a_scores = np.stack([a.scores for a in adaptive])
        row["adaptive"] = {
            **accuracy_metrics(a_scores, labels, classes),
            "mean_views": float(np.mean([a.views_used for a in adaptive])),
            "top1_agreement_with_all_views": float(np.mean(a_scores.argmax(1) == scores.argmax(1))),
        }
    return row


def gate_record(manifest: dict) -> dict:
    """Each OpenVINO precision's status at export, with the gate's reason where it refused."""
    precisions = (manifest.get("openvino") or {}).get("precisions") or {}
    return {f"openvino-{p}": {"status": e.get("status"), "reason": e.get("reason")} for p, e in precisions.items()}


def measure_run(run: Path, *, threads: int, limit: int | None) -> dict:
    from training.adaptive_views import StoppingRule

    manifest = exported(run)
    export_dir = run / "export"
    loaded, missing = engines(export_dir, manifest, threads)
    record = (manifest.get("adaptive_views") or {}).get("rule")
    rule = StoppingRule.from_dict(record) if record else None
    print(f"{run}: {len(loaded)} engines ({', '.join(b.name for b in loaded.values())})", flush=True)
    answers = answer_videos(run, manifest, loaded, limit)
    metrics_path = run / "metrics.json"
    trained = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    arch = manifest["architecture"]
    spec = manifest["input"]
    return {
        "run": _shown(run),
        "model_version": manifest["model_version"],
        "model": f"R3D-18 width {arch['width']}, {arch['num_classes']} classes, views "
        f"{spec['clip_len']}x{spec['test_crop']}x{spec['test_crop']}",
        "training_top1": (trained.get("student") or {}).get("top1"),
        "videos": int(len(answers["labels"])),
        "skipped_videos": answers["skipped"],
        "adaptive_rule": record,
        "rows": [engine_row(k, b, answers, manifest, rule) for k, b in loaded.items()],
        "not_run": missing,
        "gate": gate_record(manifest),
    }


# ----------------------------------------------------------------------------- report
def pooled(runs: list[dict]) -> list[dict]:
    """Per engine over every run where it ran: videos, Top-1 change from the reference (points,
    video-weighted) and agreement with it."""
    rows: dict[str, dict[str, Any]] = {}
    for r in runs:
        ref = next(x for x in r["rows"] if x["engine"] == REFERENCE)
        for x in r["rows"]:
            p = rows.setdefault(
                x["engine"], {"engine": x["engine"], "videos": 0, "correct_diff": 0.0, "agree": 0.0, "runs": 0}
            )
            p["videos"] += r["videos"]
            p["runs"] += 1
            p["correct_diff"] += (x["top1"] - ref["top1"]) * r["videos"] / 100
            p["agree"] += x["top1_agreement_with_reference"] * r["videos"]
    return [
        {
            "engine": p["engine"],
            "runs": p["runs"],
            "videos": p["videos"],
            "top1_change_points": 100 * p["correct_diff"] / p["videos"],
            "top1_agreement_with_reference": p["agree"] / p["videos"],
            "within_bound": abs(100 * p["correct_diff"] / p["videos"]) <= TOP1_BOUND,
        }
        for p in rows.values()
    ]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"# Engines benchmark: {results['machine_slug']}, {results['created_utc'][:10]}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, no GPU used; "
        f"{', '.join(f'{k} {v}' for k, v in results['libraries'].items() if v)}",
        f"- Command: `{results['command']}`",
        "- Every validation video of each run answered as the server answers a default request (10 clips x "
        "3 crops, softmax averaged) by each engine the export offers here; time: one video's views in one "
        f"call, engines interleaved video by video, {results['threads'] or 'all'} threads; speedup: ONNX Runtime "
        "fp32's time over the engine's, per video, median.",
        "",
    ]
    for r in results["runs"]:
        lines += [
            f"## `{r['run']}`: {r['model']}, {r['videos']} validation videos (training's 30-view Top-1: "
            f"{_num(r['training_top1'])})",
            "",
            "| engine | backend | Top-1 | change from ONNX Runtime fp32 | agreement with it | max logit diff | "
            "ms per video | speedup | adaptive: Top-1 | mean views | agreement with all views |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        ref = next(x for x in r["rows"] if x["engine"] == REFERENCE)
        for x in r["rows"]:
            a = x.get("adaptive") or {}
            lines.append(
                f"| {x['engine']} | {x['backend']} | {x['top1']:.1f} | {x['top1'] - ref['top1']:+.1f} | "
                f"{x['top1_agreement_with_reference']:.3f} | {x['max_abs_logit_diff']:.2g} | "
                f"{x['ms_per_video']:.1f} | {x['speedup']:.2f}x | {_num(a.get('top1'))} | "
                f"{_num(a.get('mean_views'))} | {_num(a.get('top1_agreement_with_all_views'), 3)} |"
            )
        for kind, why in r["not_run"].items():
            lines.append(f"| {kind} | not served: {why} | | | | | | | | | |")
        lines.append("")
    lines += [
        "## All runs pooled",
        "",
        f"Top-1 change from ONNX Runtime fp32 in points over all videos of the runs the engine ran on (bound "
        f"±{TOP1_BOUND}); one video of a run with N videos is 100/N points of that run.",
        "",
        "| engine | runs | videos | Top-1 change (points) | agreement with ONNX Runtime fp32 | within ±0.5 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in results["pooled"]:
        lines.append(
            f"| {p['engine']} | {p['runs']} | {p['videos']} | {p['top1_change_points']:+.2f} | "
            f"{p['top1_agreement_with_reference']:.3f} | {'yes' if p['within_bound'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def _num(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="run folders (exported here first when they have no export); default: the runs of "
        f"DEFAULT_RUNS under --root ({', '.join(DEFAULT_RUNS)}), trained first where not finished",
    )
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="where the default runs live")
    p.add_argument("--threads", type=int, default=0, help="threads per engine (0: each engine's default, all cores)")
    p.add_argument("--limit", type=int, default=None, help="at most this many validation videos per run")
    p.add_argument("--out", default="benchmarks/results", help="where the results files go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.machine import describe_machine, library_versions

    machine = describe_machine()
    started = time.time()
    try:
        folders = [Path(r) for r in args.runs] if args.runs else trained_default_runs(Path(args.root))
        runs = [measure_run(run, threads=args.threads, limit=args.limit) for run in folders]
        cfg = config_from_dict(yaml.safe_load((folders[0] / "config.yaml").read_text()))
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device, slug, created, json_path, md_path = results_files("engines-", machine, cfg, args.out)
    results = {
        "benchmark": "engines",
        "created_utc": created.isoformat(timespec="seconds"),
        "machine": machine,
        "machine_slug": slug,
        "device": "cpu",
        "libraries": library_versions(),
        "threads": args.threads,
        "command": "python -m benchmarks.engines " + " ".join(sys.argv[1:] if argv is None else argv),
        "reference": f"{REFERENCE} fp32",
        "top1_bound_points": TOP1_BOUND,
        "runs": runs,
        "pooled": pooled(runs),
        "wall_time_s": round(time.time() - started, 1),
        "json": _shown(json_path),
        "markdown": _shown(md_path),
    }
    text = markdown(results)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(text)
    print("\n" + text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
