"""The paper configs pinned to the authors' code (lambert-x/video-semisup at 17cc13c): the values
below are computed by hand from their configs, not from this project's code (docs/RECIPE.md)."""

from __future__ import annotations

import math
from pathlib import Path

import kornia.enhance as KE
import numpy as np
import pytest
import torch

from tests.layouts import make_ucf101_tree, write_videossl_list
from training.augment import _op, op_strengths
from training.config import load_config
from training.data import VideoItem, resolve_splits
from training.models import BasicBlock3d, two_stream_from_config
from training.schedule import Schedule, learning_rate, resolve_schedule, scaled_lr, steps_per_pass

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PAPER_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem != "synthetic" and not p.stem.startswith("own_data"))


# ----------------------------------------------------------------------------- lr schedule
# UCF-101 (configs/ucf101_main/*.py): lr 0.2 at 8 GPUs, CosineAnnealing(min_lr=0) by epoch over
# 180 epochs, warmup='linear', warmup_ratio=0.1, warmup_by_epoch, warmup_iters=30:
#   lr(e) = 0.2 * 0.5 * (1 + cos(pi * e / 180)) * (1 - (1 - e / 30) * 0.9)   for e < 30
UCF101_LR_AT_EPOCH = {0: 0.02, 5: 0.04990487, 10: 0.07939231, 20: 0.13577848, 30: 0.18660254, 100: 0.08263518}


@pytest.mark.parametrize("epoch", sorted(UCF101_LR_AT_EPOCH))
def test_ucf101_lr_at_the_start_of_an_epoch_is_the_authors(epoch):
    cfg = load_config(CONFIGS / "ucf101_20.yaml")
    steps = 238  # 9,537 videos / (8 GPUs x 5 clips) per step
    assert steps_per_pass(9537, 8, cfg) == steps
    schedule = resolve_schedule(cfg, 9537, 8)
    assert (schedule.budget, schedule.steps_per_epoch, schedule.epochs, schedule.warmup_iters) == (
        "epochs",
        steps,
        180,
        30 * steps,
    )
    base = scaled_lr(cfg, world_size=8)
    assert base == pytest.approx(0.2)
    lr = learning_rate(epoch * steps, base_lr=base, schedule=schedule, cfg=cfg)
    assert lr == pytest.approx(UCF101_LR_AT_EPOCH[epoch], abs=1e-7)


def test_warm_up_ramps_per_iteration_and_the_cosine_steps_per_epoch():
    cfg = load_config(CONFIGS / "ucf101_20.yaml")
    schedule = Schedule("epochs", steps_per_epoch=10, epochs=180, warmup_iters=300, sup_warmup_epochs=30)
    lr = [learning_rate(it, base_lr=0.2, schedule=schedule, cfg=cfg) for it in range(0, 400)]
    for e in range(30):  # within a warm-up epoch: rising every step (the ramp is per iteration)
        assert all(a < b for a, b in zip(lr[e * 10 : e * 10 + 10], lr[e * 10 + 1 : e * 10 + 10], strict=False))
    assert lr[300] == pytest.approx(0.18660254)  # the warm-up ends on the regular (cosine) lr
    assert lr[300:310] == [lr[300]] * 10  # after it: constant within an epoch (by_epoch cosine)
    assert lr[309] > lr[310]


@pytest.mark.parametrize(
    "name, warmup, epochs, batch, lr_at_8_gpus",
    [
        ("ucf101_5", 30, 180, 5, 0.2),
        ("ucf101_10", 30, 180, 5, 0.2),
        ("ucf101_20", 30, 180, 5, 0.2),
        ("ucf101_50", 30, 180, 5, 0.2),
        ("hmdb51_40", 60, 360, 5, 0.2),
        ("hmdb51_50", 60, 360, 5, 0.2),
        ("hmdb51_60", 60, 360, 5, 0.2),
        ("k400_1", 10, 45, 8, 0.2),
        ("k400_10", 15, 90, 8, 0.2),
    ],
)
def test_each_paper_config_has_the_authors_schedule_and_batch(name, warmup, epochs, batch, lr_at_8_gpus):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    o = cfg.optim
    assert (o.warmup_epochs, o.sup_warmup_epochs, o.epochs, o.schedule) == (warmup, warmup, epochs, "mmcv")
    assert (o.batch_labeled, o.batch_unlabeled, o.warmup_start_factor) == (batch, batch, 0.1)
    assert scaled_lr(cfg, world_size=8) == pytest.approx(lr_at_8_gpus)


