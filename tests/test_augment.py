import pytest
import torch

from training.augment import RANDAUGMENT_OPS, _op, make_views, op_strengths, strong_augment
from training.views import InputSpec


@pytest.mark.parametrize("preset", ["mmaction", "fixmatch"])
def test_every_op_keeps_shape_and_range(preset):
    x = torch.rand(4, 3, 24, 24)
    for magnitude in (0, 9, 10):
        for sign in (1.0, -1.0, None):
            for name in RANDAUGMENT_OPS:
                y = _op(name, x, op_strengths(preset, magnitude), sign)
                assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name


def test_one_draw_per_clip_same_on_every_frame():
    torch.manual_seed(0)
    frame = torch.rand(3, 1, 24, 24) * 255
    clips = frame.expand(6, 3, 8, 24, 24).contiguous()  # 6 clips, each of 8 identical frames
    out = strong_augment(clips, num_ops=2, magnitude=10)
    assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-4)  # same transform on all frames
    assert len({round(float(out[b].mean()), 3) for b in range(6)}) > 1  # but drawn per clip


def test_rgb_and_tg_get_independent_strong_draws():
    torch.manual_seed(1)
    frames = torch.full((4, 2, 3, 4, 24, 24), 100, dtype=torch.uint8)
    frames[:, 1] = 60  # TG is then a constant 147.5; RGB a constant 100
    v = make_views(frames, InputSpec(), strong=True)
    assert set(v) == {"rgb", "tg", "rgb_strong", "tg_strong"}
    assert v["rgb_strong"].shape == v["tg_strong"].shape == (4, 3, 4, 24, 24)
    # weak views are only normalized
    assert torch.allclose(v["rgb"][:, 0], torch.full_like(v["rgb"][:, 0], (100 - 123.675) / 58.395))
    rgb_change = (v["rgb_strong"] - v["rgb"]).abs().flatten(1).mean(1) > 1e-3
    tg_change = (v["tg_strong"] - v["tg"]).abs().flatten(1).mean(1) > 1e-3
    assert rgb_change.any() and tg_change.any()
