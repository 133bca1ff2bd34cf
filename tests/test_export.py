"""Export: the student alone to ONNX / ExportedProgram (/ TensorRT), parity on real decoded
clips, zero added cost, the manifest and archive, and bad input that leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export import trt_engine
from export.__main__ import main as export_cli
from export.archive import serving_handler
from export.build import ExportError, build_r3d18, export_run, export_student
from export.evaluate import evaluate_onnx
from export.flops import graph_signature, onnx_flops, onnx_parameters, torch_flops
from export.parity import Bound, onnx_session
from serving.manifest import input_spec_from_manifest, sha256_of
from training.config import config_from_dict
from training.data import resolve_splits
from training.models import R3D18, TwoStreamNet, count_parameters, r3d18_from_config
from training.scoring import accuracy_metrics, score_videos
from training.views import decode_test_views, normalize

REPO = Path(__file__).resolve().parent.parent


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of a run folder (the shared tiny run stays read-only)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("export", "logs", ".export-*", "eval_onnx.json"))
    return dst


def edit_checkpoint(run: Path, edit) -> None:
    ckpt = torch.load(run / "last.pt", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, run / "last.pt")


def randomize_weights(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights and BatchNorm statistics everywhere: a freshly initialized R3D-18 has
    zero residual gammas, a zero classifier bias and identity statistics, which the ONNX
    optimizer would fold away into fewer weights than a trained model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if name.endswith("running_var")
                    else torch.randn(t.shape, generator=g) * 0.1
                )
    return module


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(("export", ".export")))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported once, archive included (TensorRT where it exists)."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("exported") / "run")
    export_run(run, tensorrt="auto")
    return run


@pytest.fixture(scope="module")
def manifest(exported) -> dict:
    return json.loads((exported / "export" / "manifest.json").read_text())


@pytest.fixture(scope="module")
def student(exported) -> R3D18:
    ckpt = torch.load(exported / "last.pt", weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    net = r3d18_from_config(cfg, len(ckpt["classes"]))
    net.load_state_dict(ckpt["model"]["student"])
    return net.eval()


# ----------------------------------------------------------------------------- artifacts
def test_export_writes_the_files_and_a_manifest_that_round_trips(exported, manifest):
    out = exported / "export"
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "student.pt2", "manifest.json", "model.mar"} <= names
    assert not any(n.endswith(".data") for n in names)  # one self-contained ONNX file
    assert ("model.plan" in names) == (trt_engine.unavailable_reason() is None)
    assert leftovers(exported) == ["export"]  # the temporary folder was renamed, not copied

    assert json.loads(json.dumps(manifest)) == manifest
    ckpt = torch.load(exported / "last.pt", weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    assert manifest["format_version"] == 1 and manifest["model_name"] == "action"
    assert manifest["model_version"] == "run-epoch3" and manifest["created_utc"].endswith("Z")
    assert manifest["classes"] == ckpt["classes"] == ["move_left", "move_right", "move_up"]
    assert input_spec_from_manifest(manifest["input"]) == cfg.input  # every InputSpec field, as trained
    assert {k: manifest["input"][k] for k in ("channel_order", "layout", "dtype", "value_range")} == {
        "channel_order": "RGB",
        "layout": "NCTHW",
        "dtype": "float32",
        "value_range": [0, 255],
    }
    assert manifest["architecture"] == {
        "name": "r3d18",
        "num_classes": 3,
        "width": 4,
        "temporal_pool": True,
        "dropout": 0.5,
        "bn_eps": 0.001,
        "in_channels": 3,
    }
    assert manifest["onnx"] == {
        **manifest["onnx"],
        "file": "model.onnx",
        "opset": 18,
        "input": "clips",
        "output": "logits",
    }
    assert manifest["torch"]["file"] == "student.pt2"
    assert manifest["training"]["run"] == str(exported.resolve()) and manifest["training"]["epoch"] == 3
    assert manifest["training"]["metrics"] == json.loads((exported / "metrics.json").read_text())

    artifacts = (
        {"model.onnx", "student.pt2"}
        | ({"model.plan"} if manifest["tensorrt"]["file"] else set())
        | set(manifest["openvino"]["files"])
    )
    assert manifest["openvino"]["files"] == ["model.xml", "model.bin"]  # fp32 passes its gate wherever openvino runs
    assert {"model.xml", "model.bin"} <= names and set(manifest["sha256"]) == artifacts
    for name, digest in manifest["sha256"].items():
        assert sha256_of(out / name) == digest, name
    assert onnx.load(str(out / "model.onnx")).opset_import[0].version == 18


def test_parity_figures_are_measured_on_every_view_of_the_validation_videos(manifest):
    ort = manifest["parity"]["onnxruntime"]
    # tiny run: 6 validation videos x (2 clips x 3 crops)
    assert ort["videos"] == 6 and ort["views"] == 36
    assert 0.0 <= ort["max_abs_diff"] <= ort["bound"] and ort["max_abs_diff"] < 1e-4
    assert 0.0 <= ort["max_rel_err"] < 1e-4 and ort["top1_agreement"] == 1.0
    pt2 = manifest["parity"]["exported_program"]
    assert pt2["videos"] == 1 and pt2["max_abs_diff"] < 1e-5


def test_onnx_runtime_matches_the_pytorch_student_on_decoded_clips(exported, manifest, student):
    """Independently of the export's own check: real decoded views through both models."""
    cfg = config_from_dict(torch.load(exported / "last.pt", weights_only=True)["config"])
    splits = resolve_splits(cfg.data, exported, is_main=False)
    session = onnx_session(exported / "export" / "model.onnx")
    spec = input_spec_from_manifest(manifest["input"])
    for item in splits.val[:3]:
        views = normalize(decode_test_views(str(splits.root / item.path), spec).views, spec)
        assert views.shape == (6, 3, 4, 32, 32)
        with torch.no_grad():
            ref = student(views).numpy()
        out = session.run(None, {"clips": views.numpy()})[0]
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
        assert (out.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("views", [1, 3, 30])
def test_dynamic_batch_axis_for_onnx_and_the_exported_program(exported, student, views):
    x = torch.randn(views, 3, 4, 32, 32, generator=torch.Generator().manual_seed(views))
    with torch.no_grad():
        ref = student(x).numpy()
    session = onnx_session(exported / "export" / "model.onnx")
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "clips" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 4, 32, 32]
    assert out.name == "logits"
    logits = session.run(None, {"clips": x.numpy()})[0]
    assert logits.shape == (views, 3)
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=1e-4)
    program = torch.export.load(exported / "export" / "student.pt2").module()
    with torch.no_grad():
        np.testing.assert_allclose(program(x).numpy(), ref, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- zero added cost
def test_exported_student_costs_what_a_plain_r3d18_costs(exported, manifest, student, tmp_path):
    plain = build_r3d18(manifest["architecture"])
    view = (1, 3, 4, 32, 32)
    assert count_parameters(student) == count_parameters(plain) == manifest["params"]
    assert torch_flops(student, view) == torch_flops(plain, view) == manifest["flops_per_view"]

    # the exported graph against a plain R3D-18 exported the same way: same single input and
    # output, same ops, same weight shapes, same FLOPs counted from the graph itself
    export_student(randomize_weights(plain).eval(), view[1:], tmp_path)
    ours = onnx.load(str(exported / "export" / "model.onnx"))
    reference = onnx.load(str(tmp_path / "model.onnx"))
    assert len(ours.graph.input) == 1 and len(ours.graph.output) == 1
    assert graph_signature(ours) == graph_signature(reference)
    assert onnx_parameters(ours) == onnx_parameters(reference)
    assert onnx_flops(ours) == onnx_flops(reference) == manifest["flops_per_view"]
    assert onnx_flops(ours, views=30) == 30 * manifest["flops_per_view"]
    cost = manifest["zero_added_cost"]
    assert cost["params"] == cost["plain_r3d18_params"]
    assert cost["flops_per_view"] == cost["plain_r3d18_flops_per_view"] == cost["onnx_flops_per_view"]


def test_full_size_student_flops_and_parameters(tmp_path):
    """The paper-size student (101 classes, 8x224²): 33.2 M parameters, 37.6 GFLOPs per clip,
    counted alike by torch and from the ONNX graph; the teacher and heads are not in it."""
    two_stream = TwoStreamNet(101)
    student = two_stream.student.eval()
    assert count_parameters(student) == count_parameters(R3D18(101)) == 33_218_085
    assert count_parameters(two_stream) > 2 * count_parameters(student)
    flops = torch_flops(student, (1, 3, 8, 224, 224))
    assert flops == 37_623_272_448
    export_student(student, (3, 8, 224, 224), tmp_path)
    assert onnx_flops(onnx.load(str(tmp_path / "model.onnx"))) == flops


# ----------------------------------------------------------------------------- accuracy
def test_onnx_accuracy_reproduces_the_runs_30_view_metrics(exported, student, capsys):
    assert export_cli(["evaluate", "--run", str(exported)]) == 0
    printed = capsys.readouterr().out
    assert "ONNX Runtime (2 clips x 3 crops)" in printed and "training     (2 clips x 3 crops)" in printed
    report = json.loads((exported / "eval_onnx.json").read_text())
    trained = json.loads((exported / "metrics.json").read_text())["student"]
    assert report["videos"] == trained["videos"] == 6 and report["skipped_videos"] == 0
    assert abs(report["top1"] - trained["top1"]) <= 0.5
    assert abs(report["top5"] - trained["top5"]) <= 0.5
    # and the same figures as the PyTorch student through training's own 30-view evaluation
    cfg = config_from_dict(torch.load(exported / "last.pt", weights_only=True)["config"])
    splits = resolve_splits(cfg.data, exported, is_main=False)
    scores, labels, _ = score_videos(
        student, splits.val, splits.root, cfg.input, modality="rgb", tg_stride=1, device=torch.device("cpu")
    )
    assert accuracy_metrics(scores, labels, 3)["top1"] == pytest.approx(report["top1"])
    assert evaluate_onnx(exported, clips=1, crops=1)["views"] == "1 clips x 1 crops"


# ----------------------------------------------------------------------------- TensorRT, archive
def test_tensorrt_engine_where_tensorrt_exists(manifest):
    reason = trt_engine.unavailable_reason()
    if reason is not None:
        assert manifest["tensorrt"] == {"file": None, "reason": reason}
        pytest.skip(f"TensorRT path not run: {reason}")
    trt = manifest["tensorrt"]
    assert trt["file"] == "model.plan" and (trt["min_views"], trt["opt_views"], trt["max_views"]) == (1, 30, 30)
    parity = manifest["parity"]["tensorrt"]
    assert parity["views"] == 36 and parity["max_abs_diff"] <= parity["bound"]


def test_tensorrt_on_fails_clearly_where_it_is_missing(tiny_run, tmp_path, capsys):
    reason = trt_engine.unavailable_reason()
    if reason is None:
        pytest.skip("TensorRT is available here")
    run = copy_run(tiny_run, tmp_path / "run")
    assert export_cli(["--run", str(run), "--tensorrt", "on", "--no-archive"]) == 1
    assert f"error: --tensorrt on: {reason}" in capsys.readouterr().err
    assert leftovers(run) == []


def test_model_archive_holds_the_handler_and_the_artifacts(exported, manifest):
    out = exported / "export"
    with zipfile.ZipFile(out / "model.mar") as mar:
        names = set(mar.namelist())
        mar_manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        assert mar_manifest["model"]["modelName"] == "action"
        assert mar_manifest["model"]["modelVersion"] == manifest["model_version"]
        assert mar_manifest["model"]["handler"] == "handler.py" and "handler.py" in names
        assert mar.read("handler.py") == serving_handler().read_bytes()
        for name in ("model.onnx", "student.pt2", "model.xml", "model.bin", "manifest.json"):
            assert mar.read(name) == (out / name).read_bytes(), name


def test_archive_without_the_handler_is_refused_by_name(tiny_run, tmp_path, capsys, monkeypatch):
    """An installation without the serving package (its handler is what the archive serves)."""
    monkeypatch.setattr("export.build.serving_handler", lambda: None)
    run = copy_run(tiny_run, tmp_path / "run")
    assert export_cli(["--run", str(run)]) == 1
    assert "serving/handler.py not found" in capsys.readouterr().err
    assert leftovers(run) == []


# ----------------------------------------------------------------------------- bad input
def test_missing_run_folder_exits_nonzero_with_its_name(tmp_path):
    missing = tmp_path / "no-such-run"
    proc = subprocess.run(
        [sys.executable, "-m", "export", "--run", str(missing)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == f"error: run folder not found: {missing}"
    assert not missing.exists()


def _no_student(ckpt):
    ckpt["model"]["student"] = None


def _wider(ckpt):
    ckpt["config"]["model"]["width"] = 8


def _no_val(ckpt):
    ckpt["config"]["data"]["val_list"] = ""


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("corrupt", "last.pt: not a readable checkpoint"),
        ("truncated", "last.pt: not a readable checkpoint"),
        ("state_dict_only", "not a checkpoint of this project's training"),
        ("other_architecture", "the student weights are not an R3D-18 of the run's config (width 8, 3 classes)"),
        ("teacher_only", "the checkpoint has no RGB student to export"),
        ("no_validation_data", "has no validation videos"),
        ("no_checkpoint", "no checkpoint in the run folder"),
        ("no_metrics", "metrics.json is missing: the run stopped at epoch 3"),
    ],
)
def test_bad_runs_exit_nonzero_naming_the_problem_and_leave_nothing(tiny_run, tmp_path, capsys, breakage, message):
    run = copy_run(tiny_run, tmp_path / "run")
    ckpt_path = run / "last.pt"
    if breakage == "corrupt":
        ckpt_path.write_bytes(b"this is not a checkpoint\n" * 100)
    elif breakage == "truncated":
        ckpt_path.write_bytes(ckpt_path.read_bytes()[: ckpt_path.stat().st_size // 2])
    elif breakage == "state_dict_only":
        torch.save(R3D18(3, width=4).state_dict(), ckpt_path)
    elif breakage == "other_architecture":
        edit_checkpoint(run, _wider)
    elif breakage == "teacher_only":
        edit_checkpoint(run, _no_student)
    elif breakage == "no_validation_data":
        edit_checkpoint(run, _no_val)
    elif breakage == "no_checkpoint":
        ckpt_path.unlink()
    elif breakage == "no_metrics":
        (run / "metrics.json").unlink()
    assert export_cli(["--run", str(run), "--no-archive"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert leftovers(run) == []


def test_unreadable_validation_videos_fail_after_export_and_leave_nothing(tiny_run, tmp_path):
    """The failure comes after the model files were written: the temporary folder goes too."""
    run = copy_run(tiny_run, tmp_path / "run")
    cfg = config_from_dict(torch.load(run / "last.pt", weights_only=True)["config"])
    data = Path(shutil.copytree(cfg.data.root, tmp_path / "data"))
    for item in resolve_splits(cfg.data, run, is_main=False).val:
        (data / item.path).write_bytes(b"\x00" * 1000)
    edit_checkpoint(run, lambda ckpt: ckpt["config"]["data"].update(root=str(data)))
    with pytest.raises(ExportError, match="none of the run's 6 validation videos could be decoded"):
        export_run(run, archive=False)
    assert leftovers(run) == []


def test_broken_parity_fails_the_export_and_keeps_the_older_export(tiny_run, tmp_path, monkeypatch):
    run = copy_run(tiny_run, tmp_path / "run")
    export_run(run, archive=False, parity_videos=2)
    before = {p.name: p.read_bytes() for p in (run / "export").iterdir()}
    assert json.loads(before["manifest.json"])["parity"]["onnxruntime"]["videos"] == 2

    # a bound no real export can meet: ONNX Runtime's fp32 logits are never bit-identical
    monkeypatch.setattr("export.build.ONNXRUNTIME_BOUND", Bound(abs_tol=0.0, min_top1=1.0))
    with pytest.raises(ExportError, match=r"parity check failed: onnxruntime: max \|logit difference\|"):
        export_run(run, archive=False, parity_videos=2)
    assert leftovers(run) == ["export"]
    assert {p.name: p.read_bytes() for p in (run / "export").iterdir()} == before


def test_evaluate_refuses_a_missing_or_altered_export(exported, tmp_path, capsys):
    assert export_cli(["evaluate", "--run", str(tmp_path / "nothing")]) == 1
    assert "error: run folder not found" in capsys.readouterr().err
    assert export_cli(["evaluate", "--run", str(tmp_path)]) == 1
    assert "manifest.json is missing" in capsys.readouterr().err
    run = Path(shutil.copytree(exported, tmp_path / "run"))
    with open(run / "export" / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert export_cli(["evaluate", "--run", str(run)]) == 1
    assert "sha256 differs from the manifest's" in capsys.readouterr().err


def test_bad_options_are_refused(tiny_run):
    with pytest.raises(ExportError, match="model name 'a b'"):
        export_run(tiny_run, model_name="a b", archive=False)
    with pytest.raises(ExportError, match="tensorrt must be auto, on or off"):
        export_run(tiny_run, tensorrt="yes", archive=False)