def test_the_cpu_default_keeps_the_schedule_it_was_tuned_with():
    cfg = load_config(CONFIGS / "synthetic.yaml")
    assert cfg.optim.schedule == "warmup_then_cosine"
    # its 160 unlabeled videos in batches of 8: the 60 epochs of 20 steps it was tuned with, the
    # ramp over 5 epochs, the unlabeled loss from epoch 10, then a cosine over the remaining 55
    schedule = resolve_schedule(cfg, 160, 1)
    assert (
        schedule.budget,
        schedule.steps_per_epoch,
        schedule.epochs,
        schedule.warmup_iters,
        schedule.sup_warmup_epochs,
    ) == ("steps", 20, 60, 100, 10)
    assert learning_rate(0, base_lr=1.0, schedule=schedule, cfg=cfg) == pytest.approx(0.1)
    assert learning_rate(100, base_lr=1.0, schedule=schedule, cfg=cfg) == pytest.approx(1.0)
    assert learning_rate(100 + 550, base_lr=1.0, schedule=schedule, cfg=cfg) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- strong augmentation
# MMAction2's Imgaug.default_transforms (mmaction/datasets/pipelines/augmentations.py:374-415 at
# 17cc13c), cur_magnitude 9 of 10: each op's strength by hand.
def _image(h=100, w=100, value=0.0):
    return torch.full((1, 3, h, w), value)


def test_paper_configs_use_the_authors_strong_view():
    for path in PAPER_CONFIGS:
        cfg = load_config(path)
        assert (cfg.strong.preset, cfg.strong.magnitude, cfg.strong.num_ops) == ("mmaction", 9.0, 2), path.stem


def test_strengths_at_the_default_magnitude():
    s = op_strengths("mmaction", 9.0)
    assert math.degrees(math.atanh(s.shear)) == pytest.approx(17.19 * 0.9)  # 15.47 degrees (imgaug: tanh)
    assert s.translate == pytest.approx(0.18) and s.rotate == pytest.approx(27.0)
    assert s.posterize_bits == 3  # max(1, int(4 * 0.9))
    assert s.solarize_threshold * 255 == pytest.approx(230.4)  # 256 * 0.9
    assert s.enhance == pytest.approx((1.72,))  # 1.8 * 0.9 + 0.1, never below 1
    assert s.cutout == pytest.approx(0.18) and s.cutout_fill * 255 == pytest.approx(128) and s.affine_fill == 0.0


