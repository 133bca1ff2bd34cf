"""Run folder -> `RUN/export/`: the RGB student alone as ONNX, ExportedProgram, an OpenVINO IR
and (where TensorRT exists) an engine, checked for parity on real validation clips, described by
`manifest.json` and packed into a TorchServe archive.

Reads top to bottom: load the run -> take the student -> export -> show zero added cost ->
TensorRT -> OpenVINO -> parity (and each OpenVINO precision's gate) -> adaptive views' stopping
rule (calibrated on training videos, evaluated on validation) -> manifest -> archive -> publish.
`export_run` refuses bad options and loads the run; `write_export` is that sequence, one named
step per line.
Everything is written into a temporary folder beside `RUN/export` and renamed into place only
when every check passed, so a failed export leaves nothing behind and keeps an older complete
export.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from torch.export import Dim

from export import adaptive, openvino_ir, trt_engine
from export.archive import build_archive, serving_handler
from export.flops import onnx_flops, torch_flops
from export.parity import (
    CUDA_FP32_BOUND,
    ONNXRUNTIME_BOUND,
    OPENVINO_BOUNDS,
    Backend,
    Bound,
    Comparison,
    ParityError,
    check_parity,
    chunked,
    decoded_views,
    onnx_backend,
    onnx_session,
    tensorrt_bound,
    torch_backend,
)
from serving.backends import OnnxRuntimeBackend, TorchExportBackend, onnxruntime_cuda_unavailable  # what serves
from serving.devices import cuda_device_name, cuda_unavailable
from serving.manifest import FILE_NAME, MODEL_NAME_PATTERN, Manifest, artifact_digests, input_record, write_manifest
from training.config import Config, ConfigError, config_from_dict
from training.data import DataSplits, resolve_splits
from training.models import R3D18, count_parameters, r3d18_from_architecture
from training.views import InputSpec

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "clips", "logits"
CHECKPOINT_KEYS = ("config", "classes", "epoch", "model")


class ExportError(Exception):
    """Bad input or a failed check; the message names the problem (the CLI prints it)."""


@dataclass
class LoadedRun:
    run: Path
    cfg: Config
    classes: list[str]
    epoch: int
    student: R3D18  # eval mode, on the CPU
    architecture: dict
    metrics: dict


# ----------------------------------------------------------------------------- the run
def _first_lines(exc: BaseException, n: int = 2) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:n])[:400] or type(exc).__name__


def architecture_of(cfg: Config, num_classes: int) -> dict:
    """The student's constructor arguments, as the manifest records them."""
    return {
        "name": "r3d18",
        "num_classes": num_classes,
        "width": cfg.model.width,
        "temporal_pool": cfg.model.temporal_pool,
        "dropout": cfg.model.dropout,
        "bn_eps": cfg.model.bn_eps,
        "in_channels": 3,
    }


def build_r3d18(architecture: dict) -> R3D18:
    """A plain R3D-18 from a manifest's architecture record."""
    return r3d18_from_architecture(architecture)


def load_run(run: Path) -> LoadedRun:
    """The run's last checkpoint with the student rebuilt and loaded; the teacher and both
    projection heads are never built."""
    if not run.is_dir():
        raise ExportError(f"run folder not found: {run}")
    ckpt_path = run / "last.pt"
    if not ckpt_path.is_file():
        raise ExportError(f"no checkpoint in the run folder: {ckpt_path} is missing (train the run first)")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle garbage, foreign objects: all mean "not our checkpoint"
        raise ExportError(f"{ckpt_path}: not a readable checkpoint ({_first_lines(exc, 1)})") from exc
    ours = isinstance(ckpt, dict) and all(k in ckpt for k in CHECKPOINT_KEYS) and isinstance(ckpt["model"], dict)
    if not ours:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ExportError(
            f"{ckpt_path}: not a checkpoint of this project's training "
            f"(expected keys {', '.join(CHECKPOINT_KEYS)}; found {found})"
        )
    try:
        cfg = config_from_dict(ckpt["config"])
    except (ConfigError, TypeError, AttributeError) as exc:
        raise ExportError(f"{ckpt_path}: the saved config is not valid here ({exc})") from exc
    state = ckpt["model"].get("student")
    if state is None:
        raise ExportError(
            f"{ckpt_path}: the checkpoint has no RGB student to export "
            f"(loss.streams={cfg.loss.streams}); export needs a run that trains the RGB network"
        )
    classes = list(ckpt["classes"])
    architecture = architecture_of(cfg, len(classes))
    student = build_r3d18(architecture)
    try:
        student.load_state_dict(state)
    except RuntimeError as exc:
        raise ExportError(
            f"{ckpt_path}: the student weights are not an R3D-18 of the run's config "
            f"(width {cfg.model.width}, {len(classes)} classes): {_first_lines(exc)}"
        ) from exc
    student.eval()

    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise ExportError(
            f"{metrics_path} is missing: the run stopped at epoch {ckpt['epoch']} of "
            f"{cfg.optim.epochs}; finish it (re-run the same train command) before exporting"
        )
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{metrics_path}: not valid JSON ({exc})") from exc
    return LoadedRun(run, cfg, classes, int(ckpt["epoch"]), student, architecture, metrics)


