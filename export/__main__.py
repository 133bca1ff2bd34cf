"""`python -m export --run RUN [options]`: export a run's student (what `make export` runs).
`python -m export evaluate --run RUN [--clips N --crops N]`: accuracy of the exported ONNX model.

Bad input prints `error: <message>` and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.build import ExportError


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description=export_main.__doc__,
        epilog="python -m export evaluate --run RUN: 30-view accuracy of the exported ONNX model",
    )
    p.add_argument("--run", required=True, help="run folder holding last.pt, config.yaml and metrics.json")
    p.add_argument("--model-name", default="action", help="TorchServe model name (URL /predictions/<name>)")
    p.add_argument(
        "--tensorrt",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: build an engine where TensorRT and a GPU exist; on: require one; off: skip",
    )
    p.add_argument(
        "--precision",
        choices=("fp16", "tf32", "fp32"),
        default="fp16",
        help="TensorRT engine precision (fp32: TF32 off; fp16 on TensorRT 11: the graph converted to fp16)",
    )
    p.add_argument(
        "--openvino",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: write an OpenVINO IR where openvino imports; on: require one that passes a precision's "
        "parity gate; off: skip",
    )
    p.add_argument("--parity-videos", type=int, default=16, help="validation videos (all views) checked for parity")
    p.add_argument("--max-views", type=int, default=30, help="largest batch of views the TensorRT profile accepts")
    p.add_argument("--no-archive", action="store_true", help="skip model.mar (it needs serving/handler.py)")
    p.add_argument(
        "--adaptive-videos",
        type=int,
        default=200,
        help="labeled training videos the adaptive views' stopping rule is calibrated on, and validation "
        "videos it is evaluated on, at most this many each, spread over the lists (0: no rule)",
    )
    p.add_argument(
        "--adaptive-target",
        type=float,
        default=0.99,
        help="Top-1 agreement with all views the rule must keep on the training videos",
    )
    return p


def export_main(argv: list[str]) -> int:
    """Export a run's RGB student: ONNX, ExportedProgram, OpenVINO IR, TensorRT where present, manifest, .mar."""
    args = export_parser().parse_args(argv)

    from export.build import export_run
    from serving.manifest import load_manifest

    out = export_run(
        Path(args.run),
        tensorrt=args.tensorrt,
        openvino=args.openvino,
        model_name=args.model_name,
        precision=args.precision,
        parity_videos=args.parity_videos,
        max_views=args.max_views,
        archive=not args.no_archive,
        adaptive_videos=args.adaptive_videos,
        adaptive_target=args.adaptive_target,
    )
    print_export_summary(out, load_manifest(out))
    return 0


def print_export_summary(out: Path, manifest: dict) -> None:
    """What was written, the model's size, each runtime's state and the ONNX parity figures."""
    from export.adaptive import describe

    o = manifest["parity"]["onnxruntime"]
    print(f"exported {manifest['model_name']} {manifest['model_version']} to {out}")
    print(f"  files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(
        f"  {manifest['params']:,} parameters, {manifest['flops_per_view'] / 1e9:.3g} GFLOPs per view "
        "(equal to a plain R3D-18 of this config)"
    )
    trt = manifest["tensorrt"]
    print(
        f"  TensorRT: {trt['file']} ({trt['precision']}, {trt['typing']} typing, on {trt['gpu']})"
        if trt["file"]
        else f"  TensorRT: skipped, {trt['reason']}"
    )
    checked = manifest["parity"].get("machine", {}).get("cuda_backends") or []
    print(
        f"  CUDA backends checked for parity: {', '.join(checked)} on {manifest['parity']['machine']['gpu']}"
        if checked
        else "  CUDA backends checked for parity: none (no GPU here)"
    )
    print(openvino_summary(manifest))
    print(f"  adaptive views: {describe(manifest['adaptive_views'])}")
    print(
        f"  parity vs PyTorch on {o['videos']} videos / {o['views']} views: ONNX Runtime max |diff| "
        f"{o['max_abs_diff']:.2e}, top-1 agreement {o['top1_agreement']:.4f}"
    )


def openvino_summary(manifest: dict) -> str:
    """One line: the IR and each precision's gate (accuracy difference in points of Top-1)."""
    record = manifest["openvino"]
    if not record["files"]:
        return f"  OpenVINO: no IR, {record['reason']}"
    parts = []
    for precision, entry in record["precisions"].items():
        report = manifest["parity"]["openvino"].get(precision)
        if report is None:
            parts.append(f"{precision} {entry['status']}")
            continue
        diff = report["top1_accuracy_diff"]
        parts.append(
            f"{precision} {entry['status']} (max |diff| {report['max_abs_diff']:.2e}, top-1 agreement "
            f"{report['top1_agreement']:.4f}" + ("" if diff is None else f", Top-1 {diff:+.2f} points") + ")"
        )
    return f"  OpenVINO: {', '.join(record['files'])}; " + "; ".join(parts)


def evaluate_main(argv: list[str]) -> int:
    """Accuracy of RUN/export/model.onnx (ONNX Runtime, CPU) on the run's validation set."""
    p = argparse.ArgumentParser(prog="python -m export evaluate", description=evaluate_main.__doc__)
    p.add_argument("--run", required=True, help="run folder with an export/ folder")
    p.add_argument("--clips", type=int, default=None, help="clips per video (default: the manifest's test_clips)")
    p.add_argument("--crops", type=int, default=None, help="crops per clip (default: the manifest's test_crops)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    p.add_argument(
        "--views",
        choices=("all", "adaptive"),
        default="all",
        help="adaptive: answer each video as the server does with adaptive views (the manifest's rule)",
    )
    args = p.parse_args(argv)

    from export.evaluate import evaluate_onnx

    run = Path(args.run)
    report = evaluate_onnx(run, clips=args.clips, crops=args.crops, threads=args.threads, views=args.views)
    print(json.dumps(report, indent=2))
    metrics_path = run / "metrics.json"
    trained = json.loads(metrics_path.read_text()).get("student") if metrics_path.is_file() else None
    if trained:
        views = json.loads(metrics_path.read_text()).get("views")
        print(
            f"ONNX Runtime ({report['views']}): top1 {report['top1']:.2f}  top5 {report['top5']:.2f}  "
            f"mean-class {report['mean_class']:.2f} over {report['videos']} videos"
        )
        print(
            f"training     ({views}): top1 {trained['top1']:.2f}  top5 {trained['top5']:.2f}  "
            f"mean-class {trained['mean_class']:.2f} over {trained['videos']} videos"
        )
    if "adaptive" in report:
        adaptive = report["adaptive"]
        print(
            f"adaptive views: {adaptive['mean_views']:.1f} views per video on average, Top-1 agreement with all "
            f"views {adaptive['top1_agreement_with_all_views']:.3f}"
        )
    print(f"written to {run / ('eval_onnx_adaptive.json' if args.views == 'adaptive' else 'eval_onnx.json')}")
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if argv and argv[0] == "evaluate":
            return evaluate_main(argv[1:])
        return export_main(argv)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