def test_each_op_at_the_default_magnitude_moves_pixels_as_much_as_the_authors():
    s = op_strengths("mmaction", 9.0)
    # translate_x: a column at x = 50 moves by 0.18 x 100 px
    x = _image()
    x[..., :, 50] = 1.0
    assert int(_op("translate_x", x, s, 1.0)[0, 0].sum(0).argmax()) == 68
    # shear_x: a point 40 px below the centre moves sideways by tanh(15.47 deg) x 40 = 10.5 px
    x = _image()
    x[..., 90, 50] = 1.0
    y = _op("shear_x", x, s, 1.0)[0, 0, 90]
    assert float((y * torch.arange(100.0)).sum() / y.sum()) - 50 == pytest.approx(40 * s.shear, abs=0.5)
    # rotate: a point 40 px right of the centre turns by 27 degrees
    x = _image()
    x[..., 50, 90] = 1.0
    y = _op("rotate", x, s, 1.0)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(100.0), torch.arange(100.0), indexing="ij")
    cy, cx = float((y * ys).sum() / y.sum()) - 50, float((y * xs).sum() / y.sum()) - 50
    assert abs(math.degrees(math.atan2(cy, cx))) == pytest.approx(27.0, abs=1.0)
    # posterize: 3 bits kept (multiples of 32)
    x = torch.arange(256.0).view(1, 1, 16, 16).expand(1, 3, 16, 16) / 255
    assert set((_op("posterize", x, s) * 255).round().unique().tolist()) == {32.0 * k for k in range(8)}
    # solarize: values from 231 up are inverted, 230 is not
    x = torch.tensor([230.0, 231.0, 255.0]).view(1, 1, 1, 3).expand(1, 3, 1, 3) / 255
    assert (_op("solarize", x, s)[0, 0, 0] * 255).round().tolist() == [230.0, 24.0, 0.0]
    # brightness, contrast, colour, sharpness: factor 1.72 whichever the sign
    for sign in (1.0, -1.0):
        assert float(_op("brightness", _image(value=0.4), s, sign).mean()) == pytest.approx(0.4 * 1.72)
        x = _image(value=0.3)
        x[..., 50:] = 0.5
        y = _op("contrast", x, s, sign)
        assert float(y[0, 0, 0, 0]) == pytest.approx(0.4 - 1.72 * 0.1, abs=1e-6)  # left half, mean 0.4
        assert float(y[0, 0, 0, 99]) == pytest.approx(0.4 + 1.72 * 0.1, abs=1e-6)
        x = torch.rand(2, 3, 16, 16)
        assert torch.allclose(_op("sharpness", x, s, sign), KE.sharpness(x, 1.72).clamp(0, 1))
        grey = KE.adjust_saturation(x, 0.0)
        assert torch.allclose(_op("color", x, s, sign), (grey + 1.72 * (x - grey)).clamp(0, 1), atol=1e-6)
    # cutout: one square of 0.18 x 224 = 40 px (41 rows and columns: centred on a pixel), grey 128
    torch.manual_seed(0)
    areas = [int((_op("cutout", _image(224, 224, 1.0), s) == 128 / 255)[0, 0].sum()) for _ in range(40)]
    assert max(areas) == 41 * 41


def test_the_cpu_default_keeps_its_harsher_strong_view():
    cfg = load_config(CONFIGS / "synthetic.yaml")
    s = op_strengths(cfg.strong.preset, cfg.strong.magnitude)
    assert (cfg.strong.preset, cfg.strong.magnitude) == ("fixmatch", 10.0)
    assert s.enhance == pytest.approx((0.1, 1.9)) and s.posterize_bits == 4 and s.solarize_threshold == 0.5
    assert s.translate == pytest.approx(0.3) and int(s.cutout * 224) == 112 and s.affine_fill == 0.5


# ----------------------------------------------------------------------------- init
def test_zero_init_residual_is_off_and_heads_start_at_normal_0_01():
    # configs/ucf101_main/*.py:19 zero_init_residual=False; ContrastHead init_std=0.01 (normal_init)
    for path in PAPER_CONFIGS:
        cfg = load_config(path)
        assert cfg.model.zero_init_residual is False and cfg.model.head_init_std == 0.01, path.stem
    cfg = load_config(CONFIGS / "ucf101_20.yaml", ["model.width=8"])  # the paper's init at a small width
    torch.manual_seed(0)
    net = two_stream_from_config(cfg, 101)
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock3d)]
    assert len(blocks) == 16 and all(torch.all(b.bn2.weight == 1) for b in blocks)
    for head in (net.proj_rgb, net.proj_tg):
        for lin in (m for m in head.modules() if isinstance(m, torch.nn.Linear)):
            assert lin.weight.std().item() == pytest.approx(0.01, abs=5e-4)


