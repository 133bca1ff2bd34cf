"""Results JSON -> the markdown summary (tables the README quotes) and the latency plot."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

SIZE_NAMES = {"run": "run", "full": "full size"}


# ----------------------------------------------------------------------------- formatting
def num(x: float | None, digits: int = 3) -> str:
    """Three significant digits, no exponent for everyday magnitudes."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{x:,.{decimals}f}"


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def ratio_text(r: dict) -> str:
    return f"{r['median']:.3f} ({r['p10']:.3f}–{r['p90']:.3f})"


def model_text(config: dict) -> str:
    a = config["architecture"]
    shape = config["clip_shape"]
    return (
        f"R3D-18 width {a['width']}, {a['num_classes']} classes, views {shape[1]}×{shape[2]}×{shape[3]}, "
        f"{num(config['flops_per_view'] / 1e9)} GFLOPs/view, weights {config['weights']}"
    )


# ----------------------------------------------------------------------------- sections
def header_section(results: dict) -> list[str]:
    m, v = results["machine"], results["versions"]
    gpu = m["gpu"]["name"] + f" ({m['gpu']['memory_gib']} GiB)" if m.get("gpu") else "no GPU"
    ort = v.get("onnxruntime-gpu") or v.get("onnxruntime")
    load = results["load_average"]
    run = results["run"]
    a = run["architecture"]
    inp = run["input"]
    lines = [
        f"# Latency benchmarks: {results['machine_slug']}, {results['created_utc'][:10]}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {gpu}; {m['os']}",
        f"- Versions: Python {v['python']}, torch {v['torch']}, onnxruntime {ort}, onnx {v['onnx']}, "
        f"OpenVINO {v.get('openvino') or 'not installed'}, decord {v['decord']}, TorchServe {v['torchserve']}, "
        f"TensorRT {v['tensorrt'] or 'not installed'}",
        f"- Device {results['device']}, profile `{results['profile']['name']}`, command `{results['command']}`; "
        f"load average (1 min) {load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end",
        f"- Run under test: `{run['path']}` ({run['model_version']}): R3D-18 width {a['width']}, "
        f"{a['num_classes']} classes, {inp['test_clips']}×{inp['test_crops']} views of "
        f"{inp['clip_len']}×{inp['test_crop']}², {num(run['flops_per_view'] / 1e9)} GFLOPs/view, "
        f"{run['params']:,} parameters",
    ]
    for mm in results["matmul"]:
        threads = f", {mm['threads']} threads" if mm.get("threads") else ""
        tf32 = ", TF32" if mm.get("tf32") else ""
        impls = mm.get("implementations") or {}
        others = "; ".join(f"{k} {num(v['tflops'])}" for k, v in impls.items() if k != mm.get("implementation"))
        lines.append(
            f"- Matmul reference ({mm['device']}, {mm['dtype']}{tf32}, {mm['n']}², median of {mm['rounds']}"
            f"{threads}): {num(mm['tflops'])} TFLOP/s with {mm.get('implementation', 'torch.matmul')}"
            + (f" (the faster of those timed; {others} TFLOP/s)" if others else "")
        )
    return lines


def cost_section(records: list[dict]) -> list[str]:
    rows = []
    for r in records:
        rows.append(
            [
                SIZE_NAMES[r["size"]],
                r["backend"],
                str(r["views"]),
                num(r["student"]["median_ms"]),
                num(r["plain"]["median_ms"]),
                ratio_text(r["ratio"]),
                str(r["ratio"]["rounds"]),
                f"{r['params']['student']:,} / {r['params']['plain']:,}",
                f"{num(r['flops_per_view']['student'] / 1e9)} / {num(r['flops_per_view']['plain'] / 1e9)}",
                "yes" if r["params"]["equal"] and r["flops_per_view"]["equal"] else "NO",
                "yes" if r["within_target"] else "no",
            ]
        )
    models = {r["size"]: model_text(r["config"]) for r in records}
    return (
        [
            "## 1. No added inference cost: exported student vs plain R3D-18",
            "",
            "The plain R3D-18 is built from the architecture record alone and loaded with the student's "
            "weights (a strict load: same parameters by name and shape); both are exported by the export "
            "stage's code. Same backend, same input, interleaved round by round in one process. "
            "Ratio = student / plain "
            "latency: median of the per-round ratios (10th–90th percentile); target 1.00 ± 0.03. "
            "FLOPs counted on the modules (torch) and on the ONNX graphs; both must agree.",
            "",
        ]
        + [f"- {SIZE_NAMES[k]}: {v}" for k, v in models.items()]
        + [""]
        + table(
            [
                "size",
                "backend",
                "views",
                "student ms",
                "plain ms",
                "ratio (p10–p90)",
                "rounds",
                "params student / plain",
                "GFLOPs/view student / plain",
                "equal cost",
                "ratio within target",
            ],
            rows,
        )
    )


