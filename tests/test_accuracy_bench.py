"""The accuracy benchmark and its robustness test: corruptions against PIL's own ImageEnhance,
the table and verdict arithmetic, the run plan, and a tiny end-to-end benchmark that resumes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from benchmarks.accuracy import (
    DEFAULT_CONFIG,
    SETTINGS,
    BenchmarkError,
    finished,
    markdown,
    plan_runs,
    spread,
    summarize,
    verdict,
)
from benchmarks.accuracy import main as bench_main
from tests.tinyrun import tiny_overrides
from training.config import load_config
from training.robustness import (
    CORRUPTIONS,
    adjust_brightness,
    adjust_contrast,
    corruption,
    corruption_factor,
    to_grayscale,
)
from training.scoring import score_videos


# ----------------------------------------------------------------------------- corruptions
def random_views(seed: int = 0) -> torch.Tensor:
    """(V=2, 3, T=3, 12, 14) whole 0-255 values: a smooth gradient plus noise, like video frames."""
    g = np.random.default_rng(seed)
    base = np.linspace(20, 230, 14)[None, None, None, None, :] * np.ones((2, 3, 3, 12, 1))
    return torch.from_numpy(np.clip(base + g.normal(0, 25, base.shape), 0, 255).round()).float()


def pil_frames(views: torch.Tensor, fn) -> np.ndarray:
    """Apply `fn(PIL image) -> PIL image` to every frame of every view -> same layout as views."""
    out = np.zeros(views.shape, dtype=np.float64)
    for v in range(views.shape[0]):
        for t in range(views.shape[2]):
            image = Image.fromarray(views[v, :, t].permute(1, 2, 0).numpy().astype(np.uint8), "RGB")
            out[v, :, t] = np.asarray(fn(image).convert("RGB"), dtype=np.float64).transpose(2, 0, 1)
    return out


@pytest.mark.parametrize("factor", [0.55, 0.8, 1.25, 1.45])
def test_contrast_and_brightness_match_pil_image_enhance(factor):
    views = random_views()
    for ours, enhancer in ((adjust_contrast, ImageEnhance.Contrast), (adjust_brightness, ImageEnhance.Brightness)):
        expected = pil_frames(views, lambda im, enhancer=enhancer: enhancer(im).enhance(factor))
        got = ours(views, factor).numpy()
        diff = np.abs(got - expected)
        # PIL blends in single/double precision in C; an exact .5 may truncate the other way
        assert diff.max() <= 1 and (diff == 0).mean() > 0.97, (enhancer.__name__, diff.max(), (diff == 0).mean())
        assert got.min() >= 0 and got.max() <= 255 and np.all(got == np.round(got))


def test_contrast_keeps_each_frames_mean_luma_and_scales_deviations():
    views = random_views(1) * 0.5 + 60  # no clipping at factor 1.4
    out = adjust_contrast(views, 1.4)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)
    luma_in, luma_out = (views * w).sum(1).mean((-2, -1)), (out * w).sum(1).mean((-2, -1))
    assert torch.allclose(luma_in, luma_out, atol=1.0)
    assert out.std() / views.std() == pytest.approx(1.4, rel=0.02)


def test_grayscale_gives_three_equal_channels_of_pil_luma():
    views = random_views(2)
    gray = to_grayscale(views)
    assert gray.shape == views.shape
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    expected = pil_frames(views, lambda im: im.convert("L"))
    assert np.abs(gray.numpy() - expected).max() <= 1


def test_corruptions_are_seeded_per_video_and_in_the_imgaug_range():
    factors = [corruption_factor("contrast", seed=0, index=i) for i in range(200)]
    assert all(0.5 <= f < 1.5 for f in factors) and len(set(factors)) == 200
    assert 0.4 < np.mean(factors) - 0.5 < 0.6 and min(factors) < 0.6 and max(factors) > 1.4
    assert corruption_factor("contrast", seed=0, index=7) == factors[7]
    assert corruption_factor("brightness", seed=0, index=7) != factors[7]
    assert corruption_factor("contrast", seed=1, index=7) != factors[7]
    assert corruption_factor("grayscale", seed=0, index=7) is None
    views = random_views()
    apply = corruption("brightness", seed=3)
    assert torch.equal(apply(views, 5), apply(views, 5))
    assert torch.equal(apply(views, 5), adjust_brightness(views, corruption_factor("brightness", seed=3, index=5)))
    with pytest.raises(ValueError, match="unknown corruption 'blur'"):
        corruption("blur")
    with pytest.raises(ValueError, match=r"expected views \(V, 3, T, H, W\)"):
        to_grayscale(torch.zeros(3, 8, 8))


def test_score_videos_applies_the_perturbation_to_every_video_before_normalization(tiny_run):
    from training.config import config_from_dict
    from training.data import resolve_splits
    from training.models import r3d18_from_config

    ckpt = torch.load(tiny_run / "last.pt", weights_only=True)
    cfg = config_from_dict(ckpt["config"])
    splits = resolve_splits(cfg.data, tiny_run)
    net = r3d18_from_config(cfg, len(splits.classes))
    net.load_state_dict(ckpt["model"]["student"])
    seen = []

    def identity(views, index):
        seen.append((index, views.shape, float(views.min()), float(views.max())))
        return views

    def args(**kw):
        return dict(modality="rgb", tg_stride=1, device=torch.device("cpu"), **kw)

    plain, labels, _ = score_videos(net, splits.val, splits.root, cfg.input, **args())
    same, _, _ = score_videos(net, splits.val, splits.root, cfg.input, **args(perturb=identity))
    np.testing.assert_allclose(same, plain, rtol=0, atol=0)
    assert sorted(i for i, *_ in seen) == list(range(len(splits.val)))
    assert all(lo >= 0 and hi <= 255 and hi > 1 for _, _, lo, hi in seen)  # 0-255, not normalized yet
    black, _, _ = score_videos(net, splits.val, splits.root, cfg.input, **args(perturb=lambda v, i: v * 0))
    assert not np.allclose(black, plain)
    assert np.allclose(black, black[0])  # every video black: identical scores


# ----------------------------------------------------------------------------- the plan
def test_every_setting_is_a_valid_config_with_its_switches(tmp_path):
    runs, common = plan_runs(DEFAULT_CONFIG, list(SETTINGS), [0, 3], tmp_path, user_sets=[], steps=100)
    assert len(runs) == 2 * len(SETTINGS) - 1 and "optim.steps=100" in common  # the reference: one seed
    assert [r.seed for r in runs if r.name == "supervised"] == [0]
    by = {(r.name, r.seed): r.config for r in runs}
    assert by[("fixmatch-rgb", 0)].loss.streams == "rgb" and by[("fixmatch-tg", 0)].loss.streams == "tg"
    full, align, contrast = by[("full", 3)], by[("align", 3)], by[("contrast", 3)]
    assert (full.loss.align, full.loss.contrast, full.loss.streams) == ("cosine", True, "both")
    assert (align.loss.align, align.loss.contrast) == ("cosine", False)
    assert (contrast.loss.align, contrast.loss.contrast) == ("off", True)
    assert full.train.seed == 3 and by[("full", 0)].train.seed == 0
    sup = by[("supervised", 0)]
    assert sup.data.labeled_list == sup.data.train_list and sup.optim.sup_warmup_steps == 100
    # matched budget: only the switches above differ between rows
    for cfg in by.values():
        assert cfg.optim.steps == 100 and cfg.optim.batch_unlabeled == full.optim.batch_unlabeled
        assert cfg.data.root == full.data.root and cfg.data.root.startswith(load_config(DEFAULT_CONFIG).data.root + "-")
    assert runs[0].folder == tmp_path / "fixmatch-rgb-seed0"


def test_each_synthetic_setting_gets_its_own_data_root_unless_one_is_given(tmp_path):
    def root(sets):
        return plan_runs(DEFAULT_CONFIG, ["full"], [0], tmp_path, user_sets=sets, epochs=None)[0][0].config.data.root

    assert root([]) == root([])
    assert root(["data.synthetic_size.seed=5"]) != root([])
    assert root(["data.root=/somewhere/else"]) == "/somewhere/else"
    with pytest.raises(BenchmarkError, match="unknown configs: nope"):
        plan_runs(DEFAULT_CONFIG, ["nope"], [0], tmp_path, user_sets=[], epochs=None)


def test_a_run_folder_with_other_settings_is_refused_with_a_clear_message(tmp_path):
    from training.config import save_config

    runs, _ = plan_runs(DEFAULT_CONFIG, ["full"], [0], tmp_path, user_sets=[], steps=400)
    other, _ = plan_runs(DEFAULT_CONFIG, ["full"], [0], tmp_path, user_sets=[], steps=600)
    runs[0].folder.mkdir(parents=True)
    save_config(other[0].config, runs[0].folder / "config.yaml")
    with pytest.raises(BenchmarkError, match=r"different settings \(optim.steps\).*--root"):
        finished(runs[0])
    save_config(runs[0].config, runs[0].folder / "config.yaml")
    assert not finished(runs[0])  # same settings, no metrics yet: train (resume) it


# ----------------------------------------------------------------------------- the table
def fake_results(top1: dict[str, list[float]]) -> dict:
    results = {}
    for name, values in top1.items():
        results[name] = {}
        for seed, v in enumerate(values):
            metrics = {"student": {"top1": v, "top5": v + 10, "mean_class": v}}
            if name in ("full", "fixmatch-tg"):
                metrics["teacher"] = {"top1": v + 1, "top5": v + 11, "mean_class": v + 1}
            if name == "fixmatch-tg":
                del metrics["student"]
            rob = {"student": {k: {"top1": v - d} for k, d in zip(CORRUPTIONS, (1.0, 2.0, 10.0), strict=True)}}
            results[name][seed] = {
                "folder": f"runs/{name}-seed{seed}",
                "metrics": metrics,
                "eval": {"robustness": rob} if name in ("fixmatch-rgb", "full") else {},
            }
    return results


def test_spread_is_mean_and_sample_std():
    s = spread([50.0, 54.0])
    assert s["mean"] == 52.0 and s["std"] == pytest.approx(np.sqrt(8.0)) and (s["min"], s["max"]) == (50.0, 54.0)
    assert spread([7.0])["std"] == 0.0


def test_summary_and_verdict_follow_the_numbers():
    table = summarize(
        fake_results(
            {
                "fixmatch-rgb": [40, 44],
                "fixmatch-tg": [60, 62],
                "align": [55, 57],
                "contrast": [50, 52],
                "full": [60, 61],
            }
        )
    )
    assert table["full"]["student"]["top1"]["mean"] == 60.5 and table["full"]["teacher"]["top1"]["mean"] == 61.5
    assert "student" not in table["fixmatch-tg"] and "teacher" not in table["fixmatch-rgb"]
    assert table["full"]["robustness"]["grayscale"]["drop"]["mean"] == 10.0
    assert "robustness" not in table["align"]
    v = verdict(table)
    assert v["margin"] == 18.5 and v["beats_by_more_than_spread"] and v["every_seed_beats_every_seed"]
    assert v["align_between"] and v["contrast_between"] and v["align_above_contrast"]
    assert "supervised_top1" not in v
    with_reference = verdict(
        summarize(fake_results({"fixmatch-rgb": [40, 44], "full": [60, 61], "supervised": [80, 82]}))
    )
    assert with_reference["supervised_top1"] == 81 and with_reference["baseline_below_supervised"] == 39

    close = verdict(summarize(fake_results({"fixmatch-rgb": [40, 50], "full": [47, 48]})))
    assert close["margin"] == 2.5 and not close["beats_by_more_than_spread"]
    assert not close["every_seed_beats_every_seed"]
    assert not verdict(summarize(fake_results({"full": [47, 48]})))["checked"]


def test_markdown_has_the_table_1_rows_and_the_robustness_table():
    runs = fake_results({"fixmatch-rgb": [40, 44], "align": [55, 57], "full": [60, 61]})
    table = summarize(runs)
    results = {
        "table": table,
        "verdict": verdict(table),
        "machine_slug": "cpu-2c",
        "created_utc": "2026-01-01T00:00",
        "machine": {"cpu": "CPU", "cores": 2, "gpu": None},
        "wall_time_s": 600,
        "train_time_s": 500,
        "command": "python -m x",
        "config": "configs/synthetic.yaml",
        "common_overrides": [],
        "epochs": 8,
        "seeds": [0, 1],
        "dataset": {
            "classes": 5,
            "labeled_videos": 20,
            "unlabeled_videos": 200,
            "labeled_split": "given",
            "val_videos": 50,
            "views": "10 clips x 3 crops",
        },
        "runs": {
            n: {s: {"folder": r["folder"], "metrics": r["metrics"]} for s, r in by.items()} for n, by in runs.items()
        },
        "markdown": "benchmarks/results/x.md",
        "figures": {},
    }
    text = markdown(results)
    assert "| FixMatch, RGB | 42.0 ± 2.8 | 52.0 ± 2.8 | – | – | 54.1 |" in text
    assert "| both (ours) | 60.5 ± 0.7 |" in text and "| + alignment | 56.0 ± 1.4 |" in text
    assert "| grayscale | 32.0 ± 2.8 (-10.0) | 50.5 ± 0.7 (-10.0) |" in text
    assert "margin +18.5 points" in text and "beats the baseline by more than the seed spread" in text


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_benchmark_writes_results_and_resumes_without_retraining(tmp_path, capsys):
    data = tmp_path / "data"
    args = [
        "--configs",
        "fixmatch-rgb",
        "full",
        "--seeds",
        "1",
        "--root",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "results"),
        "--set",
        *tiny_overrides(data),
    ]
    assert bench_main(args) == 0
    written = sorted((tmp_path / "results").glob("accuracy-*"))
    json_path = next(p for p in written if p.suffix == ".json")
    md_path = json_path.with_suffix(".md")
    results = json.loads(json_path.read_text())
    assert set(results["table"]) == {"fixmatch-rgb", "full"} and results["epochs"] == 3
    assert results["table"]["full"]["student"]["top1"]["n"] == 1 and "teacher" in results["table"]["full"]
    for name in ("fixmatch-rgb", "full"):
        robust = results["table"][name]["robustness"]
        assert set(robust) == {"clean", *CORRUPTIONS}
        figures = [Path(f) for f in results["figures"][name]]
        assert {f.name for f in figures} >= {"frames.png", "curves.png", "confusion_student.png"}
        assert all(f.read_bytes()[:4] == b"\x89PNG" for f in figures)
    assert results["verdict"]["checked"] and results["dataset"]["val_videos"] == 6
    text = md_path.read_text()
    assert "| FixMatch, RGB |" in text and "| both (ours) |" in text and "## Robustness" in text

    run = tmp_path / "runs" / "full-seed0"
    stamps = {p: (run / p).stat().st_mtime_ns for p in ("last.pt", "metrics.json", "eval.json")}
    capsys.readouterr()
    assert bench_main(args) == 0  # everything is done: nothing is trained or evaluated again
    out = capsys.readouterr().out
    assert out.count("trained already") == 2 and out.count("evaluated already") == 2 and "$ " not in out
    assert {p: (run / p).stat().st_mtime_ns for p in stamps} == stamps


def test_dry_run_lists_the_runs_without_running_them(tmp_path, capsys):
    assert bench_main(["--dry-run", "--seeds", "2", "--configs", "fixmatch-rgb", "full", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 configs x 2 seeds = 4 runs" in out and "full-seed1: --set" in out and "train.seed=1" in out
    assert not any(tmp_path.iterdir())