# ----------------------------------------------------------------------------- labeled splits
def test_a_videossl_list_loads_with_its_imbalance_intact(tmp_path):
    """configs/ucf101_main/*.py:76 reads VideoSSL's list as is: imbalanced (UCF-101 5 %: 100 of 101
    classes, 1-11 videos each); no class is topped up or dropped."""
    classes = ["ApplyEyeMakeup", "Basketball", "HandstandPushups", "YoYo"]
    entries = make_ucf101_tree(tmp_path, classes, train_per_class=6, videos=False)["train"]
    chosen = [e for e in entries if e.startswith("ApplyEyeMakeup/")][:3] + entries[6:7] + entries[18:20]
    write_videossl_list(tmp_path / "videossl" / "ucf101_train_5_percent_labeled_split_1_rawframes.txt", chosen, classes)
    cfg = load_config(
        CONFIGS / "ucf101_5.yaml",
        [f"data.root={tmp_path}", "data.labeled_list=videossl/ucf101_train_5_percent_labeled_split_1_rawframes.txt"],
    )
    splits = resolve_splits(cfg.data, None)
    counts = [sum(it.label == c for it in splits.labeled) for c in range(len(classes))]
    assert counts == [3, 1, 0, 2]
    assert all((tmp_path / it.path).is_file() and it.path.startswith("UCF-101/") for it in splits.labeled)
    assert splits.source.startswith("given list") and not splits.missing
    assert len(splits.unlabeled) == 24  # the unlabeled set is the whole training split


# ----------------------------------------------------------------------------- PreciseBN
def _precise_bn_rank(rank: int, world: int, port: int, root: str, items: list, out: str) -> None:
    import json

    import torch.distributed as dist

    from training.distributed import DistInfo, gather_objects
    from training.evaluate import precise_bn, precise_bn_loader
    from training.models import R3D18
    from training.views import InputSpec, normalize

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    info = DistInfo(rank=rank, world_size=world)
    spec = InputSpec(clip_len=4, interval=2, short_side=32, crop_size=28)
    loader = precise_bn_loader([VideoItem(*it) for it in items], Path(root), spec, batch_size=2, seed=0, info=info)
    seen = [b["index"].tolist() for b in loader]
    torch.manual_seed(0)
    model = R3D18(3, width=4)
    used = precise_bn(
        model,
        (normalize(b["views"][:, 0].float(), spec) for b in loader),
        num_batches=2,
        device=torch.device("cpu"),
        info=info,
    )
    stats = model.stem[1].running_mean.tolist()
    everything = gather_objects({"seen": seen, "used": used, "stats": stats}, info)
    if rank == 0:
        Path(out).write_text(json.dumps(everything))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_precise_bn_batches_differ_across_two_ranks(tmp_path):
    """The authors build PreciseBN's loader with dist=True (a DistributedSampler): each GPU
    recomputes the statistics on its own clips (200 batches of 5 each: 8,000 clips on 8 GPUs)."""
    import json
    import socket

    import torch.multiprocessing as mp

    from tests.layouts import tiny_video

    items = []
    for i in range(8):
        tiny_video(tmp_path / f"v{i}.mp4", seed=i)
        items.append((f"v{i}.mp4", i % 3))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    mp.spawn(_precise_bn_rank, args=(2, port, str(tmp_path), items, str(out)), nprocs=2, join=True)
    ranks = json.loads(out.read_text())
    first, second = ({i for batch in r["seen"] for i in batch} for r in ranks)
    assert len(first) == len(second) == 4 and not first & second  # distinct clips, 4 each
    assert ranks[0]["used"] == ranks[1]["used"] == 2
    assert ranks[0]["stats"] == pytest.approx(ranks[1]["stats"])  # then averaged over the ranks