def speedup_text(r: dict) -> str:
    """ONNX Runtime fp32 (CPU) time over the backend's, or a dash where it was not measured."""
    return ratio_text(r["speedup"]) if r.get("speedup") else "–"


def backends_section(records: list[dict], results: dict) -> list[str]:
    rows: list[list[str]] = []
    fastest: dict[tuple, dict] = {}
    for r in records:
        rows.append(
            [
                SIZE_NAMES[r["size"]],
                r["backend"],
                r.get("precision", "–"),
                str(r["views"]),
                num(r["median_ms"]),
                num(r["p90_ms"]),
                num(r["p99_ms"]),
                str(r["rounds"]),
                num(r["views_per_s"]),
                speedup_text(r),
                num(r["achieved_tflops"]),
                pct(r["mfu"]) + f" ({r['matmul_dtype']})",
            ]
        )
        key = (r["size"], r["views"])
        if key not in fastest or r["median_ms"] < fastest[key]["median_ms"]:
            fastest[key] = r
    models = {r["size"]: model_text(r["config"]) for r in records}
    lines = (
        [
            "## 2. Backends",
            "",
            "Host input to host logits (what a server's model call includes). Speedup = ONNX Runtime fp32 "
            "time on the CPU over the backend's, per round, the two interleaved (median, 10th–90th "
            "percentile; backends computing on the CPU). MFU = achieved FLOP/s over the FLOP/s of the "
            "matmul above on the same device and dtype; target ≥ 50 % at 30 views.",
            "",
        ]
        + [f"- {SIZE_NAMES[k]}: {v}" for k, v in models.items()]
        + [""]
        + table(
            [
                "size",
                "backend",
                "precision",
                "views",
                "median ms",
                "p90 ms",
                "p99 ms",
                "rounds",
                "views/s",
                "speedup vs ONNX Runtime CPU fp32 (p10–p90)",
                "TFLOP/s",
                "MFU",
            ],
            rows,
        )
        + [""]
    )
    for (size, views), r in sorted(fastest.items()):
        lines.append(f"- Fastest, {SIZE_NAMES[size]} at {views} view(s): **{r['backend']}** ({num(r['median_ms'])} ms)")
    default = results.get("serving_default", {})
    reason = f" — {default['reason']}" if default.get("reason") else ""
    lines.append(
        f"- Serving's default backend on this machine (`serving.backends.select_backend`, auto): "
        f"**{default.get('backend') or 'none'}**{reason}"
    )
    return lines


