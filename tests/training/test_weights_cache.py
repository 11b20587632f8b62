"""The training image's weights step: a local ResNet50 file lands where the trainer looks; anything else stops."""
from __future__ import annotations

import torch
from torchvision import models

from training import weights_cache
from training.backbones import build_backbone


def test_a_local_file_is_installed_where_the_trainer_loads_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    net = models.resnet50()
    torch.save(net.state_dict(), tmp_path / "resnet50.pth")
    assert weights_cache.main([str(tmp_path / "resnet50.pth")]) == 0
    dest = tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert dest.is_file() and "not torchvision's published" in capsys.readouterr().out
    backbone = build_backbone("resnet50", "imagenet")  # from the cache, no download allowed
    loaded = list(backbone.features.parameters())
    assert torch.equal(loaded[0], net.conv1.weight) and torch.equal(loaded[-1], net.layer4[-1].bn3.bias)


def test_a_wrong_or_damaged_file_stops_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.save(models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "resnet18.pth").read_bytes()[:1000])
    for bad in ("resnet18.pth", "cut.pth", "missing.pth"):
        assert weights_cache.main([str(tmp_path / bad)]) == 1
        assert "error: ResNet50 ImageNet weights not installed" in capsys.readouterr().err
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth").exists()