def _precise_bn_one_rank_without_batches(rank: int, world: int, port: int, out: str) -> None:
    import json

    import torch.distributed as dist

    from training.distributed import DistInfo, gather_objects
    from training.evaluate import precise_bn
    from training.models import R3D18

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    info = DistInfo(rank=rank, world_size=world)
    torch.manual_seed(0)
    model = R3D18(3, width=4)
    model.stem[1].running_mean.fill_(5.0 + rank)  # each process's statistics of training
    clips = torch.randn(2, 3, 4, 28, 28, generator=torch.Generator().manual_seed(1))
    batches = [clips] if rank == 0 else []  # rank 1: every clip of its share unreadable
    used = precise_bn(model, iter(batches), num_batches=4, device=torch.device("cpu"), info=info)
    alone = R3D18(3, width=4)
    alone.load_state_dict(model.state_dict())
    precise_bn(alone, iter([clips]), num_batches=4, device=torch.device("cpu"))  # one process, same batch
    everything = gather_objects(
        {"used": used, "stats": model.stem[1].running_mean.tolist(), "alone": alone.stem[1].running_mean.tolist()},
        info,
    )
    if rank == 0:
        Path(out).write_text(json.dumps(everything))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_precise_bn_with_a_process_that_has_no_batch_takes_the_others_statistics(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    mp.spawn(_precise_bn_one_rank_without_batches, args=(2, port, str(out)), nprocs=2, join=True)  # no hang
    first, second = json.loads(out.read_text())
    assert (first["used"], second["used"]) == (1, 0)
    assert first["stats"] == pytest.approx(first["alone"])  # rank 0's own batch, not reset by rank 1
    assert second["stats"] == pytest.approx(first["stats"])


def test_precise_bn_on_fewer_videos_than_a_batch_uses_them_and_with_none_keeps_the_statistics(tmp_path):
    from tests.layouts import tiny_video
    from training.evaluate import precise_bn, precise_bn_batch_size, precise_bn_loader
    from training.models import R3D18
    from training.views import InputSpec, normalize

    spec = InputSpec(clip_len=4, interval=2, short_side=32, crop_size=28)
    items = [VideoItem(f"v{i}.mp4", 0) for i in range(3)]
    for i in range(3):
        tiny_video(tmp_path / f"v{i}.mp4", seed=i)
    assert precise_bn_batch_size(8, 3) == 3 and precise_bn_batch_size(8, 3, world_size=2) == 1
    assert precise_bn_batch_size(8, 20) == 8
    torch.manual_seed(0)
    model = R3D18(3, width=4)
    bn = model.stem[1]
    bn.running_mean.fill_(5.0)  # as if trained
    bn.running_var.fill_(7.0)

    # no batch at all: the statistics of training stay (they used to be reset to 0 and 1)
    assert precise_bn(model, iter([]), num_batches=10, device=torch.device("cpu")) == 0
    assert torch.all(bn.running_mean == 5.0) and torch.all(bn.running_var == 7.0)

    # 3 videos against a batch of 8 asked: one batch of all 3 (a batch of 8 would drop them all)
    loader = precise_bn_loader(items, tmp_path, spec, batch_size=precise_bn_batch_size(8, 3), seed=0)
    used = precise_bn(
        model, (normalize(b["views"][:, 0].float(), spec) for b in loader), num_batches=10, device=torch.device("cpu")
    )
    assert used == 1 and not torch.allclose(bn.running_mean, torch.full_like(bn.running_mean, 5.0))


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.stem for p in PAPER_CONFIGS])
def test_precise_bn_precision_and_test_rule_of_the_paper_configs(path):
    t = load_config(path).train
    # precise_bn = dict(num_iters=200 (HMDB-51: 120), interval=5); videos_per_gpu_precise_bn=5
    assert (t.precise_bn, t.precise_bn_every, t.precise_bn_batch_size) == (True, 5, 5)
    assert t.precise_bn_batches == (120 if path.stem.startswith("hmdb51") else 200)
    assert t.amp is False  # no fp16/bf16 in the authors' configs: fp32
    assert t.forward_strong_in_warmup is True and t.test_average == "score"  # test_cfg average_clips='score'