def validation_split(loaded: LoadedRun) -> DataSplits:
    """The run's validation videos (its config says where the data and lists are)."""
    try:
        splits = resolve_splits(loaded.cfg.data, loaded.run, is_main=False)  # is_main=False: write nothing
    except ConfigError as exc:
        raise ExportError(f"the run's validation data cannot be read: {exc}") from exc
    if not splits.val:
        raise ExportError(
            f"run {loaded.run} has no validation videos (data.val_list / ROOT/val is empty or unset): "
            "the export checks parity on real validation clips"
        )
    if splits.classes != loaded.classes:
        raise ExportError(
            f"the dataset's classes {splits.classes[:5]}... differ from the checkpoint's "
            f"{loaded.classes[:5]}...: data.root points at another dataset"
        )
    return splits


# ----------------------------------------------------------------------------- artifacts
@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs a warning per missing torchvision op, its graph optimizer logs
    every pass, and dependencies emit deprecation warnings; none concern this model."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_student(student: nn.Module, clip_shape: tuple[int, ...], out_dir: Path) -> torch.export.ExportedProgram:
    """student.pt2 (ExportedProgram) and model.onnx, both from one torch.export graph with a
    dynamic number of views; returns the program."""
    example = torch.zeros((2, *clip_shape))
    views = Dim("views", min=1)
    with _quiet_exporter():
        program = torch.export.export(student, (example,), dynamic_shapes={"x": {0: views}})
        torch.export.save(program, out_dir / "student.pt2")
        # external_data=False: one self-contained file (torch 2.13 otherwise writes model.onnx.data)
        torch.onnx.export(
            program,
            (example,),
            out_dir / "model.onnx",
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"x": {0: views}},
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    return program


def check_onnx_graph(path: Path, clip_shape: tuple[int, ...], num_classes: int) -> onnx.ModelProto:
    """The file is valid ONNX with exactly one input `clips` (views, *clip_shape) and one output
    `logits` (views, num_classes), and nothing beside it (no external data)."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise ExportError(f"{path.name} refers to external weight data; expected one self-contained file")
    dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
    ins, outs = list(model.graph.input), list(model.graph.output)
    if len(ins) != 1 or len(outs) != 1:
        raise ExportError(f"{path.name}: expected one input and one output, got {len(ins)} and {len(outs)}")
    if ins[0].name != INPUT_NAME or not isinstance(dims(ins[0])[0], str) or dims(ins[0])[1:] != list(clip_shape):
        raise ExportError(f"{path.name}: unexpected input {ins[0].name} {dims(ins[0])}")
    if outs[0].name != OUTPUT_NAME or dims(outs[0])[1:] != [num_classes]:
        raise ExportError(f"{path.name}: unexpected output {outs[0].name} {dims(outs[0])}")
    return model


def zero_added_cost(
    student: R3D18, architecture: dict, onnx_model: onnx.ModelProto, clip_shape: tuple[int, ...]
) -> dict:
    """Parameters and FLOPs of the exported student against a freshly built plain R3D-18 of the
    same architecture: the method must add nothing at inference."""
    plain = build_r3d18(architecture)
    view = (1, *clip_shape)
    cost = {
        "params": count_parameters(student),
        "plain_r3d18_params": count_parameters(plain),
        "flops_per_view": torch_flops(student, view),
        "plain_r3d18_flops_per_view": torch_flops(plain, view),
        "onnx_flops_per_view": onnx_flops(onnx_model, views=1),
    }
    if not (
        cost["params"] == cost["plain_r3d18_params"]
        and cost["flops_per_view"] == cost["plain_r3d18_flops_per_view"] == cost["onnx_flops_per_view"]
    ):
        raise ExportError(f"the exported student does not cost what a plain R3D-18 costs: {cost}")
    return cost


def _publish(tmp: Path, final: Path) -> None:
    """Swap the finished folder into place; an older export is removed only after the swap."""
    old = None
    if final.exists():
        old = final.with_name(f".export-old-{uuid.uuid4().hex[:8]}")
        final.rename(old)
    try:
        tmp.rename(final)
    except OSError:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the export
@dataclass(frozen=True)
class ExportOptions:
    """export_run's keyword arguments (described there), handed to the steps together."""

    tensorrt: str
    openvino: str
    model_name: str
    precision: str
    parity_videos: int
    max_views: int
    archive: bool
    openvino_bounds: dict[str, Bound]
    adaptive_videos: int
    adaptive_target: float


