"""Shape, parameter-count, wiring and gradient checks for the R3D-18 networks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.config import load_config
from training.losses import contrastive_loss, dense_alignment_loss
from training.models import (
    R3D18,
    BasicBlock3d,
    ProjectionHead,
    TwoStreamNet,
    count_parameters,
    r3d18_from_architecture,
    r3d18_from_config,
    two_stream_from_config,
)


@pytest.fixture(scope="module")
def full_r3d18():
    torch.manual_seed(0)
    return R3D18(101).eval()


@pytest.mark.parametrize(
    "temporal_pool, frames",
    [(True, (4, 2, 1, 1)), (False, (8, 4, 2, 1))],  # METHOD.md: with pool2 / Table 4 without
)
def test_stage_shapes_full_width(temporal_pool, frames):
    torch.manual_seed(0)
    model = R3D18(101, temporal_pool=temporal_pool).eval()
    with torch.no_grad():
        feats = model.features(torch.randn(1, 3, 8, 224, 224))
    expected = [(1, c, t, s, s) for c, t, s in zip((64, 128, 256, 512), frames, (56, 28, 14, 7), strict=True)]
    assert [tuple(f.shape) for f in feats] == expected
    assert model.stage_channels == (64, 128, 256, 512)
    assert model.feature_dim == 512


def test_parameter_count_matches_paper(full_r3d18):
    n = count_parameters(full_r3d18)
    assert abs(n - 33.2e6) <= 0.05e6, n
    # the temporal pool has no parameters, so Table 4's variant is the same size
    assert count_parameters(R3D18(101, temporal_pool=False)) == n


def test_init(full_r3d18):
    m = full_r3d18
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock3d)]
    assert len(blocks) == 8
    for b in blocks:
        assert torch.all(b.bn2.weight == 1)  # zero_init_residual=False, the authors' config
        assert torch.all(b.bn1.weight == 1) and torch.all(b.bn1.bias == 0)
    assert sum(b.downsample is not None for b in blocks) == 3
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm3d)):
        assert bn.eps == 1e-3
    assert torch.all(m.fc.bias == 0)
    assert abs(m.fc.weight.std().item() - 0.01) < 1e-3
    assert m.dropout.p == 0.5


def test_zero_init_residual_option():
    model = R3D18(5, width=4, zero_init_residual=True)
    assert all(
        torch.all(b.bn2.weight == 0) and torch.all(b.bn1.weight == 1)
        for b in model.modules()
        if isinstance(b, BasicBlock3d)
    )


def test_forward_equals_classify_pool_features():
    torch.manual_seed(0)
    model = R3D18(7, width=4).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        expected = model.classify(model.pool(model.features(x)[-1]))
        assert torch.equal(model(x), expected)
        assert model(x).shape == (2, 7)
        assert torch.allclose(model.pool(model.features(x)[-1]), model.features(x)[-1].mean(dim=(2, 3, 4)))


def test_in_channels_and_bn_eps():
    model = R3D18(3, width=4, in_channels=1, bn_eps=1e-5)
    assert model.stem[0].in_channels == 1
    assert all(bn.eps == 1e-5 for bn in model.modules() if isinstance(bn, nn.BatchNorm3d))


def test_projection_head():
    torch.manual_seed(0)
    head = ProjectionHead(512)
    out = head(torch.randn(5, 512))
    assert out.shape == (5, 512)
    assert not head.net[-1].affine
    linears = [m for m in head.net if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(lin.bias is None for lin in linears)
    for lin in linears:  # the authors' ContrastHead: normal(0, 0.01)
        assert abs(lin.weight.std().item() - 0.01) < 2e-4 and abs(lin.weight.mean().item()) < 2e-4
    torch.manual_seed(0)
    default = ProjectionHead(512, init_std=0)  # PyTorch's Kaiming-uniform: bound 1/sqrt(512)
    assert abs(default.net[0].weight.abs().max().item() - 512**-0.5) < 1e-3


@pytest.mark.parametrize(
    "streams, projection, inputs, keys",
    [
        ("both", True, ("rgb", "tg"), {"logits_rgb", "feats_rgb", "emb_rgb", "logits_tg", "feats_tg", "emb_tg"}),
        ("both", False, ("rgb", "tg"), {"logits_rgb", "feats_rgb", "logits_tg", "feats_tg"}),
        ("both", True, ("rgb",), {"logits_rgb", "feats_rgb", "emb_rgb"}),
        ("rgb", True, ("rgb",), {"logits_rgb", "feats_rgb"}),
        ("tg", True, ("tg",), {"logits_tg", "feats_tg"}),
    ],
)
def test_two_stream_keys(streams, projection, inputs, keys):
    torch.manual_seed(0)
    net = TwoStreamNet(5, width=4, streams=streams, projection=projection)
    x = {name: torch.randn(2, 3, 8, 32, 32) for name in inputs}
    out = net(**x)
    assert set(out) == keys
    for name in inputs:
        assert out[f"logits_{name}"].shape == (2, 5)
        assert len(out[f"feats_{name}"]) == 4
        if f"emb_{name}" in out:
            assert out[f"emb_{name}"].shape == (2, 32)
    assert (net.student is None) == (streams == "tg")
    assert (net.teacher is None) == (streams == "rgb")
    assert (net.proj_rgb is None) == (not projection or streams != "both")


def test_two_stream_rejects_bad_config():
    with pytest.raises(ValueError, match="'flow'"):
        TwoStreamNet(5, width=4, streams="flow")
    net = TwoStreamNet(5, width=4, streams="rgb")
    with pytest.raises(ValueError, match="'tg'"):
        net(tg=torch.randn(2, 3, 8, 32, 32))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_factories_pass_every_model_key_of_the_config():
    cfg = load_config(
        None,
        [
            "model.width=4",
            "model.temporal_pool=false",
            "model.dropout=0.2",
            "model.bn_eps=0.00001",
            "model.zero_init_residual=true",
            "model.head_init_std=0",
        ],
    )
    torch.manual_seed(0)
    net = two_stream_from_config(cfg, 5)
    torch.manual_seed(0)
    by_hand = TwoStreamNet(
        5, width=4, temporal_pool=False, dropout=0.2, bn_eps=1e-5, zero_init_residual=True, head_init_std=0.0
    )
    assert _same_weights(net, by_hand)  # head_init_std=0: PyTorch's init, drawn from the same seed
    for model in (net.student, net.teacher):
        assert model.temporal_pool is None and model.dropout.p == 0.2
        assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, nn.BatchNorm3d))
        assert all(torch.all(b.bn2.weight == 0) for b in model.modules() if isinstance(b, BasicBlock3d))
    assert net.streams == "both" and net.proj_rgb is not None
    alone = two_stream_from_config(cfg, 5, streams="rgb", projection=False)
    assert alone.teacher is None and alone.proj_rgb is None
    plain = r3d18_from_config(cfg, 5)
    assert plain.temporal_pool is None and plain.dropout.p == 0.2 and plain.stem[1].eps == 1e-5


def test_the_students_initial_weights_are_a_plain_r3d18_built_from_the_same_seed():
    # benchmarks/subjects.py measures "TwoStreamNet(...).student at seed 0" as a plain R3D-18
    cfg = load_config(None, ["model.width=4"])
    torch.manual_seed(0)
    student = two_stream_from_config(cfg, 5).student
    torch.manual_seed(0)
    plain = r3d18_from_config(cfg, 5)
    torch.manual_seed(0)
    from_record = r3d18_from_architecture(
        {
            "name": "r3d18",
            "num_classes": 5,
            "width": 4,
            "temporal_pool": True,
            "dropout": 0.5,
            "bn_eps": 1e-3,
            "in_channels": 3,
        }
    )
    assert _same_weights(student, plain) and _same_weights(student, from_record)


def test_student_and_teacher_do_not_share_weights():
    net = TwoStreamNet(5, width=4)
    student_ptrs = {p.data_ptr() for p in net.student.parameters()}
    teacher_ptrs = {p.data_ptr() for p in net.teacher.parameters()}
    assert student_ptrs.isdisjoint(teacher_ptrs)
    assert not torch.equal(net.student.stem[0].weight, net.teacher.stem[0].weight)
    # only the projection heads are extra: export drops them and the teacher
    expected = 2 * count_parameters(R3D18(5, width=4)) + 2 * count_parameters(ProjectionHead(32))
    assert count_parameters(net) == expected


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = TwoStreamNet(5, width=4).train()
    # BN scales drawn away from 1, so the check does not depend on the init (with
    # zero_init_residual every residual branch's gradient would be exactly zero at step 0)
    for block in net.modules():
        if isinstance(block, BasicBlock3d):
            nn.init.uniform_(block.bn2.weight, 0.5, 1.5)
    # 64² keeps >1 value per channel in stage 4's BN (at 32² a batch of 2 would be 1×1×1)
    rgb, tg = torch.randn(2, 3, 8, 64, 64), torch.randn(2, 3, 8, 64, 64)
    labels = torch.tensor([1, 3])
    out = net(rgb=rgb, tg=tg)
    loss = (
        F.cross_entropy(out["logits_rgb"], labels)
        + F.cross_entropy(out["logits_tg"], labels)
        + dense_alignment_loss(out["feats_rgb"], out["feats_tg"])
        + contrastive_loss(out["emb_rgb"], out["emb_tg"])
    )
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
