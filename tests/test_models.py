"""Model sizes, shapes and the registry."""

from __future__ import annotations

import pytest
import torch

from napari_fcres.config import ARCHITECTURES, PRESETS, Config, preset_config
from napari_fcres.errors import InputError
from napari_fcres.models import (
    FCResNet,
    Pipeline,
    UNet,
    build_model,
    count_conv_layers,
    count_parameters,
)


def test_paper_preprocessor_matches_table_1():
    unet = UNet(base=16, depth=4, out_kernel=3)
    assert count_conv_layers(unet) == 23
    assert 1.75e6 < count_parameters(unet) < 1.9e6  # "1.8 million"


def test_paper_fcresnet_matches_table_2():
    net = FCResNet()
    n = count_parameters(net)
    assert 10.5e6 < n < 12.5e6  # "11 millions"
    convs = count_conv_layers(net, include_projections=False)
    assert 135 <= convs <= 145  # "140 convolutional layers"
    assert net.size_divisor == 16  # Table II: 512 -> 32


def test_fcresnet_widths_per_resolution():
    """Table II: output widths at each resolution for a 512 input (checked at 64)."""
    net = FCResNet(stage_blocks=(1, 1, 1), across_blocks=1)
    shapes = {}

    def hook(name):
        def fn(_m, _i, out):
            shapes[name] = tuple(out.shape[1:])
        return fn

    net.down_simple.register_forward_hook(hook("down2"))
    for i, stage in enumerate(net.down_stages):
        stage.register_forward_hook(hook(f"down{i + 3}"))
    net.across.register_forward_hook(hook("across"))
    net.up_simple.register_forward_hook(hook("up4"))
    out = net(torch.zeros(1, 1, 64, 64))
    assert shapes["down2"] == (32, 32, 32)
    assert shapes["down3"] == (128, 16, 16)
    assert shapes["down4"] == (256, 8, 8)
    assert shapes["down5"] == (512, 4, 4)
    assert shapes["across"] == (1024, 4, 4)
    assert shapes["up4"] == (32, 64, 64)
    assert out.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_any_input_size_is_padded_and_cropped(arch):
    model = build_model(preset_config("tiny", arch).model).eval()
    x = torch.rand(2, 1, 37, 53) * 1000 - 500
    logits, normalized = model.forward_with_normalized(x)
    assert logits.shape == x.shape
    if arch == "unet":
        assert normalized is None
    else:
        assert normalized.shape == x.shape


def test_pipeline_returns_preprocessor_output():
    model = build_model(preset_config("tiny").model).eval()
    assert isinstance(model, Pipeline)
    x = torch.rand(1, 1, 32, 32)
    _, normalized = model.forward_with_normalized(x)
    torch.testing.assert_close(normalized, model.preprocessor(x))


def test_normalization_baselines_fit_statistics():
    std_model = build_model(preset_config("tiny", "fcresnet-standardize").model)
    values = torch.tensor([10.0, 20.0, 30.0])
    std_model.fit_normalization(values)
    assert float(std_model.shift) == pytest.approx(20.0)
    assert float(std_model.scale) == pytest.approx(10.0)
    resc = build_model(preset_config("tiny", "fcresnet-rescale").model)
    resc.fit_normalization(values)
    _, normalized = resc.forward_with_normalized(torch.full((1, 1, 16, 16), 30.0))
    assert torch.allclose(normalized, torch.ones_like(normalized))
    raw = build_model(preset_config("tiny", "fcresnet-raw").model)
    raw.fit_normalization(values)  # no statistics: the input passes unchanged
    x = torch.full((1, 1, 16, 16), 30.0)
    assert torch.equal(raw.forward_with_normalized(x)[1], x)


def test_unknown_preset_and_architecture_are_clear_errors():
    with pytest.raises(InputError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(InputError, match="unknown architecture"):
        preset_config("tiny", "vit")


def test_config_round_trip_and_unknown_keys(tmp_path):
    for name in PRESETS:
        cfg = preset_config(name)
        assert Config.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.yaml"
    preset_config("cpu").to_yaml(path)
    assert Config.from_yaml(path) == preset_config("cpu")
    with pytest.raises(InputError, match="unknown config.train key"):
        Config.from_dict({"train": {"learning_rate": 1}})