def export_run(
    run: Path,
    *,
    tensorrt: str = "auto",
    openvino: str = "auto",
    model_name: str = "action",
    precision: str = "fp16",
    parity_videos: int = 16,
    max_views: int = 30,
    archive: bool = True,
    openvino_bounds: dict[str, Bound] = OPENVINO_BOUNDS,
    adaptive_videos: int = adaptive.DEFAULT_VIDEOS,
    adaptive_target: float = adaptive.DEFAULT_TARGET,
) -> Path:
    """Export a finished run's student into `run/export` and return that folder.

    tensorrt: "auto" builds an engine where TensorRT and a GPU exist (an engine that fails to
    build is logged with the reason and left out), "on" requires one, "off" skips it; precision:
    the engine's, fp16, tf32 or fp32 (TF32 off).
    openvino: "auto" writes an IR where openvino imports, "on" requires one that passes
    a precision's gate, "off" skips it; openvino_bounds: the parity bound of each precision (a
    precision that breaks its bound is recorded as refused and never served). parity_videos:
    validation videos (all their views) for the parity check. archive: build model.mar (needs
    serving/handler.py). adaptive_videos: labeled training videos the adaptive views' stopping rule
    is calibrated on (for a Top-1 agreement with all views of at least adaptive_target) and
    validation videos it is evaluated on, at most this many each (0: no rule). Raises ExportError
    on bad input or a failed check, leaving no partial folder behind."""
    run = Path(run)
    options = ExportOptions(
        tensorrt=tensorrt,
        openvino=openvino,
        model_name=model_name,
        precision=precision,
        parity_videos=parity_videos,
        max_views=max_views,
        archive=archive,
        openvino_bounds=openvino_bounds,
        adaptive_videos=adaptive_videos,
        adaptive_target=adaptive_target,
    )
    # everything that can be refused is refused before the minutes of work below
    check_options(options)
    check_exporter()
    handler = archive_handler(archive)
    trt_reason = optional_backend_reason("tensorrt", tensorrt, trt_engine.unavailable_reason)
    ov_reason = optional_backend_reason("openvino", openvino, openvino_ir.unavailable_reason)
    loaded = load_run(run)
    splits = validation_split(loaded)

    tmp = run / f".export-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on the published folder
    try:
        write_export(tmp, loaded, splits, options, handler=handler, trt_reason=trt_reason, ov_reason=ov_reason)
        final = run / "export"
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("export written to %s", final)
    return final


def check_options(options: ExportOptions) -> None:
    """An ExportError for the first option value export_run cannot take."""
    if options.tensorrt not in ("auto", "on", "off"):
        raise ExportError(f"tensorrt must be auto, on or off, got {options.tensorrt!r}")
    if options.openvino not in ("auto", "on", "off"):
        raise ExportError(f"openvino must be auto, on or off, got {options.openvino!r}")
    if options.precision not in trt_engine.PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(trt_engine.PRECISIONS)}, got {options.precision!r}")
    if not MODEL_NAME_PATTERN.match(options.model_name):
        raise ExportError(f"model name {options.model_name!r}: use letters, digits, '_', '-' and '.'")
    if options.parity_videos < 1 or options.max_views < 1:
        raise ExportError("parity_videos and max_views must be at least 1")
    if options.adaptive_videos < 0 or not 0.0 < options.adaptive_target <= 1.0:
        raise ExportError(
            f"adaptive_videos must be at least 0 and adaptive_target in (0, 1], got "
            f"{options.adaptive_videos} and {options.adaptive_target}"
        )