# ----------------------------------------------------------------------------- test-time averaging
def test_the_test_averages_raw_scores_as_the_authors_and_offers_mean_softmax():
    from training.views import average_view_scores

    # one view very sure of class 0, two fairly sure of class 1: the rules disagree
    logits = torch.tensor([[9.0, 0.0], [0.0, 3.0], [0.0, 3.0]])
    assert average_view_scores(logits, "score").tolist() == [3.0, 2.0]  # average_clips='score'
    assert int(average_view_scores(logits, "score").argmax()) == 0
    probs = average_view_scores(logits, "prob")
    assert probs.sum() == pytest.approx(1.0) and int(probs.argmax()) == 1  # mean softmax picks class 1
    assert average_view_scores(logits).tolist() == probs.tolist()  # the server's default: probabilities
    assert load_config(CONFIGS / "synthetic.yaml").train.test_average == "prob"


# ----------------------------------------------------------------------------- slow TG
def test_slow_tg_frames_are_spread_over_the_clip_as_the_authors():
    """custom_temporal.py:156-158: frame_inds_diff = around(linspace(inds[0], inds[-1], clip_len + 1));
    at 8 frames x interval 8 the TG frames are 7 apart and stay inside the clip's span."""
    from training.video import tg_frame_pairs

    idx = 10 + 8 * np.arange(8)  # a clip: frames 10, 18, ..., 66
    first, second = tg_frame_pairs(idx, stride=7, num_frames=300, spread=True)
    assert first.tolist() == [10 + 7 * k for k in range(8)] and second.tolist() == [17 + 7 * k for k in range(8)]
    first, second = tg_frame_pairs(idx, stride=7, num_frames=300, spread=False)  # tg.slow=offset
    assert first.tolist() == idx.tolist() and second.tolist() == (idx + 7).tolist()
    first, second = tg_frame_pairs(idx, stride=1, num_frames=300, spread=True)  # fast TG: unaffected
    assert (second - first).tolist() == [1] * 8
    assert load_config(None, ["tg.stride=7"]).tg.slow == "spread"


# ----------------------------------------------------------------------------- every paper config runs
@pytest.fixture(scope="module")
def ucf_like_tree(tmp_path_factory) -> Path:
    """Lists-format data every paper config can read (classes.txt, lists/{train,val}.txt)."""
    root = tmp_path_factory.mktemp("paper")
    make_ucf101_tree(root, ["ApplyEyeMakeup", "Basketball", "YoYo"], train_per_class=6)  # K400: 18 // 8 = 2 steps
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=[p.stem for p in PAPER_CONFIGS])
def test_each_paper_config_runs_two_steps_end_to_end_on_the_cpu(path, ucf_like_tree, tmp_path):
    """The config's recipe as it is (batch, schedule, strong view, init, warm-ups, PreciseBN, test
    rule) at a tiny size: 2 steps, PreciseBN, quick validation and the test, on 2 CPU cores."""
    import json

    from tests.tinyrun import tiny_overrides
    from training.train import main as train_main

    small = [
        o
        for o in tiny_overrides(
            ucf_like_tree,
            **{
                "optim.epochs": 1,
                "train.max_steps_per_epoch": 2,
                "train.precise_bn_batches": 1,
                "train.precise_bn_batch_size": 2,
            },
        )
        if not o.startswith(
            (
                "data.root",
                "data.synthetic",
                "optim.batch",
                "optim.warmup_epochs",
                "optim.sup_warmup",
                "optim.steps",
                "optim.warmup_steps",
            )
        )
    ]
    run = tmp_path / "run"
    assert (
        train_main(["--config", str(path), "--data-root", str(ucf_like_tree), "--run", str(run), "--set", *small]) == 0
    )
    cfg = load_config(path)
    log = (run / "train.log").read_text()
    assert (
        "2 steps/epoch x 1 epochs = 2 steps (budget in epochs); "
        f"total batch {cfg.optim.batch_labeled + cfg.optim.batch_unlabeled}" in log
    )
    assert "PreciseBN: student BatchNorm statistics recomputed over 1 batches" in log
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["score_average"] == "score" and metrics["student"]["videos"] == 3
    saved = load_config(run / "config.yaml")
    assert (saved.strong.preset, saved.optim.schedule, saved.model.zero_init_residual) == ("mmaction", "mmcv", False)
