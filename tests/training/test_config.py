import pytest

from training.config import ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("phase2:\n  epochs: 3\ndata:\n  batch_size: 8\n")
    cfg = load_config(f, ["phase2.epochs=8", "model.hidden_dim=128"], environ={"TRAINING__DATA__BATCH_SIZE": "4"})
    assert cfg.phase2.epochs == 8 and cfg.model.hidden_dim == 128 and cfg.data.batch_size == 4


@pytest.mark.parametrize("override, words", [
    (["phase2.unfreeze=layer9"], ["phase2.unfreeze", "layer9", "layer3", "all"]),
    (["model.backbone=vgg99"], ["model.backbone", "resnet50", "efficientnet_lite0"]),
    (["data.batch_size=0"], ["data.batch_size", "greater than or equal to 1"]),
    (["phase1.lrr=0.1"], ["phase1.lrr", "not permitted"]),
    (["data.resize_size=100", "data.image_size=200"], ["resize_size", "image_size"]),
    (["data.balance=magic"], ["data.balance", "loss_weights", "sampler"]),
    (["export.int8_fp32_layers=[0, 8, 2]"], ["export.int8_fp32_layers", "must increase"]),
])
def test_bad_values_name_field_and_allowed(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, override, environ={})
    for w in words:
        assert w in str(err.value)


def test_one_calibration_method_is_a_list_of_one(tmp_path):
    """`int8_calibration: minmax` (and a run saved when the field took one method) reads as ["minmax"]."""
    f = tmp_path / "job.yaml"
    f.write_text("export:\n  int8_calibration: minmax\n")
    assert load_config(f, [], environ={}).export.int8_calibration == ["minmax"]
    with pytest.raises(ConfigError, match="int8_calibration"):
        load_config(None, ["export.int8_calibration=magic"], environ={})


def test_unfreeze_spellings():
    cfg = load_config(None, ["phase2.unfreeze=layer3+layer4"], environ={})
    assert cfg.stages_to_unfreeze() == ["layer4", "layer3"]
    assert load_config(None, [], environ={}).stages_to_unfreeze() == ["layer4"]
    assert len(load_config(None, ["phase2.unfreeze=all"], environ={}).stages_to_unfreeze()) == 5


def test_cli_reports_config_error(capsys):
    from training.__main__ import main
    assert main(["train", "--set", "phase1.epochs=-1"]) == 2
    assert "phase1.epochs" in capsys.readouterr().err