def check_exporter() -> None:
    if importlib.util.find_spec("onnxscript") is None:
        raise ExportError(
            "the ONNX exporter needs the onnxscript package (torch's dynamo exporter is built on it): "
            "pip install onnxscript"
        )


def archive_handler(archive: bool) -> Path | None:
    """The serving handler model.mar packs (None where the serving package is not installed)."""
    handler = serving_handler()
    if archive and handler is None:
        raise ExportError(
            "serving/handler.py not found: model.mar packs the serving handler; install the serving "
            "package, or export without the archive (--no-archive)"
        )
    return handler


def optional_backend_reason(flag: str, mode: str, unavailable: Callable[[], str | None]) -> str | None:
    """Why the optional artifact of `--flag` (tensorrt, openvino) is skipped, or None to build it;
    `unavailable` says what this machine lacks. Mode "on" turns a reason into an ExportError."""
    reason = f"disabled (--{flag} off)" if mode == "off" else unavailable()
    if mode == "on" and reason:
        raise ExportError(f"--{flag} on: {reason}")
    return reason


def write_export(
    out: Path,
    loaded: LoadedRun,
    splits: DataSplits,
    options: ExportOptions,
    *,
    handler: Path | None,
    trt_reason: str | None,
    ov_reason: str | None,
) -> None:
    """Every artifact of the export into `out`, in order: the student's graphs, the optional
    engines, the parity gates, the adaptive views' rule, the manifest and the archive."""
    spec = loaded.cfg.input
    onnx_record, cost = write_student_graph(out, loaded)
    trt_record, runner = optional_engine(
        out, trt_reason, precision=options.precision, max_views=options.max_views, required=options.tensorrt == "on"
    )
    ov_record, ov_runners = optional_openvino(out, ov_reason, splits, spec, max_views=options.max_views)
    parity, ov_record = parity_gates(
        out,
        loaded,
        splits,
        options,
        runner=runner,
        trt_record=trt_record,
        ov_record=ov_record,
        ov_runners=ov_runners,
        ov_reason=ov_reason,
    )
    adaptive_record = adaptive_views_rule(
        out, splits, spec, ov_record, ov_runners, videos=options.adaptive_videos, target=options.adaptive_target
    )

    artifacts = ["model.onnx", "student.pt2"] + (["model.plan"] if trt_record.get("file") else []) + ov_record["files"]
    model_version = f"{loaded.run.resolve().name}-epoch{loaded.epoch}"
    manifest = Manifest(
        model_name=options.model_name,
        model_version=model_version,
        classes=loaded.classes,
        input=input_record(spec.to_dict()),
        architecture=loaded.architecture,
        params=cost["params"],
        flops_per_view=cost["flops_per_view"],
        zero_added_cost=cost,
        onnx=onnx_record,
        torch={"file": "student.pt2", "torch_version": torch.__version__},
        tensorrt=trt_record,
        openvino=ov_record,
        sha256=artifact_digests(out, artifacts),
        training=training_record(loaded),
        parity=parity,
        adaptive_views=adaptive_record,
    )
    write_manifest(out, manifest)
    if options.archive:
        assert handler is not None  # archive_handler refuses an archive without one
        pack_archive(out, handler, model_name=options.model_name, version=model_version, files=artifacts + [FILE_NAME])


def training_record(loaded: LoadedRun) -> dict:
    """The manifest's record of the run the student comes from: folder, epoch, metrics, config."""
    return {
        "run": str(loaded.run.resolve()),
        "epoch": loaded.epoch,
        "metrics": loaded.metrics,
        "config": loaded.cfg.to_dict(),
    }


