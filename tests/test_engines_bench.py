"""`python -m benchmarks.engines` on the tiny exported run: every engine the export offers answers
every validation video; the ONNX Runtime row is the offline evaluation of the exported model;
refused precisions are reported, not run."""

from __future__ import annotations

import json

import pytest

from benchmarks.engines import KINDS, REFERENCE, main, pooled
from export.evaluate import evaluate_onnx


@pytest.fixture(scope="module")
def engines_results(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    assert main(["--runs", str(tiny_export), "--out", str(out)]) == 0
    [json_file] = out.glob("engines-*.json")
    assert [p.name for p in out.glob("engines-*.md")] == [json_file.with_suffix(".md").name]
    return json.loads(json_file.read_text()), json_file.with_suffix(".md").read_text()


@pytest.mark.slow
def test_every_offered_engine_answers_every_video(engines_results, tiny_export):
    results, _ = engines_results
    [run] = results["runs"]
    manifest = json.loads((tiny_export / "export" / "manifest.json").read_text())
    ran = [row["engine"] for row in run["rows"]]
    assert ran[0] == REFERENCE and set(ran) | set(run["not_run"]) == set(KINDS)
    for precision in ("fp32", "bf16", "int8"):
        offered = precision in manifest["openvino"]["offered"]
        assert (f"openvino-{precision}" in ran) == offered  # a refused precision is never run
    for row in run["rows"]:
        assert row["videos"] == run["videos"] > 0
        assert 0.0 <= row["top1_agreement_with_reference"] <= 1.0 and row["ms_per_video"] > 0
    ref = run["rows"][0]
    assert ref["top1_agreement_with_reference"] == 1.0 and ref["max_abs_logit_diff"] == 0.0
    assert ref["speedup"] == 1.0


@pytest.mark.slow
def test_the_reference_row_is_the_offline_evaluation(engines_results, tiny_export, tmp_path):
    results, _ = engines_results
    ref = results["runs"][0]["rows"][0]
    offline = evaluate_onnx(tiny_export)
    (tiny_export / "eval_onnx.json").unlink()  # the shared run stays as it was
    assert ref["top1"] == pytest.approx(offline["top1"]) and ref["top5"] == pytest.approx(offline["top5"])
    assert ref["videos"] == offline["videos"]
    adaptive = ref.get("adaptive")
    if adaptive is not None:  # the server's adaptive answer, replayed offline
        assert 1 <= adaptive["mean_views"] <= 30


@pytest.mark.slow
def test_the_report_names_every_run_and_engine(engines_results):
    results, text = engines_results
    assert results["runs"][0]["run"] in text and "All runs pooled" in text
    for row in results["runs"][0]["rows"]:
        assert f"| {row['engine']} | {row['backend']} |" in text


def test_pooled_weights_runs_by_their_videos():
    def run(videos, ref_top1, other_top1, agree):
        return {
            "videos": videos,
            "rows": [
                {"engine": REFERENCE, "top1": ref_top1, "top1_agreement_with_reference": 1.0},
                {"engine": "openvino-int8", "top1": other_top1, "top1_agreement_with_reference": agree},
            ],
        }

    # 1 of 10 videos lost, 0 of 30: 1 of 40 = 2.5 points; agreement (0.9 * 10 + 1.0 * 30) / 40
    rows = {p["engine"]: p for p in pooled([run(10, 50.0, 40.0, 0.9), run(30, 60.0, 60.0, 1.0)])}
    assert rows["openvino-int8"]["top1_change_points"] == pytest.approx(-2.5)
    assert rows["openvino-int8"]["top1_agreement_with_reference"] == pytest.approx(0.975)
    assert rows["openvino-int8"]["videos"] == 40 and rows["openvino-int8"]["runs"] == 2
    assert not rows["openvino-int8"]["within_bound"] and rows[REFERENCE]["within_bound"]