def serving_section(records: list[dict]) -> list[str]:
    lines = ["## 3. The serving path", ""]
    decode = [r for r in records if r["kind"] == "decode"]
    if decode:
        rows = []
        for r in decode:
            s, v = r["stages"], r["video"]
            rows.append(
                [
                    f"{v['width']}×{v['height']}, {v['frames']} frames",
                    f"{r['clips']}×{r['crops']}",
                    f"{r['view_shape'][1]}×{r['view_shape'][2]}²",
                    f"{r['crops_mb']:.1f} / {r['views_mb']:.1f}",
                    f"**{num(r['before_model_ms'])}**",
                    num(r["before_model_ms_in_process"]),
                    num(r["isolation_overhead_ms"]),
                    num(s["views"]["median_ms"]),
                    num(r["before_model_ms_previous"]),
                    num(s["scores+json"]["median_ms"]),
                ]
            )
        lines += [
            "### Decode and preprocessing per video (ms, medians)",
            "",
            "Measured interleaved in one process. isolated: what the server does — the upload decoded by PyAV "
            "in a helper process of the worker's pool (`serving.isolation`), its uint8 crops passed back in "
            "shared memory and normalized by the worker; in-process: the same decoder and normalization "
            "without the helper (isolation costs the difference); normalize: the crops to float views alone; "
            "previous: the path it replaced (decord decoding in the worker, torch resize, normalization, "
            "crops). MB: uint8 crops that cross the process boundary / float32 views the model gets.",
            "",
        ]
        lines += table(
            [
                "video",
                "clips×crops",
                "view",
                "MB crops / views",
                "isolated (server)",
                "in-process",
                "isolation cost",
                "normalize",
                "previous (decord)",
                "scores+JSON",
            ],
            rows,
        )
        lines.append("")
    http = [r for r in records if r["kind"] == "http"]
    if http:
        rows, levels = [], []
        for r in http:
            c = r["config"]
            level1 = r["levels"][0]
            rows.append(
                [
                    f"{SIZE_NAMES[r['size']]}: width {c['width']}, {c['view_shape'][1]}×{c['view_shape'][2]}²",
                    f"{c['clips']}×{c['crops']}",
                    c["backend"],
                    num(r["model"]["median_ms"]),
                    num(r["in_process"]["median_ms"]),
                    num(level1["median_ms"]),
                    num(level1["p95_ms"]),
                    num(level1["p99_ms"]),
                    ratio_text(r["ratio_http_to_model"]),
                    num(r["ratio_in_process_to_model"]["median"]),
                    "yes" if r["within_target"] else "no",
                ]
            )
            for lv in r["levels"]:
                levels.append(
                    [
                        SIZE_NAMES[r["size"]],
                        str(lv["concurrency"]),
                        str(lv["requests"]),
                        num(lv["median_ms"]),
                        num(lv["p95_ms"]),
                        num(lv["p99_ms"]),
                        num(lv["requests_per_s"]),
                        num(lv["requests_per_s"] * c["views"]),
                    ]
                )
        lines += [
            "### End to end through TorchServe on loopback",
            "",
            "Concurrency 1, interleaved in one process with the same request answered in-process "
            "(`serving.core.InferenceCore`, no HTTP) and with the model alone on the same views "
            "(same backend and threads as the server's worker). Target: HTTP / model ≤ 1.15.",
            "",
        ]
        lines += table(
            [
                "model",
                "clips×crops",
                "backend",
                "model ms",
                "in-process ms",
                "HTTP p50 ms",
                "p95",
                "p99",
                "HTTP / model (p10–p90)",
                "in-process / model",
                "within target",
            ],
            rows,
        )
        lines += (
            [""]
            + table(["model", "concurrency", "requests", "p50 ms", "p95 ms", "p99 ms", "requests/s", "views/s"], levels)
            + [""]
        )
        for r in http:
            c, t = r["config"], r["server_timings_ms"]
            lines.append(
                f"- {SIZE_NAMES[r['size']]} ({c['weights']} weights): the server's own timings (median ms): "
                f"decode {num(t['decode'])}, preprocess {num(t['preprocess'])}, inference "
                f"{num(t['inference'])}; video {c['video']['width']}×{c['video']['height']}, "
                f"{c['video']['frames']} frames; {c['workers']} worker, batch size {c['batch_size']}, "
                f"{c['threads']} threads; TorchServe ready {r['server_start_s']:.1f} s after start"
            )
    speedups = [r for r in records if r["kind"] == "http_speedup"]
    if speedups:
        lines += [
            "",
            "### End to end: the server's choice against ONNX Runtime fp32",
            "",
            "Two servers of the same export on loopback, `--backend auto` and `--backend onnxruntime` (fp32, "
            "what `auto` served on CPUs before OpenVINO), sent the same default request in turn (and, where "
            "the export has a stopping rule, the auto server's adaptive views). Speedup: ONNX Runtime's request "
            "time over the other's, per round (median, 10th–90th percentile). Target: ≥ 3 at full size.",
            "",
        ]
        rows = []
        for r in speedups:
            c, lat = r["config"], r["latency"]
            adaptive = (
                "–"
                if r["speedup_adaptive"] is None
                else f"{num(lat['auto_adaptive']['median_ms'])} ms, {r['adaptive_mean_views']:.1f} views, "
                f"{ratio_text(r['speedup_adaptive'])}"
            )
            rows.append(
                [
                    f"{SIZE_NAMES[r['size']]}: width {c['width']}, {c['view_shape'][1]}×{c['view_shape'][2]}² "
                    f"({c['weights']} weights)",
                    f"{c['clips']}×{c['crops']}",
                    num(lat["onnxruntime"]["median_ms"]),
                    r["backends"]["auto"],
                    num(lat["auto"]["median_ms"]),
                    f"**{ratio_text(r['speedup'])}**",
                    adaptive,
                    "yes" if r["within_target"] else "no",
                ]
            )
        lines += table(
            [
                "model",
                "clips×crops",
                "ONNX Runtime fp32 ms",
                "auto serves",
                "auto ms",
                "speedup (p10–p90)",
                "adaptive: ms, views, speedup",
                "≥ 3",
            ],
            rows,
        )
    return lines