def parity_gates(
    out: Path,
    loaded: LoadedRun,
    splits: DataSplits,
    options: ExportOptions,
    *,
    runner: Backend | None,
    trt_record: dict,
    ov_record: dict,
    ov_runners: dict[str, Backend],
    ov_reason: str | None,
) -> tuple[dict, dict]:
    """The parity report of every backend against PyTorch (raises where a bound breaks), and the
    OpenVINO record after each precision's gate."""
    bounded = {p: (r, options.openvino_bounds.get(p, OPENVINO_BOUNDS[p])) for p, r in ov_runners.items()}
    parity = parity_check(
        loaded,
        splits,
        out,
        runner,
        trt_precision=trt_record.get("precision"),
        max_views=options.max_views,
        openvino_runners=bounded,
        limit=options.parity_videos,
    )
    if ov_reason is None:
        ov_record = gate_openvino(out, ov_record, parity["openvino"], required=options.openvino == "on")
    return parity, ov_record


def write_student_graph(out: Path, loaded: LoadedRun) -> tuple[dict, dict]:
    """student.pt2 and model.onnx, the graph checked and its cost shown equal to a plain
    R3D-18's; returns the manifest's "onnx" record and the cost (its "zero_added_cost")."""
    spec = loaded.cfg.input
    clip_shape = (3, spec.clip_len, spec.test_crop, spec.test_crop)  # one test view
    t0 = time.time()
    export_student(loaded.student, clip_shape, out)
    onnx_model = check_onnx_graph(out / "model.onnx", clip_shape, len(loaded.classes))
    cost = zero_added_cost(loaded.student, loaded.architecture, onnx_model, clip_shape)
    opset = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
    log.info(
        "exported the student (%d parameters, %.3g GFLOPs per view, opset %d) in %.1f s",
        cost["params"],
        cost["flops_per_view"] / 1e9,
        opset,
        time.time() - t0,
    )
    record = {
        "file": "model.onnx",
        "opset": opset,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "producer": f"{onnx_model.producer_name} {onnx_model.producer_version}".strip(),
    }
    return record, cost


def optional_engine(
    out: Path, reason: str | None, *, precision: str, max_views: int, required: bool
) -> tuple[dict, Backend | None]:
    """The TensorRT engine where `reason` (optional_backend_reason) is None: the manifest's
    "tensorrt" record and a runner for the parity check."""
    if reason is not None:
        log.info("TensorRT engine skipped: %s", reason)
        return {"file": None, "reason": reason}, None
    return tensorrt_engine(out, precision=precision, max_views=max_views, required=required)


def tensorrt_engine(out: Path, *, precision: str, max_views: int, required: bool) -> tuple[dict, Backend | None]:
    """(the manifest's "tensorrt" record, a runner for the parity check) for an engine built in
    `out`. A failed build is an ExportError when TensorRT was asked for (`required`), otherwise a
    logged reason and no engine: the rest of the export does not depend on it."""
    t0 = time.time()
    try:
        record = trt_engine.build_engine(
            out / "model.onnx",
            out / "model.plan",
            precision=precision,
            opt_views=min(30, max_views),
            max_views=max_views,
        )
        runner = trt_engine.engine_runner(out / "model.plan", max_views=max_views, precision=record["precision"])
    except Exception as exc:  # EngineBuildError, or the runtime failing to load what was built
        reason = f"the {precision} engine could not be built here: {_first_lines(exc, 1)}"
        if required:
            raise ExportError(f"--tensorrt on: {reason}") from exc
        log.warning("TensorRT engine left out: %s", reason)
        (out / "model.plan").unlink(missing_ok=True)
        return {"file": None, "reason": reason}, None
    log.info("TensorRT %s engine (%s typing) built in %.1f s", record["precision"], record["typing"], time.time() - t0)
    return record, runner


def optional_openvino(
    out: Path, reason: str | None, splits: DataSplits, spec: InputSpec, *, max_views: int
) -> tuple[dict, dict[str, Backend]]:
    """The OpenVINO IR where `reason` (optional_backend_reason) is None, with its int8 IR: the
    manifest's "openvino" record (not yet gated) and a runner per precision measured here."""
    if reason is not None:
        log.info("OpenVINO IR skipped: %s", reason)
        return openvino_ir.skipped(reason), {}
    t0 = time.time()
    record = openvino_ir.write_ir(out / "model.onnx", out)
    # int8 calibrated on the run's own training videos (labeled and unlabeled, each once)
    training = list({item.path: item for item in splits.labeled + splits.unlabeled}.values())
    calibration = openvino_ir.training_views(training, splits.root, spec)
    record = openvino_ir.quantize_int8(out, record, calibration)
    runners = openvino_ir.precision_runners(out, record, max_views=max_views)
    log.info("OpenVINO IR written in %.1f s; precisions measured: %s", time.time() - t0, ", ".join(runners) or "none")
    return record, runners


