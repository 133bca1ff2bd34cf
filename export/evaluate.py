"""The 30-view accuracy of the exported ONNX model on a run's whole validation set.

The exported file is judged on its own: input spec and classes come from its manifest, the
views from `training.views` (as the server makes them), the scores from ONNX Runtime's CPU
provider; only the list of validation videos comes from the run's config. The result goes to
`RUN/eval_onnx.json`, beside the training's `metrics.json` it should reproduce.

With `views="adaptive"` each video is answered as the server answers a request for adaptive
views (`training.adaptive_views.adaptive_answer` with the manifest's stopping rule) and the
report adds the mean views used and the Top-1 agreement with all views; it goes to
`RUN/eval_onnx_adaptive.json`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from export.build import ExportError
from export.parity import decoded_views, onnx_session
from serving.manifest import FILE_NAME, input_spec_from_manifest, sha256_of
from training.adaptive_views import StoppingRule, adaptive_answer
from training.config import ConfigError, config_from_dict
from training.data import resolve_splits
from training.evaluate import accuracy_metrics
from training.views import average_view_scores


def read_manifest(export_dir: Path) -> dict:
    path = export_dir / FILE_NAME
    if not path.is_file():
        raise ExportError(f"no export at {export_dir}: {path.name} is missing (run `python -m export --run RUN` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from exc


def evaluate_onnx(run: Path, *, clips: int | None = None, crops: int | None = None, threads: int = 0,
                  views: str = "all") -> dict:
    """Accuracy of RUN/export/model.onnx on the run's validation set with all views, or with
    `views="adaptive"`; writes RUN/eval_onnx.json (RUN/eval_onnx_adaptive.json)."""
    if views not in ("all", "adaptive"):
        raise ExportError(f"views must be all or adaptive, got {views!r}")
    run = Path(run)
    if not run.is_dir():
        raise ExportError(f"run folder not found: {run}")
    export_dir = run / "export"
    manifest = read_manifest(export_dir)
    onnx_path = export_dir / manifest["onnx"]["file"]
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path} is missing")
    if sha256_of(onnx_path) != manifest["sha256"][onnx_path.name]:
        raise ExportError(f"{onnx_path}: sha256 differs from the manifest's (the file changed after export)")
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise ExportError(f"{config_path} is missing: it tells where the validation videos are")
    try:
        cfg = config_from_dict(yaml.safe_load(config_path.read_text()))
        splits = resolve_splits(cfg.data, run, is_main=False)
    except ConfigError as exc:
        raise ExportError(f"the run's validation data cannot be read: {exc}") from exc
    if not splits.val:
        raise ExportError(f"run {run} has no validation videos")

    rule = None
    if views == "adaptive":
        record = manifest.get("adaptive_views") or {}
        if record.get("rule") is None:
            raise ExportError(f"{export_dir} has no calibrated stopping rule for adaptive views "
                              f"({record.get('reason', 'an export made before adaptive views')}); re-export the run")
        rule = StoppingRule.from_dict(record["rule"])

    spec = input_spec_from_manifest(manifest["input"])
    spec.test_clips = clips or spec.test_clips
    spec.test_crops = crops or spec.test_crops
    classes = manifest["classes"]
    session = onnx_session(onnx_path, threads=threads)
    input_name = manifest["onnx"]["input"]
    scores, labels, used, agree = [], [], [], 0
    for item, x in decoded_views(splits.val, splits.root, spec):
        logits = session.run(None, {input_name: x})[0]
        full = average_view_scores(torch.from_numpy(logits)).numpy()
        if rule is None:
            scores.append(full)
        else:  # every view is scored here; the answer uses those the server would have run
            answer = adaptive_answer(logits, rule, clips=spec.test_clips, crops=spec.test_crops)
            scores.append(answer.scores)
            used.append(answer.views_used)
            agree += int(np.argmax(answer.scores) == np.argmax(full))
        labels.append(item.label)
    if not scores:
        raise ExportError(f"none of the {len(splits.val)} validation videos could be decoded")
    report = accuracy_metrics(np.stack(scores), np.array(labels), len(classes))
    if rule is not None:
        report["adaptive"] = {"rule": rule.to_dict(), "mean_views": float(np.mean(used)),
                              "top1_agreement_with_all_views": agree / len(scores)}
    report.update({"skipped_videos": len(splits.val) - len(scores),
                   "views": f"{spec.test_clips} clips x {spec.test_crops} crops" + (", adaptive" if rule else ""),
                   "backend": "onnxruntime CPUExecutionProvider", "model": str(onnx_path.resolve()),
                   "model_version": manifest["model_version"]})
    (run / ("eval_onnx.json" if rule is None else "eval_onnx_adaptive.json")).write_text(json.dumps(report, indent=2))
    return report