def training_section(records: list[dict]) -> list[str]:
    steps = [r for r in records if r["kind"] == "step"]
    data = {r["size"]: r for r in records if r["kind"] == "data"}
    lines = ["## 4. Training throughput", ""]
    if steps:
        rows = []
        for r in steps:
            c = r["config"]
            for name, label in (("method", "full method"), ("fixmatch", "FixMatch RGB")):
                s = r[name]
                mem = num(s["peak_memory_gib"]) if s.get("peak_memory_gib") is not None else "–"
                rows.append(
                    [
                        SIZE_NAMES[r["size"]],
                        label,
                        f"{c['batch_labeled']}+{c['batch_unlabeled']}",
                        f"{c['clip'][0]}×{c['clip'][1]}², width {c['width']}",
                        num(s["median_ms"]),
                        str(s["rounds"]),
                        num(s["clips_per_s"]),
                        num(s["network_clips_per_s"]),
                        num(s["flops_per_step"] / 1e9),
                        pct(s["mfu"]) + f" ({r['matmul_dtype']})",
                        mem,
                    ]
                )
        lines += [
            "One optimizer step on a fixed batch (weak + strong views, after the supervised warm-up), the "
            "two methods interleaved. clips/s = labeled + unlabeled clips consumed per second; network "
            "clips/s counts each clip through each network as `train.py` logs it. MFU against the matmul "
            "reference in the step's precision.",
            "",
        ]
        lines += table(
            [
                "size",
                "step",
                "batch l+u",
                "clip",
                "ms/step",
                "rounds",
                "clips/s",
                "network clips/s",
                "GFLOPs/step",
                "MFU",
                "peak GiB",
            ],
            rows,
        ) + [""]
        for r in steps:
            lines.append(
                f"- {SIZE_NAMES[r['size']]}: method / FixMatch step time {ratio_text(r['overhead'])} "
                f"(the method's training overhead; AMP bf16: {r['config']['amp_bf16']})"
            )
        lines.append("")
    if data:
        rows = []
        for size, r in data.items():
            c = r["config"]
            step = next((s for s in steps if s["size"] == size), None)
            need = math.ceil(step["method"]["clips_per_s"] / r["clips_per_s_per_worker"]) if step else None
            rows.append(
                [
                    SIZE_NAMES[size],
                    c["videos"],
                    f"{c['clip_len']}×{c['crop_size']}², every {c['interval']}",
                    num(r["clips_per_s_per_worker"]),
                    num(r["median_ms"]),
                    str(c["batch"]),
                    str(need) if need is not None else "–",
                ]
            )
        lines += [
            "### Data pipeline per loader worker",
            "",
            "`TrainClips` + `collate_skipping` in one process with one torch thread (as each loader worker "
            "runs): decode of the clip and its TG successor frames + weak augmentation. Workers needed = "
            "the method's step clips/s on this machine ÷ clips/s per worker.",
            "",
        ]
        lines += table(
            ["size", "videos", "clip", "clips/s per worker", "ms per batch", "batch", "workers needed here"], rows
        )
    for r in (r for r in records if r["kind"] == "loader_passes"):
        rows = [
            [
                name.replace("_", ", "),
                str(r["videos"][name.split("_")[0]]),
                num(r[name]["median_ms"]),
                num(r[name]["clips_per_s"]),
            ]
            for name in ("small_persistent", "large_persistent", "small_respawned", "large_respawned")
        ]
        lines += [
            "",
            "### Loader passes: small and large sets",
            "",
            f"{r['batches_per_round']} batches of {r['batch']} clips from `make_loader` (one worker), a small "
            "set passed over every 2 batches and the run's whole unlabeled set, with workers that live for "
            "the run (what training does) and respawned on every pass, interleaved.",
            "",
        ]
        lines += table(["set, workers", "videos", "ms per round", "clips/s"], rows) + [""]
        lines += [
            f"- small / large time: persistent {ratio_text(r['small_over_large_time']['persistent'])}, "
            f"respawned {ratio_text(r['small_over_large_time']['respawned'])}",
            f"- persistent workers on the small set: {ratio_text(r['persistent_speedup_small'])} faster",
        ]
    return lines