def gate_openvino(out: Path, record: dict, reports: dict[str, dict], *, required: bool) -> dict:
    """The "openvino" record after each precision's parity gate (`openvino_ir.gate`); with
    `required` (--openvino on), no precision passing is an ExportError."""
    record = openvino_ir.gate(record, reports, out)
    log.info(
        "OpenVINO precisions offered to the server: %s", ", ".join(record["offered"]) or f"none, {record['reason']}"
    )
    if required and not record["offered"]:
        raise ExportError(f"--openvino on: {record['reason']}")
    return record


def adaptive_views_rule(
    out: Path,
    splits: DataSplits,
    spec: InputSpec,
    ov_record: dict,
    ov_runners: dict[str, Backend],
    *,
    videos: int,
    target: float,
) -> dict:
    """The manifest's "adaptive_views": the stopping rule calibrated on training videos and
    evaluated on validation videos (`export.adaptive`)."""
    t0 = time.time()
    # fp32 scores: OpenVINO's where it passed (the same logits to ~1e-7, 1.7x ONNX Runtime's speed at full size)
    if "fp32" in ov_record["offered"]:
        scorer, scored_with = ov_runners["fp32"], "openvino-cpu-fp32"
    else:
        scorer, scored_with = onnx_backend(onnx_session(out / "model.onnx")), "onnxruntime-cpu"
    record = adaptive.adaptive_views(
        splits.labeled, splits.val, splits.root, spec, scorer, scored_with=scored_with, videos=videos, target=target
    )
    log.info("adaptive views (%.1f s): %s", time.time() - t0, adaptive.describe(record))
    return record


def pack_archive(out: Path, handler: Path, *, model_name: str, version: str, files: list[str]) -> None:
    """model.mar (`export.archive`); the archiver's failure becomes an ExportError."""
    t0 = time.time()
    try:
        build_archive(out, handler=handler, model_name=model_name, version=version, files=files)
    except RuntimeError as exc:
        raise ExportError(str(exc)) from exc
    log.info("model.mar written in %.1f s", time.time() - t0)


def cuda_backends(export_dir: Path, max_views: int) -> tuple[dict[str, Backend], dict]:
    """The CUDA backends the server may run this export with here ({parity key: runner}), each
    through the server's own backend class, and the machine they were checked on."""
    found: dict[str, Backend] = {}
    reason = onnxruntime_cuda_unavailable(ort.get_available_providers(), cuda_unavailable())
    if reason is None:
        ort_cuda = OnnxRuntimeBackend(
            export_dir / "model.onnx", input_name=INPUT_NAME, output_name=OUTPUT_NAME, max_views=max_views
        )
        if ort_cuda.name == "onnxruntime-cuda":
            found["onnxruntime-cuda"] = chunked(ort_cuda, max_views)
        reason = ort_cuda.cuda_reason
    if reason:
        log.info("ONNX Runtime CUDA not checked: %s", reason)
    if torch.cuda.is_available():
        found["exported_program-cuda"] = chunked(
            TorchExportBackend(export_dir / "student.pt2", max_views=max_views), max_views
        )
    else:
        log.info("ExportedProgram on CUDA not checked: torch has no CUDA GPU here")
    return found, {"gpu": cuda_device_name(0), "cuda_backends": sorted(found)}


