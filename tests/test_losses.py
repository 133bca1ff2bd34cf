"""Loss functions against values computed independently (plain `math` on explicit numbers)."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.losses import (
    DistributionAlignment,
    contrastive_loss,
    dense_alignment_loss,
    pseudo_labels,
    supervised_loss,
    unlabeled_loss,
)


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _ce(row, label):
    return -math.log(_softmax(row)[label])


# ---------------------------------------------------------------- supervised / unlabeled


def test_supervised_loss():
    logits = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 4.0, -1.0]]
    labels = [0, 2, 0]
    expected = sum(_ce(r, y) for r, y in zip(logits, labels, strict=True)) / 3
    got = supervised_loss(torch.tensor(logits), torch.tensor(labels))
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_supervised_loss_half_precision_is_computed_in_float32():
    got = supervised_loss(torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.bfloat16), torch.tensor([0]))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_ce([2.0, 1.0, 0.0], 0), rel=1e-6)


def test_unlabeled_loss_divides_by_full_batch():
    logits = [[2.0, 0.0], [0.0, 1.0], [0.5, 0.5], [3.0, -1.0]]
    labels = [0, 1, 1, 1]
    mask = [1.0, 0.0, 1.0, 0.0]
    # FixMatch: masked-out clips count in the denominator (B_u = 4, not 2)
    expected = (_ce(logits[0], 0) + _ce(logits[2], 1)) / 4
    got = unlabeled_loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    none_confident = unlabeled_loss(torch.tensor(logits), torch.tensor(labels), torch.zeros(4))
    assert none_confident.item() == 0.0


# ---------------------------------------------------------------- pseudo-labels

# Row 0 separates "logits" from "probs": both pick class 0, but the fused confidence is
# 0.452 (logit average) vs 0.486 (probability average), either side of the threshold 0.47.
Z_RGB = [[4.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.1, 0.0, 0.3]]
Z_TG = [[0.0, 3.0, 2.9], [0.0, 0.0, 1.0], [2.0, 0.0, 0.0]]
THRESHOLD = 0.47


def _expected(probs_rows):
    labels = [max(range(len(p)), key=p.__getitem__) for p in probs_rows]
    mask = [1.0 if max(p) >= THRESHOLD else 0.0 for p in probs_rows]
    return labels, mask


def _fused(fusion):
    p_rgb = [_softmax(r) for r in Z_RGB]
    p_tg = [_softmax(r) for r in Z_TG]
    if fusion == "logits":
        both = [
            _softmax([(a + b) / 2 for a, b in zip(ra, rb, strict=True)]) for ra, rb in zip(Z_RGB, Z_TG, strict=True)
        ]
        return {"rgb": both, "tg": both}
    if fusion == "probs":
        both = [[(a + b) / 2 for a, b in zip(pa, pb, strict=True)] for pa, pb in zip(p_rgb, p_tg, strict=True)]
        return {"rgb": both, "tg": both}
    if fusion == "rgb":
        return {"rgb": p_rgb, "tg": p_rgb}
    if fusion == "tg":
        return {"rgb": p_tg, "tg": p_tg}
    return {"rgb": p_rgb, "tg": p_tg}


@pytest.mark.parametrize("fusion", ["logits", "probs", "rgb", "tg", "self"])
def test_pseudo_labels_fusion_modes(fusion):
    z_rgb = torch.tensor(Z_RGB, requires_grad=True)
    z_tg = torch.tensor(Z_TG, requires_grad=True)
    out = pseudo_labels(z_rgb, z_tg, fusion=fusion, threshold=THRESHOLD)
    assert set(out) == {"rgb", "tg"}
    for stream, probs_rows in _fused(fusion).items():
        labels, mask = out[stream]
        exp_labels, exp_mask = _expected(probs_rows)
        assert labels.tolist() == exp_labels
        assert mask.dtype == torch.float32
        assert mask.tolist() == exp_mask
        assert not labels.requires_grad and not mask.requires_grad


def test_pseudo_labels_modes_really_differ():
    # guards the fixture above: otherwise a mode mix-up could pass unnoticed
    masks = {
        f: pseudo_labels(torch.tensor(Z_RGB), torch.tensor(Z_TG), fusion=f, threshold=THRESHOLD)
        for f in ("logits", "probs", "rgb", "tg", "self")
    }
    assert masks["logits"]["rgb"][1][0] == 0.0 and masks["probs"]["rgb"][1][0] == 1.0
    assert masks["rgb"]["tg"][0].tolist() != masks["tg"]["tg"][0].tolist()
    assert masks["self"]["rgb"][0].tolist() != masks["self"]["tg"][0].tolist()


def test_pseudo_labels_threshold_is_inclusive():
    uniform = torch.zeros(1, 4)  # every class exactly 0.25
    _, mask = pseudo_labels(uniform, uniform, fusion="logits", threshold=0.25)["rgb"]
    assert mask.tolist() == [1.0]
    _, mask = pseudo_labels(uniform, uniform, fusion="logits", threshold=0.2500001)["rgb"]
    assert mask.tolist() == [0.0]


def test_pseudo_labels_single_stream():
    out = pseudo_labels(None, torch.tensor(Z_TG), fusion="self", threshold=THRESHOLD)
    assert set(out) == {"tg"}
    assert out["tg"][0].tolist() == _expected([_softmax(r) for r in Z_TG])[0]
    out = pseudo_labels(torch.tensor(Z_RGB), None, fusion="self")
    assert set(out) == {"rgb"}
    for fusion in ("logits", "probs", "rgb", "tg"):
        with pytest.raises(ValueError, match=repr(fusion)):
            pseudo_labels(torch.tensor(Z_RGB), None, fusion=fusion)
    with pytest.raises(ValueError, match="'mean'"):
        pseudo_labels(torch.tensor(Z_RGB), torch.tensor(Z_TG), fusion="mean")


# ---------------------------------------------------------------- dense alignment


def _two_positions():
    # (N=1, C=2, T=1, H=1, W=2): rgb vectors (1,0), (1,1); tg vectors (0,2), (1,1)
    f_rgb = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 1, 2)
    f_tg = torch.tensor([[0.0, 1.0], [2.0, 1.0]]).reshape(1, 2, 1, 1, 2)
    return f_rgb, f_tg


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("cosine", 1 - (0.0 + 1.0) / 2),  # cos 0 at position 0 (orthogonal), 1 at position 1
        ("l1", (1 + 0 + 2 + 0) / 4),
        ("l2", (1 + 0 + 4 + 0) / 4),
    ],
)
def test_alignment_kinds(kind, expected):
    f_rgb, f_tg = _two_positions()
    got = dense_alignment_loss([f_rgb], [f_tg], stages=(1,), kind=kind)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_alignment_is_over_channels_per_position():
    # scaling one position's vector leaves its cosine unchanged
    f_rgb, f_tg = _two_positions()
    f_rgb2 = f_rgb.clone()
    f_rgb2[..., 1] *= 5
    assert dense_alignment_loss([f_rgb2], [f_tg], stages=(1,)).item() == pytest.approx(0.5, abs=1e-6)


def test_alignment_stage_selection():
    angles = [0.1, 0.7, 1.2, 2.0]
    # stage s: one position per clip, 2 clips; tg vector at angle θ_s from the rgb vector
    feats_rgb, feats_tg = [], []
    for theta in angles:
        rgb = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # (N, C)
        tg = torch.tensor([[math.cos(theta), math.sin(theta)], [-math.sin(theta) * 2, math.cos(theta) * 2]])
        feats_rgb.append(rgb.reshape(2, 2, 1, 1, 1))  # (N, C, T, H, W)
        feats_tg.append(tg.reshape(2, 2, 1, 1, 1))
    for stages in [(1, 2, 3, 4), (2, 4), (3,)]:
        expected = sum(1 - math.cos(angles[s - 1]) for s in stages)
        got = dense_alignment_loss(feats_rgb, feats_tg, stages=stages)
        assert got.item() == pytest.approx(expected, abs=1e-6), stages


def test_alignment_rejects_bad_arguments():
    f_rgb, f_tg = _two_positions()
    with pytest.raises(ValueError, match="'cos'"):
        dense_alignment_loss([f_rgb], [f_tg], stages=(1,), kind="cos")
    with pytest.raises(ValueError, match="stage 2"):
        dense_alignment_loss([f_rgb], [f_tg], stages=(2,))
    with pytest.raises(ValueError, match="stage 0"):
        dense_alignment_loss([f_rgb], [f_tg], stages=(0,))


def test_alignment_half_precision_is_float32():
    f_rgb, f_tg = _two_positions()
    got = dense_alignment_loss([f_rgb.half()], [f_tg.half()], stages=(1,))
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("kind", ["cosine", "l1", "l2"])
@pytest.mark.parametrize("stop_gradient", [True, False])
def test_alignment_stop_gradient(kind, stop_gradient):
    torch.manual_seed(0)
    student, teacher = nn.Conv3d(3, 4, 3, padding=1), nn.Conv3d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 2, 4, 4)
    f_rgb, f_tg = student(x), teacher(x)
    f_rgb.retain_grad()
    f_tg.retain_grad()
    dense_alignment_loss([f_rgb], [f_tg], stages=(1,), kind=kind, stop_gradient=stop_gradient).backward()
    assert torch.any(f_rgb.grad != 0) and torch.any(student.weight.grad != 0)
    if stop_gradient:
        assert f_tg.grad is None and teacher.weight.grad is None and teacher.bias.grad is None
    else:
        assert torch.any(f_tg.grad != 0) and torch.any(teacher.weight.grad != 0)


# ---------------------------------------------------------------- contrastive (InfoNCE)


def _info_nce_reference(rgb, tg, tau):
    """Straightforward loop: normalize, cosine matrix S[i][j] = <rgb_i, tg_j>, CE both ways."""

    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    q_rgb, q_tg = [unit(v) for v in rgb], [unit(v) for v in tg]
    b = len(q_rgb)
    sim = [[sum(a * c for a, c in zip(q_rgb[i], q_tg[j], strict=True)) for j in range(b)] for i in range(b)]
    rgb_to_tg = sum(_ce([sim[i][j] / tau for j in range(b)], i) for i in range(b)) / b
    tg_to_rgb = sum(_ce([sim[j][i] / tau for j in range(b)], i) for i in range(b)) / b
    return (rgb_to_tg + tg_to_rgb) / 2


@pytest.mark.parametrize("tau", [0.5, 0.1, 1.0])
def test_contrastive_hand_computed(tau):
    # unnormalized on purpose: the loss must L2-normalize; S = [[1, 1/√2], [0, 1/√2]]
    rgb, tg = [[3.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 1.0]]
    s = 1 / math.sqrt(2)
    closed_form = 0.5 * (
        (
            -1 / tau
            + math.log(math.exp(1 / tau) + math.exp(s / tau))
            - s / tau
            + math.log(math.exp(0) + math.exp(s / tau))
        )
        / 2
        + (
            -1 / tau
            + math.log(math.exp(1 / tau) + math.exp(0))
            - s / tau
            + math.log(math.exp(s / tau) + math.exp(s / tau))
        )
        / 2
    )
    assert _info_nce_reference(rgb, tg, tau) == pytest.approx(closed_form)
    got = contrastive_loss(torch.tensor(rgb), torch.tensor(tg), temperature=tau)
    assert got.item() == pytest.approx(closed_form, rel=1e-6)


def test_contrastive_random_against_loop_and_symmetric():
    g = torch.Generator().manual_seed(3)
    rgb, tg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    expected = _info_nce_reference(rgb.tolist(), tg.tolist(), 0.2)
    assert contrastive_loss(rgb, tg, temperature=0.2).item() == pytest.approx(expected, rel=1e-5)
    # symmetric objective: swapping the modalities gives the same loss
    assert contrastive_loss(tg, rgb, temperature=0.2).item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_gradients_reach_both_modalities():
    rgb = torch.randn(4, 8, requires_grad=True)
    tg = torch.randn(4, 8, requires_grad=True)
    contrastive_loss(rgb, tg).backward()
    assert torch.any(rgb.grad != 0) and torch.any(tg.grad != 0)


# ---------------------------------------------------------------- distributed (2 CPU processes)


class _PairEmbed(nn.Module):
    """One small Linear per modality, standing in for the two projection heads."""

    def __init__(self):
        super().__init__()
        self.rgb = nn.Linear(6, 4)
        self.tg = nn.Linear(6, 4)

    def forward(self, x_rgb, x_tg):
        return self.rgb(x_rgb), self.tg(x_tg)


def _ddp_worker(rank, world_size, init_file, state, x_rgb, x_tg, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = _PairEmbed()
        model.load_state_dict(state)
        ddp = DistributedDataParallel(model)
        per_rank = x_rgb.shape[0] // world_size
        local = slice(rank * per_rank, (rank + 1) * per_rank)
        emb_rgb, emb_tg = ddp(x_rgb[local], x_tg[local])
        loss = contrastive_loss(emb_rgb, emb_tg, temperature=0.5)
        loss.backward()  # DDP averages the gradients over the two processes here
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        torch.save({"loss": loss.detach(), "grads": grads}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()  # neither process tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_contrastive_ddp_matches_single_process(tmp_path):
    world_size, batch = 2, 6
    torch.manual_seed(0)
    model = _PairEmbed()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x_rgb, x_tg = torch.randn(batch, 6), torch.randn(batch, 6)

    mp.spawn(
        _ddp_worker,
        args=(world_size, str(tmp_path / "init"), state, x_rgb, x_tg, str(tmp_path)),
        nprocs=world_size,
        join=True,
    )

    emb_rgb, emb_tg = model(x_rgb, x_tg)
    full = contrastive_loss(emb_rgb, emb_tg, temperature=0.5)
    full.backward()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]

    mean_loss = sum(r["loss"] for r in results) / world_size
    assert mean_loss.item() == pytest.approx(full.item(), abs=1e-6)
    for name, p in model.named_parameters():
        for r in results:  # DDP leaves the same averaged gradient on every rank
            torch.testing.assert_close(r["grads"][name], p.grad, atol=1e-6, rtol=0)


# --- distribution alignment of the pseudo-labels (loss.dist_align) ---------------------------


def test_dist_align_hand_computed():
    # target (1/2, 1/2); momentum 0.5: running = 0.5 (0.5, 0.5) + 0.5 (0.8, 0.2) = (0.65, 0.35)
    da = DistributionAlignment(torch.tensor([1.0, 1.0]), momentum=0.5)
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]], dtype=torch.float64)
    out = da("rgb", probs)
    for row, (a, b) in zip(out.tolist(), [(0.9, 0.1), (0.7, 0.3)], strict=True):
        a, b = a * 0.5 / 0.65, b * 0.5 / 0.35
        assert row == pytest.approx([a / (a + b), b / (a + b)], abs=1e-12)
    assert da.running["rgb"].tolist() == pytest.approx([0.65, 0.35], abs=1e-12)
    # a second batch moves the running mean on from there, not from the target
    da("rgb", torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert da.running["rgb"].tolist() == pytest.approx([0.575, 0.425], abs=1e-12)
    assert "tg" not in da.running  # one running mean per stream


def test_dist_align_target_from_labels():
    da = DistributionAlignment.from_labels([0, 0, 2, 2, 2, 2], 3)
    # class 1 has no labeled video: half a video, so that it can still be predicted
    assert da.target.tolist() == pytest.approx([2 / 6.5, 0.5 / 6.5, 4 / 6.5], abs=1e-12)


def test_dist_align_undoes_a_collapse_onto_one_class():
    # most unlabeled clips called class 0 with 0.85: without alignment they all pass 0.8 as class 0
    logits = torch.log(torch.tensor([[0.85, 0.15]] * 6 + [[0.1, 0.9]] * 2))
    labels, mask = pseudo_labels(logits, None, fusion="self", threshold=0.8)["rgb"]
    assert labels.tolist() == [0] * 6 + [1] * 2 and mask.tolist() == [1.0] * 8
    da = DistributionAlignment(torch.ones(2), momentum=0.0)  # running = this batch's mean
    labels, mask = pseudo_labels(logits, None, fusion="self", threshold=0.8, dist_align=da)["rgb"]
    # mean (0.6625, 0.3375) against (0.5, 0.5): a class-0 row becomes 0.85 * 0.5 / 0.6625 against
    # 0.15 * 0.5 / 0.3375, i.e. 0.743, under the threshold; the class-1 rows rise to 0.946
    a, b = 0.85 / 0.6625, 0.15 / 0.3375
    assert a / (a + b) == pytest.approx(0.7427, abs=1e-4)
    assert mask.tolist() == [0.0] * 6 + [1.0] * 2 and labels[6:].tolist() == [1, 1]


def test_dist_align_fused_streams_share_the_alignment():
    z_rgb, z_tg = torch.randn(5, 3), torch.randn(5, 3)
    da = DistributionAlignment(torch.ones(3), momentum=0.9)
    out = pseudo_labels(z_rgb, z_tg, fusion="logits", threshold=0.0, dist_align=da)
    assert torch.equal(out["rgb"][0], out["tg"][0])
    fused = torch.softmax((z_rgb + z_tg) / 2, dim=1).double()
    assert set(da.running) == {"fused"}  # aligned once, not once per stream
    torch.testing.assert_close(da.running["fused"], 0.9 * torch.full((3,), 1 / 3).double() + 0.1 * fused.mean(0))


def test_dist_align_state_continues_exactly():
    torch.manual_seed(0)
    batches = [torch.softmax(torch.randn(4, 3), dim=1) for _ in range(6)]
    straight = DistributionAlignment(torch.ones(3), momentum=0.9)
    outs = [straight("tg", b) for b in batches]
    first = DistributionAlignment(torch.ones(3), momentum=0.9)
    for b in batches[:3]:
        first("tg", b)
    resumed = DistributionAlignment(torch.ones(3), momentum=0.9)
    resumed.load_state_dict(first.state_dict())
    for b, expected in zip(batches[3:], outs[3:], strict=True):
        assert torch.equal(resumed("tg", b), expected)


def test_dist_align_rejects_bad_arguments():
    with pytest.raises(ValueError, match="momentum"):
        DistributionAlignment(torch.ones(3), momentum=1.0)
    with pytest.raises(ValueError, match="positive target"):
        DistributionAlignment(torch.tensor([1.0, 0.0]))


def _dist_align_worker(rank, world_size, init_file, batches, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        da = DistributionAlignment(torch.ones(3), momentum=0.5)
        for b in batches:  # each process sees its half of every batch
            half = b.shape[0] // world_size
            out = da("rgb", b[rank * half : (rank + 1) * half])
        torch.save({"running": da.running["rgb"], "out": out}, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.timeout(60)
def test_dist_align_ddp_matches_single_process(tmp_path):
    torch.manual_seed(0)
    batches = [torch.softmax(torch.randn(6, 3), dim=1).double() for _ in range(3)]
    mp.spawn(_dist_align_worker, args=(2, str(tmp_path / "init"), batches, str(tmp_path)), nprocs=2, join=True)
    single = DistributionAlignment(torch.ones(3), momentum=0.5)
    for b in batches:
        out = single("rgb", b)
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["running"], single.running["rgb"], rtol=0, atol=1e-12)
        torch.testing.assert_close(result["out"], out[rank * 3 : (rank + 1) * 3], rtol=0, atol=1e-12)