def notes_section(results: dict) -> list[str]:
    p = results["profile"]
    lines = ["## Notes", ""]
    if p["name"] == "smoke":
        lines.append(
            "- Smoke profile: the smallest sizes and round counts; these figures only show that every benchmark runs."
        )
    elif results["device"] == "cpu":
        lines += [
            "- On this CPU each case measures for about "
            f"{p['budget_s']:.0f} s after {p['warmup']} warm-up round(s), with at least {p['min_rounds']} "
            f"rounds ({p['ratio_min_rounds']} for ratios); the full-size 30-view forward takes seconds, so "
            "those cases have the fewest rounds and their p99 is close to their maximum.",
            "- Full size = R3D-18 width 64 at 8×224² (the paper's size), 101 classes, initial weights of "
            "the method's student (cost does not depend on weight values).",
            "- Serving end to end: the run's model (width-reduced, 30 views), and a width-64 model at the "
            "UCF-101 config's 8×256² views with "
            f"{p['full_serving_views'][0]}×{p['full_serving_views'][1]} views per request.",
            f"- Training at full size uses a batch of {p['full_train_batch'][0]}+{p['full_train_batch'][1]} "
            "clips per step on this CPU (the UCF-101 config's is 5+5 per GPU).",
        ]
    else:
        lines += [
            f"- On the GPU each case measures for about {p['budget_s']:.0f} s after {p['warmup']} warm-up "
            f"rounds, with at least {p['min_rounds']} rounds; cuDNN benchmark mode is on. fp32 convolutions "
            "run on TF32 tensor cores (torch's default), and so does the fp32 matmul reference.",
            "- Full size = R3D-18 width 64 at 8×224², 101 classes, initial weights of the method's student; "
            "the training step uses the UCF-101 config as is (5+5 clips, AMP bf16).",
            "- `-resident` cases keep input and logits on the GPU (the forward's compute alone); the others "
            "include the host-to-device copy of the views and the copy of the logits back.",
        ]
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    failed = results.get("failed", [])
    if failed:
        lines += ["", "**Failed cases** (their figures are missing or incomplete):"]
        lines += [f"- {f['test'].split('::')[-1]} ({f['phase']}): {f['error']}" for f in failed]
    by_reason = defaultdict(list)
    for s in results.get("skipped", []):
        by_reason[s["reason"]].append(s["test"].split("::")[-1])
    if by_reason:
        lines += ["", "Skipped here:"]
        for reason, tests in by_reason.items():
            lines.append(f"- {reason}: {', '.join(tests)}")
    return lines


def write_markdown(results: dict, path: Path, *, plot: str | None = None) -> None:
    groups = results["groups"]
    lines = header_section(results) + [""]
    if "no_added_cost" in groups:
        lines += cost_section(groups["no_added_cost"]) + [""]
    if "backends" in groups:
        lines += backends_section(groups["backends"], results) + [""]
        if plot:
            lines += [f"![latency per backend and view count]({plot})", ""]
    if "serving" in groups:
        lines += serving_section(groups["serving"]) + [""]
    if "training" in groups:
        lines += training_section(groups["training"]) + [""]
    lines += notes_section(results)
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- the plot
def plot_latency(results: dict, path: Path) -> bool:
    """Median latency (bars to p90) per backend against the view count, one panel per model
    size, log-log axes; returns False when there is no backends group to plot."""
    records = results["groups"].get("backends", [])
    if not records:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(r["size"] for r in records))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        by_backend = defaultdict(list)
        for r in records:
            if r["size"] == size:
                by_backend[r["backend"]].append(r)
        for backend, rs in by_backend.items():
            rs.sort(key=lambda r: r["views"])
            views = [r["views"] for r in rs]
            med = [r["median_ms"] for r in rs]
            upper = [r["p90_ms"] - r["median_ms"] for r in rs]
            ax.errorbar(views, med, yerr=[[0] * len(rs), upper], marker="o", capsize=3, label=backend)
        config = rs[0]["config"]
        shape = config["clip_shape"]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["views"] for r in records}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("views per forward")
        ax.set_ylabel("latency, ms (median; bar to p90)")
        ax.set_title(
            f"{SIZE_NAMES[size]}: width {config['architecture']['width']}, {shape[1]}×{shape[2]}²", fontsize=10
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = results["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu']}, {m['cores']} cores"
    fig.suptitle(f"Latency per backend and view count — {where} ({results['created_utc'][:10]})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
