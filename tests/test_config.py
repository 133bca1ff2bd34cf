from pathlib import Path

import pytest

from training.config import ConfigError, diff_configs, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_the_paper_settings():
    cfg = load_config()
    assert (cfg.input.clip_len, cfg.input.interval, cfg.input.crop_size, cfg.input.short_side) == (8, 8, 224, 256)
    assert (cfg.loss.threshold, cfg.loss.temperature, cfg.loss.fusion, cfg.loss.align) == (0.3, 0.5, "logits", "cosine")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.clip_grad) == (0.2, 0.9, 1e-4, 40.0)
    assert cfg.model.width == 64 and cfg.model.temporal_pool and cfg.model.bn_eps == 1e-3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_reach_every_ablation_switch():
    cfg = load_config(
        None,
        [
            "loss.align=off",
            "loss.contrast=off",
            "loss.fusion=probs",
            "loss.stop_gradient=off",
            "loss.align_stages=[3,4]",
            "loss.temperature=0.1",
            "tg.stride=7",
            "model.temporal_pool=false",
            "optim.warmup_epochs=0",
            "optim.sup_warmup_epochs=0",
            "train.precise_bn=off",
        ],
    )
    assert cfg.loss.align == "off" and cfg.loss.contrast is False and cfg.loss.fusion == "probs"
    assert cfg.loss.stop_gradient is False and cfg.loss.align_stages == [3, 4] and cfg.loss.temperature == 0.1
    assert cfg.tg.stride == 7 and cfg.model.temporal_pool is False and cfg.train.precise_bn is False
    assert load_config(None, ["loss.align=l1"]).loss.align == "l1"


@pytest.mark.parametrize(
    "override, key",
    [
        ("loss.algin=off", "loss.algin"),
        ("nonsense.x=1", "nonsense"),
        ("optim.epochs=ten", "optim.epochs"),
        ("optim.lr=fast", "optim.lr"),
        ("loss.contrast=3", "loss.contrast"),
        ("loss.fusion=mean", "loss.fusion"),
        ("loss.align_stages=[5]", "loss.align_stages"),
        ("input.crop_size=300", "input.crop_size"),
        ("input.test_clips=0", "input.test_clips"),  # the final test would fail after the whole run
        ("input.test_crops=0", "input.test_crops"),
        ("data.num_workers=-1", "data.num_workers"),
        ("optim.lr=-0.1", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.momentum=1", "optim.momentum"),
        ("loss.dist_align_momentum=1", "loss.dist_align_momentum"),
        ("loss.dist_align=maybe", "loss.dist_align"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_warm_ups_in_epochs_with_a_budget_in_steps_are_an_error_that_names_them():
    # the synthetic default's budget is in steps: warm-ups in epochs would be silently unused
    with pytest.raises(ConfigError, match=r"optim\.warmup_epochs and optim\.sup_warmup_epochs with a budget in steps"):
        load_config(CONFIGS[0].parent / "synthetic.yaml", ["optim.warmup_epochs=5", "optim.sup_warmup_epochs=1"])
    assert load_config(CONFIGS[0].parent / "synthetic.yaml", ["optim.warmup_steps=50"]).optim.warmup_steps == 50


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"optim\.epochz"):
        load_config(path)


def test_single_stream_requires_method_losses_off():
    with pytest.raises(ConfigError, match="loss.streams=rgb"):
        load_config(None, ["loss.streams=rgb"])
    cfg = load_config(None, ["loss.streams=rgb", "loss.align=off", "loss.contrast=off", "loss.fusion=self"])
    assert cfg.loss.streams == "rgb"


def test_diff_configs_lists_changed_keys():
    a, b = load_config(), load_config(None, ["optim.epochs=3", "loss.align=l2"])
    assert diff_configs(a, b) == ["loss.align", "optim.epochs"]