def parity_check(
    loaded: LoadedRun,
    splits: DataSplits,
    export_dir: Path,
    runner,
    *,
    trt_precision: str | None,
    openvino_runners: dict[str, tuple[Backend, Bound]],
    limit: int,
    max_views: int = 30,
) -> dict:
    """PyTorch student vs every backend the manifest offers that runs here: ONNX Runtime (CPU,
    and CUDA where present), TensorRT and each OpenVINO precision on every view of up to `limit`
    decoded validation videos; the saved ExportedProgram (CPU, and CUDA where torch has it) on the
    first video. Raises ExportError when a bound of ONNX Runtime, an ExportedProgram or TensorRT
    breaks; the OpenVINO reports (under "openvino") are judged by `openvino_ir.gate`. The report
    records the machine (`machine`: CPU, GPU, the CUDA backends compared) so that a server can
    tell whether its backend was checked."""
    t0 = time.time()
    reference = torch_backend(loaded.student)
    onnxruntime = onnx_backend(onnx_session(export_dir / "model.onnx"))
    exported = torch_backend(torch.export.load(export_dir / "student.pt2").module())
    on_cuda, machine = cuda_backends(export_dir, max_views)
    ort_cmp, trt_cmp, pt2_cmp = Comparison(), Comparison(), Comparison()
    cuda_cmp = {key: Comparison() for key in on_cuda}
    ov_cmp = {precision: Comparison() for precision in openvino_runners}
    for i, (item, views) in enumerate(decoded_views(splits.val, splits.root, loaded.cfg.input, limit=limit)):
        ref = reference(views).astype("float64")
        ort_cmp.add(ref, onnxruntime(views), item.label)
        if runner is not None:
            trt_cmp.add(ref, runner(views), item.label)
        for precision, (run_openvino, _) in openvino_runners.items():
            ov_cmp[precision].add(ref, run_openvino(views), item.label)
        for key, run_cuda in on_cuda.items():
            if key == "onnxruntime-cuda" or i == 0:  # the ExportedProgram on the first video, as on the CPU
                cuda_cmp[key].add(ref, run_cuda(views), item.label)
        if i == 0:
            pt2_cmp.add(ref, exported(views))
    if ort_cmp.videos == 0:
        raise ExportError(
            f"none of the run's {len(splits.val)} validation videos could be decoded "
            f"(under {splits.root}): no clips for the parity check"
        )
    parity: dict[str, Any] = {
        "machine": machine,
        "onnxruntime": ort_cmp.report(ONNXRUNTIME_BOUND),
        "exported_program": pt2_cmp.report(ONNXRUNTIME_BOUND),
        **{key: cmp.report(CUDA_FP32_BOUND) for key, cmp in cuda_cmp.items()},
        "tensorrt": None if runner is None else trt_cmp.report(tensorrt_bound(cast(str, trt_precision))),
        "openvino": {p: ov_cmp[p].report(bound) for p, (_, bound) in openvino_runners.items()},
    }
    check_parity_bounds(parity, list(cuda_cmp))
    log_parity(parity, list(cuda_cmp), seconds=time.time() - t0)
    return parity


def check_parity_bounds(parity: dict[str, Any], cuda_keys: list[str]) -> None:
    """Raise ExportError where ONNX Runtime, the ExportedProgram, a CUDA backend or TensorRT
    breaks its bound (OpenVINO is judged by its own gate)."""
    try:
        for name in ("onnxruntime", "exported_program", *cuda_keys, "tensorrt"):
            if parity[name] is not None:
                check_parity(name, parity[name])
    except ParityError as exc:
        raise ExportError(f"parity check failed: {exc}") from exc


def log_parity(parity: dict[str, Any], cuda_keys: list[str], *, seconds: float) -> None:
    o = parity["onnxruntime"]
    log.info(
        "parity on %d videos / %d views in %.1f s: ONNX Runtime max |diff| %.2e (bound %.1e), top-1 agreement %.4f%s",
        o["videos"],
        o["views"],
        seconds,
        o["max_abs_diff"],
        o["bound"],
        o["top1_agreement"],
        "" if parity["tensorrt"] is None else f"; TensorRT max |diff| {parity['tensorrt']['max_abs_diff']:.2e}",
    )
    for key in cuda_keys:
        log.info(
            "%s on %s: max |diff| %.2e (bound %.1e)",
            key,
            parity["machine"]["gpu"],
            parity[key]["max_abs_diff"],
            parity[key]["bound"],
        )
    for precision, r in parity["openvino"].items():
        log.info(
            "OpenVINO %s: max |diff| %.2e (bound %.1e), top-1 agreement %.4f, Top-1 accuracy %s points vs PyTorch",
            precision,
            r["max_abs_diff"],
            r["bound"],
            r["top1_agreement"],
            "–" if r["top1_accuracy_diff"] is None else f"{r['top1_accuracy_diff']:+.2f}",
        )
