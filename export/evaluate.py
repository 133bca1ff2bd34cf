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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml

from export.build import ExportError
from export.parity import decoded_views, onnx_session
from serving.manifest import FILE_NAME, input_spec_from_manifest, sha256_of
from training.adaptive_views import StoppingRule, adaptive_answer
from training.config import ConfigError, config_from_dict
from training.data import DataSplits, resolve_splits
from training.evaluate import accuracy_metrics
from training.views import InputSpec, average_view_scores


def read_manifest(export_dir: Path) -> dict:
    path = export_dir / FILE_NAME
    if not path.is_file():
        raise ExportError(f"no export at {export_dir}: {path.name} is missing (run `python -m export --run RUN` first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from exc


@dataclass
class Answers:
    """Each decoded validation video's answer (its averaged view scores) and label; with adaptive
    views also how many views each answer used and how many answers agree with all views'."""

    scores: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    views_used: list[int] = field(default_factory=list)
    agreements: int = 0


def evaluate_onnx(
    run: Path, *, clips: int | None = None, crops: int | None = None, threads: int = 0, views: str = "all"
) -> dict:
    """Accuracy of RUN/export/model.onnx on the run's validation set with all views, or with
    `views="adaptive"`; writes RUN/eval_onnx.json (RUN/eval_onnx_adaptive.json)."""
    if views not in ("all", "adaptive"):
        raise ExportError(f"views must be all or adaptive, got {views!r}")
    run = Path(run)
    if not run.is_dir():
        raise ExportError(f"run folder not found: {run}")
    export_dir = run / "export"
    manifest = read_manifest(export_dir)
    onnx_path = verified_onnx(export_dir, manifest)
    splits = validation_videos(run)
    rule = stopping_rule(export_dir, manifest) if views == "adaptive" else None

    spec = input_spec_from_manifest(manifest["input"])
    spec.test_clips = clips or spec.test_clips
    spec.test_crops = crops or spec.test_crops
    num_classes = len(manifest["classes"])
    session = onnx_session(onnx_path, threads=threads)
    answers = answer_videos(session, manifest["onnx"]["input"], splits, spec, rule)
    report = accuracy_metrics(np.stack(answers.scores), np.array(answers.labels), num_classes)
    if rule is not None:
        report["adaptive"] = {
            "rule": rule.to_dict(),
            "mean_views": float(np.mean(answers.views_used)),
            "top1_agreement_with_all_views": answers.agreements / len(answers.scores),
        }
    report.update(
        {
            "skipped_videos": len(splits.val) - len(answers.scores),
            "views": f"{spec.test_clips} clips x {spec.test_crops} crops" + (", adaptive" if rule else ""),
            "backend": "onnxruntime CPUExecutionProvider",
            "model": str(onnx_path.resolve()),
            "model_version": manifest["model_version"],
        }
    )
    (run / ("eval_onnx.json" if rule is None else "eval_onnx_adaptive.json")).write_text(json.dumps(report, indent=2))
    return report


def verified_onnx(export_dir: Path, manifest: dict) -> Path:
    """The manifest's ONNX file, refused when it is missing or is not the file that was exported."""
    onnx_path = export_dir / manifest["onnx"]["file"]
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path} is missing")
    if sha256_of(onnx_path) != manifest["sha256"][onnx_path.name]:
        raise ExportError(f"{onnx_path}: sha256 differs from the manifest's (the file changed after export)")
    return onnx_path


def validation_videos(run: Path) -> DataSplits:
    """The run's splits, from its config.yaml; an ExportError when there are no validation videos."""
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
    return splits


def stopping_rule(export_dir: Path, manifest: dict) -> StoppingRule:
    """The adaptive views' rule the export calibrated; an ExportError for an export without one."""
    record = manifest.get("adaptive_views") or {}
    if record.get("rule") is None:
        raise ExportError(
            f"{export_dir} has no calibrated stopping rule for adaptive views "
            f"({record.get('reason', 'an export made before adaptive views')}); re-export the run"
        )
    return StoppingRule.from_dict(record["rule"])


def answer_videos(
    session: ort.InferenceSession, input_name: str, splits: DataSplits, spec: InputSpec, rule: StoppingRule | None
) -> Answers:
    """Every decodable validation video answered with all its views, or as the server answers a
    request for adaptive views when there is a `rule`."""
    answers = Answers()
    for item, x in decoded_views(splits.val, splits.root, spec):
        logits = session.run(None, {input_name: x})[0]
        full = average_view_scores(torch.from_numpy(logits)).numpy()
        if rule is None:
            answers.scores.append(full)
        else:  # every view is scored here; the answer uses those the server would have run
            answer = adaptive_answer(logits, rule, clips=spec.test_clips, crops=spec.test_crops)
            answers.scores.append(answer.scores)
            answers.views_used.append(answer.views_used)
            answers.agreements += int(np.argmax(answer.scores) == np.argmax(full))
        answers.labels.append(item.label)
    if not answers.scores:
        raise ExportError(f"none of the {len(splits.val)} validation videos could be decoded")
    return answers
