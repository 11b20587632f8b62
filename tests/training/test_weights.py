import pytest
import torch
from torchvision import models

from training.backbones import WeightsError, build_backbone


def test_state_dict_file_loads(tmp_path):
    net = models.resnet50()
    torch.nn.init.constant_(net.layer4[0].conv1.weight, 0.123)
    path = tmp_path / "r50.pth"
    torch.save(net.state_dict(), path)
    bb = build_backbone("resnet50", str(path))
    assert torch.all(bb.stages["layer4"][0].conv1.weight == 0.123)


def test_wrong_state_dict_is_a_clear_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(models.mobilenet_v3_large().state_dict(), path)
    with pytest.raises(WeightsError, match="does not match resnet50"):
        build_backbone("resnet50", str(path))


def test_imagenet_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        build_backbone("resnet50", "imagenet")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in msg and "TORCH_HOME" in msg


def test_offline_pretrained_backbone_is_real():
    """EfficientNet-Lite0's shipped ImageNet weights load: features differ from a random init."""
    a, b = build_backbone("efficientnet_lite0", "imagenet"), build_backbone("efficientnet_lite0", "none")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a.features.eval()(x), b.features.eval()(x))
